"""Inbound-webhook throughput: the gateway's POST /webhooks/twilio/sms against a bare baseline.

Both run under gunicorn with config/gunicorn.conf.py (sync workers x4) on PostgreSQL, side by side in
one run, driven by wrk over loopback with the same pre-signed bodies (bench/rotate.lua), every
MessageSid new. The texts are the mix people send: each of 1,000 numbers opted in to two programs
texts STOP, then the join keyword DEALS (after its STOP), YES (confirming that request), HELP, a
question, and START (restoring what the STOP ended), round after round, each number starting at its
own place in that cycle, so any stretch of the run holds a sixth of each kind, however fast or slow
the run. The baseline (bench/baseline_app.py) only validates the signature and does one INSERT and
one UPDATE in one transaction. The gateway must reach at least 80% of the baseline's requests per
second.

    .venv/bin/python bench/inbound_webhook.py [--duration 15] [--rounds 2] [--connections 8]
    .venv/bin/python bench/inbound_webhook.py --only YES --numbers 5000   # one path

The gateway reads the file of requests from a cursor that moves by what each run took, so a
number's texts reach it in their order across runs; the baseline takes a new slice of the file each
run. Before the gateway's first
run every number sends, unmeasured, the part of the cycle before its starting place. With `--only`,
the texts a path needs before it (STOP before a START or a join keyword; STOP and DEALS before a
YES) are sent from every number before each of the gateway's runs, unmeasured, so every YES
confirms a live request and every START restores something, as long as the gateway's run takes no
more texts than there are numbers (it warns if it did: pass more --numbers).

Needs `wrk` (apt-get install -y wrk) and a PostgreSQL server; it recreates the database named by
--database-url (default postgresql://postgres@127.0.0.1/bench_inbound). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from twilio.request_validator import RequestValidator  # noqa: E402

from bench.support import empty_store, wrk_report  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.consent import Input, Source  # noqa: E402
from gateway.domain.numbers import parse  # noqa: E402
from gateway.domain.programs import load_file  # noqa: E402
from gateway.services import consents  # noqa: E402
from gateway.store import consents as store_consents
from gateway.store import programs  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.models import InboundMessage, utcnow  # noqa: E402

PATH = "/webhooks/twilio/sms"
PUBLIC_BASE_URL = "https://sms.bench.example"  # what Twilio would call; both servers check against it
TOKEN = "bench-auth-token"
SENDER = "+15005550006"  # deals and alerts, both double opt-in
REQUIRED_RATIO = 0.80
# What each kind of text says. Each number walks through them in this order, round after round: the
# STOP ends both programs, DEALS asks to join one again (a confirmation text goes out through the
# outbox), YES confirms it, HELP and a question change nothing, START restores the other program.
# Number n starts at CYCLE[n % 6], so every stretch of the run has the same mix, a sixth of each.
KINDS = {"STOP": "STOP", "JOIN": "DEALS", "YES": "YES", "HELP": "HELP",
         "CHAT": "what time do you open tomorrow?", "START": "START"}
CYCLE = tuple(KINDS)
# With --only: what a number must have texted before, for that text to do its real work.
BEFORE = {"START": ("STOP",), "JOIN": ("STOP",), "YES": ("STOP", "JOIN")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_inbound")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per server, alternating")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--per-run", type=int, default=42_000, help="distinct requests prepared per run")
    parser.add_argument("--only", choices=CYCLE, help="send only this kind of text (one path)")
    args = parser.parse_args()
    per_run = args.per_run
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-inbound-"))
    env = _environment(args.database_url, work)
    settings = load_settings(env=env)
    print(f"preparing {settings.database_url.split('@')[-1]}: schema, programs, {args.numbers} numbers")
    _prepare_database(args.database_url, settings, args.numbers)
    requests_file = work / "requests.tsv"
    runs = args.rounds + 1  # a warm-up, then the measured rounds: each server reads the file once
    _write_requests(requests_file, args.numbers, runs * per_run, args.only)
    prime = _primer(args.numbers, lambda number: BEFORE.get(args.only, ()))

    servers = {}
    try:
        for name, app in (("baseline", "bench.baseline_app:create_app()"), ("gateway", "gateway.web.app:create_app()")):
            servers[name] = _start_gunicorn(name, app, env, work)
        cursors = dict.fromkeys(servers, 0)
        if not args.only:  # each number's texts before its place in the cycle
            _primer(args.numbers, lambda number: CYCLE[:number % len(CYCLE)])(servers["gateway"]["url"])

        def run(name: str, duration: int) -> dict:
            if name == "gateway" and args.only:
                prime(servers[name]["url"])
            result = _wrk(servers[name], requests_file, cursors[name], per_run, duration, args)
            # The gateway's next run goes on from here, so each number's texts stay in order (the few
            # in flight at wrk's deadline come again, answered as duplicates). The baseline refuses a
            # repeated MessageSid and does not care what the texts say: each of its runs takes a
            # slice of its own.
            cursors[name] += result["requests"] if name == "gateway" else per_run
            if name == "gateway" and args.only in BEFORE and result["requests"] > args.numbers:
                print(f"  warning: {result['requests']} texts from {args.numbers} numbers: some found nothing to do")
            return result

        warm_up = {name: run(name, 3) for name in servers}  # imports, pools
        results = measure_rounds(list(servers), args.rounds, lambda name: run(name, args.duration))
    finally:
        stop(servers)

    baseline = statistics.median(r["rps"] for r in results["baseline"])
    gateway = statistics.median(r["rps"] for r in results["gateway"])
    # Each round runs the two back to back, so a round's ratio is the fairest figure on a machine
    # whose load changes; the result is the median of the rounds' ratios (measure_rounds).
    ratios = [g["rps"] / b["rps"] for b, g in zip(results["baseline"], results["gateway"])]
    ratio = statistics.median(ratios)
    stored = _stored_inbound(settings)
    sent = warm_up["gateway"]["requests"] + sum(r["requests"] for r in results["gateway"])
    print()
    print(f"texts: {args.only or 'the mix (' + ', '.join(CYCLE) + ')'}")
    print(f"baseline (signature + INSERT + UPDATE): {baseline:8.1f} req/s (median of {args.rounds})")
    print(f"gateway  (POST /webhooks/twilio/sms):   {gateway:8.1f} req/s (median of {args.rounds})")
    print(f"ratio per round: {', '.join(f'{r:.0%}' for r in ratios)}; median {ratio:.0%} "
          f"(required: at least {REQUIRED_RATIO:.0%})")
    # wrk counts the answers it received within its window; a few more were in flight at its end.
    print(f"inbound messages stored by the gateway: {stored}; answers counted by wrk: {sent} (warm-up included)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ratio >= REQUIRED_RATIO else 1


def stop(servers: dict[str, dict]) -> None:
    """Stop every server started, all at once, killing any that has not stopped within 15 s."""
    for server in servers.values():
        server["process"].send_signal(signal.SIGTERM)
    for server in servers.values():
        try:
            server["process"].wait(15)
        except subprocess.TimeoutExpired:
            server["process"].kill()


def measure_rounds(names: list[str], rounds: int, run) -> dict[str, list[dict]]:
    """`run(name)` for each server per round, the order flipping every round (A B, B A, ...): on a
    machine whose speed drifts, whichever runs second in a round is not always the same one."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            result = run(name)
            results[name].append(result)
            print(f"  {name:8s} {result['rps']:8.1f} req/s  p50 {result['p50']}  p99 {result['p99']}"
                  f"  ({result['requests']} requests)")
    return results


def _environment(database_url: str, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "BENCH_DATABASE_URL": load_settings(env={"DATABASE_URL": database_url, "VAR_DIR": str(work),
                                                 "SUPPRESSION_KEY": "b" * 40, "SANDBOX": "on"}).database_url,
        "CELERY_BROKER_URL": f"filesystem://{work / 'broker'}",
        "REDIS_URL": "",
        "TWILIO_ACCOUNT_SID": "AC" + "2" * 32,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "SANDBOX": "off",
        "SUPPRESSION_KEY": "bench-suppression-key-0123456789abcdef",
        "VAR_DIR": str(work / "var"),
        "PROGRAMS_FILE": str(ROOT / "config" / "programs.example.toml"),
        "LOG_LEVEL": "INFO",
    }


def _prepare_database(url: str, settings, numbers: int) -> None:
    database = empty_store(settings.database_url)
    from bench.baseline_app import SCHEMA

    now = utcnow()
    with database.transaction() as session:
        session.execute(text(SCHEMA))
        stored = programs.store(session, load_file(settings.programs_file))
        on_sender = [p for p in stored if p.sender_key == SENDER]
        for index in range(numbers):
            e164 = _number(index)
            session.execute(text("INSERT INTO baseline_numbers (e164) VALUES (:e164)"), {"e164": e164})
            row = store_consents.number_row(session, parse(e164))
            for program in on_sender:
                consents.apply(session, row, program, Input.IMPORT_OPT_IN,
                              consents.Evidence(Source.IMPORT, actor="bench"), now=now)
    database.dispose()


def _number(index: int) -> str:
    return f"+1415555{index:04d}"


_VALIDATOR = RequestValidator(TOKEN)


def _signed(index: int, number: int, body: str) -> tuple[str, dict]:
    """A real inbound webhook's fields, MessageSid from `index`, and Twilio's signature of them."""
    sid = f"SM{index:032x}"
    params = {
        "ToCountry": "US", "ToState": "", "SmsMessageSid": sid, "NumMedia": "0",
        "ToCity": "", "FromZip": "94105", "SmsSid": sid, "FromState": "CA",
        "SmsStatus": "received", "FromCity": "SAN FRANCISCO", "Body": body,
        "FromCountry": "US", "To": SENDER, "ToZip": "", "NumSegments": "1", "MessageSid": sid,
        "AccountSid": "AC" + "2" * 32, "From": _number(number), "ApiVersion": "2010-04-01",
    }
    return _VALIDATOR.compute_signature(PUBLIC_BASE_URL + PATH, params), params


def kind_of(index: int, numbers: int, only: str | None = None) -> tuple[int, str]:
    """(number, kind) of request `index`: number i % numbers's text i // numbers, that number going
    round the cycle from its own place in it (number n from CYCLE[n % 6]), or always `only`."""
    number, turn = index % numbers, index // numbers
    return number, only or CYCLE[(turn + number) % len(CYCLE)]


def _write_requests(path: Path, numbers: int, count: int, only: str | None) -> None:
    """`count` signed requests (`kind_of`), every MessageSid new (the baseline does not care what the
    texts say)."""
    with open(path, "w") as out:
        for index in range(count):
            number, kind = kind_of(index, numbers, only)
            signature, params = _signed(index, number, KINDS[kind])
            out.write(f"{signature}\t{urlencode(params)}\n")


def _primer(numbers: int, kinds_of):
    """What sends `kinds_of(number)` from every number, in order, before a run (unmeasured);
    MessageSids of their own (from 2^64 up, far past the file's)."""
    sids = itertools.count(1 << 64)

    def prime(url: str) -> None:
        def send(number: int) -> None:
            for kind in kinds_of(number):
                signature, params = _signed(next(sids), number, KINDS[kind])
                answer = session.post(url, data=params, headers={"X-Twilio-Signature": signature}, timeout=30)
                answer.raise_for_status()

        with ThreadPoolExecutor(8) as pool, requests.Session() as session:
            list(pool.map(send, range(numbers)))

    return prime


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_gunicorn(name: str, app: str, env: dict[str, str], work: Path, checkout: Path = ROOT) -> dict:
    """`app` served by gunicorn with `checkout`'s config (this one's unless told: bench/inbound_ab.py)."""
    port = _free_port()
    metrics_dir = work / f"prometheus-{name}"
    log = open(work / f"{name}.log", "wb")
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "gunicorn"), "-c", str(checkout / "config" / "gunicorn.conf.py"), app],
        cwd=checkout,
        env={**env, "PORT": str(port), "WEB_CONCURRENCY": "4", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} did not start:\n{(work / f'{name}.log').read_text()[-3000:]}")
            try:
                if requests.get(base + "/healthz", timeout=5).status_code == 200:
                    return {"name": name, "url": base + PATH, "process": process}
            except requests.RequestException:
                pass  # still booting
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not answer /healthz within 60 s")
    except BaseException:
        process.kill()
        process.wait()
        raise


def _wrk(server: dict, requests_file: Path, first: int, count: int, duration: int, args) -> dict:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
               "-s", str(ROOT / "bench" / "rotate.lua"), server["url"], "--",
               str(requests_file), str(first), str(count), str(args.threads)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=True).stdout
    report = wrk_report(server["name"], output)
    if report["requests"] > count:
        print(f"  warning: {server['name']} sent {report['requests']} requests from a slice of {count}: "
              "some were repeats")
    return report


def _stored_inbound(settings) -> int:
    database = Database(settings.database_url)
    try:
        with database.sessions() as session:
            return session.scalar(select(func.count()).select_from(InboundMessage))
    finally:
        database.dispose()


if __name__ == "__main__":
    sys.exit(main())
