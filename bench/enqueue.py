"""Enqueue cost: CPU time a `messages.send` enqueue takes in the web process, on Redis or the
embedded broker.

Enqueues N distinct ids through a Dispatcher's `send_messages`, one id per call (as the send API
does, one message a request) and all N in one call (as the sweeper and a batch do), and reports CPU
µs (time.process_time of this process: the broker's own work is not counted) per enqueue, the best of
the rounds. The Dispatcher is gateway/queue/dispatcher.py's unless --dispatcher names a file whose
`Dispatcher(celery)` to measure instead, e.g. the hand-built one it replaced:

    git show f6a6aea:gateway/queue/app.py > /tmp/hand_built.py   # the last commit before send_task
    .venv/bin/python bench/enqueue.py --dispatcher /tmp/hand_built.py
    .venv/bin/python bench/enqueue.py

Flushes the Redis database of --broker first (empties the embedded broker's queue). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from gateway.config import load_settings  # noqa: E402
from gateway.queue.app import make_celery  # noqa: E402


def _dispatcher_class(path: str | None):
    if path is None:
        from gateway.queue.dispatcher import Dispatcher

        return Dispatcher
    spec = importlib.util.spec_from_file_location("measured_dispatcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Dispatcher


class _Queue:
    """The `sends` queue of a Redis broker (its database flushed first) or of the embedded one."""

    def __init__(self, url: str):
        if url.startswith("filesystem://"):
            self.folder, self.redis = Path(url.removeprefix("filesystem://")) / "queue", None
            self.empty()
        else:
            self.folder, self.redis = None, redis.Redis.from_url(url)
            self.redis.flushdb()

    def length(self) -> int:
        if self.redis is not None:
            return self.redis.llen("sends")
        return sum(1 for _ in self.folder.glob("*.sends.msg"))

    def empty(self) -> None:
        if self.redis is not None:
            self.redis.delete("sends")
        else:
            for path in self.folder.glob("*.sends.msg"):
                path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14",
                        help="redis://… or filesystem://FOLDER (the embedded broker)")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dispatcher", help="a file defining Dispatcher(celery); default: the gateway's")
    args = parser.parse_args()

    settings = replace(load_settings(env={"SANDBOX": "on", "VAR_DIR": "/tmp/bench-enqueue"}),
                       celery_broker_url=args.broker)
    dispatcher = _dispatcher_class(args.dispatcher)(make_celery(settings))
    queue = _Queue(args.broker)
    dispatcher.send_messages(["msg_warmup"])  # connects, declares the queue
    results: dict[str, list[float]] = {"one per call": [], "all in one call": []}
    for round_ in range(args.rounds):
        ids = [f"msg_{round_:02d}{i:030d}" for i in range(args.messages)]
        started = time.process_time()
        for message_id in ids:
            dispatcher.send_messages([message_id])
        results["one per call"].append((time.process_time() - started) / len(ids))
        started = time.process_time()
        dispatcher.send_messages(ids)
        results["all in one call"].append((time.process_time() - started) / len(ids))
        queued = queue.length()
        if queued != 2 * len(ids) + (1 if round_ == 0 else 0):
            raise RuntimeError(f"expected {2 * len(ids)} messages on the queue, found {queued}")
        queue.empty()
    for name, seconds in results.items():
        rounds = ", ".join(f"{s * 1e6:.0f}" for s in seconds)
        print(f"{name:16s} best {min(seconds) * 1e6:6.1f} µs CPU per enqueue (rounds: {rounds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
