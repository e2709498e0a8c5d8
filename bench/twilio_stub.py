"""A minimal Twilio-compatible endpoint for the dispatch benchmark: answers Messages.json creates at once.

It accepts what the twilio client sends (form-encoded, HTTP Basic), answers 201 with the JSON the
client parses, and counts: GET /stats gives {count, first, last} (receipt times, epoch seconds);
POST /reset starts the count again. Threaded, HTTP/1.1 keep-alive, loopback only.

    .venv/bin/python bench/twilio_stub.py --port 8099
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.count, self.first, self.last = 0, None, None

    def hit(self) -> None:
        now = time.time()
        with self.lock:
            self.count += 1
            self.first = self.first or now
            self.last = now


def make_server(port: int) -> ThreadingHTTPServer:
    stats = Stats()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes; with Nagle on, the body waits for the client's delayed
        # ACK of the headers: 40 ms per call, which would measure nothing but TCP.
        disable_nagle_algorithm = True

        def _answer(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/stats":
                with stats.lock:
                    return self._answer(200, {"count": stats.count, "first": stats.first, "last": stats.last})
            return self._answer(404, {"code": 20404, "message": "not found", "status": 404})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            if self.path == "/reset":
                stats.reset()
                return self._answer(200, {})
            if not self.path.endswith("/Messages.json"):
                return self._answer(404, {"code": 20404, "message": "not found", "status": 404})
            stats.hit()
            account = self.path.split("/Accounts/", 1)[-1].split("/", 1)[0]
            now = formatdate(usegmt=False)
            self._answer(201, {
                "sid": "SM" + uuid.uuid4().hex, "account_sid": account, "status": "queued", "direction": "outbound-api",
                "to": form.get("To"), "from": form.get("From"),
                "messaging_service_sid": form.get("MessagingServiceSid"),
                "body": form.get("Body", ""), "num_segments": "1", "num_media": "0", "error_code": None,
                "error_message": None, "date_created": now, "date_updated": now, "date_sent": None,
                "price": None, "price_unit": "USD", "api_version": "2010-04-01",
                "uri": f"/2010-04-01/Accounts/{account}/Messages.json",
            })

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8099)
    make_server(parser.parse_args().port).serve_forever()


if __name__ == "__main__":
    main()
