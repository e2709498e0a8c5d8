"""Worker dispatch throughput: the gateway's send task against a bare Celery task, side by side.

Both run as `celery worker --pool=threads --concurrency=8` on a Redis broker, and both call the same
local Twilio-compatible endpoint (bench/twilio_stub.py) through the real twilio client:
- gateway: `messages.send` for accepted outbox rows: claim the row, ask the send gate again in that
  transaction (consent, suppression, caps, quiet hours), take the sender's throughput slot (Redis),
  call the provider, record the sid and "sent" with its history;
- baseline (bench/bare_worker.py): one SELECT of the number and one `messages.create`.
Throughput is what the endpoint receives: messages from the first to the last receipt. The gateway
must reach at least 75% of the baseline.

    .venv/bin/python bench/worker_dispatch.py [--messages 2000] [--rounds 2]

Needs PostgreSQL and Redis; recreates the database named by --database-url (default
postgresql://postgres@127.0.0.1/bench_dispatch) and flushes the Redis database of --broker. Loopback
only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
import requests  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.support import empty_store  # noqa: E402
from bench.twilio_stub import make_server  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.gate import ALLOW, Kind  # noqa: E402
from gateway.domain.programs import load_file  # noqa: E402
from gateway.queue.app import broker_options  # noqa: E402
from gateway.store import bulk, outbox, programs  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.models import Consent, OutboundMessage, PhoneNumber, utcnow  # noqa: E402

REQUIRED_RATIO = 0.75
SENDER = "+18885550177"
STUB_PORT = 8099


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_dispatch")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12", help="Redis for the broker and the limiter")
    parser.add_argument("--messages", type=int, default=2000, help="messages per measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    stub = make_server(STUB_PORT)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    env = _environment(args, work)
    settings = load_settings(env=env)
    database = _prepare(args.database_url, settings, args.messages)
    with database.sessions() as session:
        number_ids = list(session.scalars(select(PhoneNumber.id).order_by(PhoneNumber.id)))
    results: dict[str, list[float]] = {"gateway": [], "baseline": []}
    try:
        for round_ in range(args.rounds + 1):  # round 0 warms up both and is not counted
            for name in ("gateway", "baseline"):
                redis.Redis.from_url(args.broker).flushdb()
                worker = _start_worker(name, env, work, args.concurrency)
                try:
                    if name == "gateway":
                        rate = _drain_gateway(database, settings, args.messages)
                    else:
                        rate = _drain_bare(env, number_ids[: args.messages])
                finally:
                    worker.terminate()
                    worker.wait(30)
                label = " (warm-up)" if not round_ else ""
                print(f"  round {round_}{label}: {name:8s} {rate:7.1f} messages/s")
                if round_:
                    results[name].append(rate)
    finally:
        stub.shutdown()
        database.dispose()
    gateway, baseline = statistics.median(results["gateway"]), statistics.median(results["baseline"])
    ratio = gateway / baseline
    print()
    print(f"baseline (one SELECT + messages.create):              {baseline:7.1f} messages/s (median of {args.rounds})")
    print(f"gateway  (claim, gate, throughput slot, send, record): {gateway:7.1f} messages/s (median of {args.rounds})")
    print(f"ratio: {ratio:.0%} (required: at least {REQUIRED_RATIO:.0%})")
    return 0 if ratio >= REQUIRED_RATIO else 1


def _environment(args, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "BENCH_DATABASE_URL": args.database_url.replace("postgresql://", "postgresql+psycopg://"),
        "CELERY_BROKER_URL": args.broker,
        "REDIS_URL": args.broker,  # the throughput limiter, shared by the worker's threads
        "TWILIO_ACCOUNT_SID": "AC" + "3" * 32,
        "TWILIO_AUTH_TOKEN": "bench-auth-token",
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{STUB_PORT}",
        "PUBLIC_BASE_URL": "https://sms.bench.example",
        "SANDBOX": "off",
        "SUPPRESSION_KEY": "bench-suppression-key-0123456789abcdef",
        "VAR_DIR": str(work / "var"),
        "PROGRAMS_FILE": str(ROOT / "config" / "programs.example.toml"),
        "LOG_LEVEL": "WARNING",
        "BENCH_SENDER": SENDER,
        "PYTHONPATH": str(ROOT),
    }


def _prepare(url: str, settings, count: int) -> Database:
    database = empty_store(settings.database_url)
    now = utcnow()
    with database.transaction() as session:
        specs = load_file(settings.programs_file)
        orders = next(spec for spec in specs if spec.slug == "orders")
        # A transactional program on a sender of its own, fast enough that its pace never binds here.
        programs.store(session, [*specs, replace(orders, slug="blast", sender=SENDER, mps=10_000,
                                                 join_keywords=("BLAST",))])
        program = programs.by_slug(session, "blast")
        bulk.insert_rows(session, PhoneNumber.__table__,
                         ("e164", "kind", "region", "reachability", "ledger_seq", "ledger_head", "created_at"),
                         [(f"+1650{3_000_000 + i:07d}", "fixed_line_or_mobile", "US", "ok", 0, "0" * 64, now)
                          for i in range(count)])
        ids = session.scalars(select(PhoneNumber.id)).all()
        bulk.insert_rows(session, Consent.__table__, ("number_id", "program_id", "status", "restorable", "updated_at"),
                         [(number_id, program.id, "opted_in", False, now) for number_id in ids])
    return database


def _start_worker(name: str, env: dict[str, str], work: Path, concurrency: int) -> subprocess.Popen:
    app, queue = ("worker", "sends") if name == "gateway" else ("bench.bare_worker", "bare")
    log_path = work / f"{name}-worker.log"
    log = open(log_path, "ab")
    before = log_path.read_bytes().count(b" ready.") if log_path.exists() else 0
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "celery"), "-A", app, "worker", "--pool=threads",
         f"--concurrency={concurrency}", "-Q", queue, "--without-gossip", "--without-mingle", "-l", "INFO"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if log_path.read_bytes().count(b" ready.") > before:
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{name} worker did not start:\n{log_path.read_text()[-3000:]}")


def _wait_for_stub(count: int, timeout: float = 600) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = requests.get(f"http://127.0.0.1:{STUB_PORT}/stats", timeout=5).json()
        if stats["count"] >= count:
            return count / (stats["last"] - stats["first"])
        time.sleep(0.2)
    raise RuntimeError(f"only {stats['count']} of {count} messages reached the endpoint")


def _drain_gateway(database: Database, settings, count: int) -> float:
    from gateway.queue.app import make_celery
    from gateway.queue.dispatcher import Dispatcher  # the web side's enqueue, as the API does it

    now = utcnow()
    with database.transaction() as session:
        program = programs.by_slug(session, "blast")
        ids = session.scalars(select(PhoneNumber.id).order_by(PhoneNumber.id).limit(count)).all()
        accepted = outbox.accept_many(session, program=program, kind=Kind.TRANSACTIONAL,
                                      body="Your order shipped", decisions=[(i, ALLOW) for i in ids], now=now)
    requests.post(f"http://127.0.0.1:{STUB_PORT}/reset", timeout=5)
    Dispatcher(make_celery(settings)).send_messages([a.id for a in accepted])
    rate = _wait_for_stub(count)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the last "sent" is written just after the last provider call
        with database.sessions() as session:
            sent = session.scalar(select(func.count()).select_from(OutboundMessage).where(
                OutboundMessage.id.in_([a.id for a in accepted]), OutboundMessage.status == "sent"))
        if sent == count:
            return rate
        time.sleep(0.2)
    raise RuntimeError(f"{sent} of {count} messages recorded as sent")


def _drain_bare(env: dict[str, str], number_ids: list[int]) -> float:
    from celery import Celery

    broker, options = broker_options(env["CELERY_BROKER_URL"])
    celery = Celery("bench-enqueue", broker=broker, set_as_current=False)
    celery.conf.broker_transport_options = options
    requests.post(f"http://127.0.0.1:{STUB_PORT}/reset", timeout=5)
    with celery.producer_or_acquire() as producer:
        for number_id in number_ids:
            celery.send_task("bare.send", args=[number_id], queue="bare", producer=producer)
    return _wait_for_stub(len(number_ids))


if __name__ == "__main__":
    sys.exit(main())
