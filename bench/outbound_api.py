"""Send-API throughput: POST /v1/messages against the bare INSERT+UPDATE baseline of the inbound benchmark.

Both run under gunicorn with config/gunicorn.conf.py (sync workers x4) on PostgreSQL, side by side in
one run, driven by wrk over loopback. The gateway's requests are real sends: an API key, 20,000
numbers opted in to the `deals` marketing program (so the whole gate runs: consent, suppression,
the last day's count for caps, quiet hours), each accepted message stored with its history and
enqueued after the commit (embedded broker). Each number gets a message or two, as a real day's
marketing would (the gate counts a number's texts of the last day). The baseline is
bench/baseline_app.py: signature check, one INSERT and one UPDATE in one transaction. The gateway
must reach at least 70% of it.

    .venv/bin/python bench/outbound_api.py [--duration 15] [--rounds 2] [--connections 8]

Needs `wrk` and a PostgreSQL server; it recreates the database named by --database-url (default
postgresql://postgres@127.0.0.1/bench_outbound). Loopback only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bench.inbound_webhook import (  # noqa: E402  (one set of helpers for both benchmarks)
    _environment,
    _prepare_database,
    _start_gunicorn,
    _write_requests,
    _wrk,
    measure_rounds,
    stop,
)
from bench.support import wrk_report  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.services import keys
from gateway.store import bulk, programs  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.models import Consent, OutboundMessage, PhoneNumber, utcnow  # noqa: E402

REQUIRED_RATIO = 0.70
BASELINE_NUMBERS = 1000  # the inbound benchmark's numbers, which the baseline's UPDATE counts on
SEND_PATH = "/v1/messages"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_outbound")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2, help="measured runs per server, alternating")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    # Enough numbers that no number passes deals' cap (4 a month) over a run's rounds: each run starts
    # its slice of the file 40,000 requests on, so runs reach different numbers.
    parser.add_argument("--numbers", type=int, default=100_000, help="opted-in numbers the sends go to")
    parser.add_argument("--per-run", type=int, default=40_000, help="distinct requests prepared per run")
    parser.add_argument("--program", default="deals", help="deals (marketing: the whole gate) or alerts")
    parser.add_argument("--broker", default="", help="CELERY_BROKER_URL for the gateway (default: the embedded "
                                                   "filesystem broker); e.g. redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="bench-outbound-"))
    env = _environment(args.database_url, work)
    if args.broker:
        env["CELERY_BROKER_URL"] = args.broker
    settings = load_settings(env=env)
    print(f"preparing {settings.database_url.split('@')[-1]}: schema, programs, {args.numbers} opted-in numbers")
    _prepare_database(args.database_url, settings, BASELINE_NUMBERS)
    _add_opted_in(settings, args.numbers, args.program)
    key = _api_key(settings)
    runs = args.rounds * 2 + 2  # a warm-up per server, then the measured rounds
    baseline_file, sends_file = work / "webhooks.tsv", work / "sends.jsonl"
    _write_requests(baseline_file, BASELINE_NUMBERS, runs * args.per_run, None)
    with open(sends_file, "w") as out:
        for index in range(runs * args.per_run):
            out.write(json.dumps({"to": _send_number(index % args.numbers), "program": args.program,
                                  "body": f"Acme Deals: 20% off this weekend only (offer {index})."}) + "\n")

    servers = {}
    try:
        for name, app in (("baseline", "bench.baseline_app:create_app()"), ("gateway", "gateway.web.app:create_app()")):
            servers[name] = _start_gunicorn(name, app, env, work)
        servers["gateway"]["url"] = servers["gateway"]["url"].rsplit("/webhooks", 1)[0] + SEND_PATH

        def run(name: str, first: int, duration: int) -> dict:
            if name == "baseline":
                return _wrk(servers[name], baseline_file, first, args.per_run, duration, args)
            return _wrk_sends(servers[name], sends_file, first, args.per_run, duration, key, args)

        slices = itertools.count(0, args.per_run)
        warm_up = {name: run(name, next(slices), 3) for name in servers}
        results = measure_rounds(list(servers), args.rounds, lambda name: run(name, next(slices), args.duration))
    finally:
        stop(servers)

    baseline = statistics.median(r["rps"] for r in results["baseline"])
    gateway = statistics.median(r["rps"] for r in results["gateway"])
    sent = warm_up["gateway"]["requests"] + sum(r["requests"] for r in results["gateway"])
    stored = _stored(settings)
    # Each round runs the two back to back, so a round's ratio is the fairest figure on a machine
    # whose load changes; the result is the median of the rounds' ratios (as bench/inbound_webhook.py).
    ratios = [g["rps"] / b["rps"] for b, g in zip(results["baseline"], results["gateway"])]
    ratio = statistics.median(ratios)
    print()
    print(f"baseline (signature + INSERT + UPDATE): {baseline:8.1f} req/s (median of {args.rounds})")
    print(f"gateway  (POST /v1/messages, {args.program}):  {gateway:8.1f} req/s (median of {args.rounds})")
    print(f"ratio per round: {', '.join(f'{r:.0%}' for r in ratios)}; median {ratio:.0%} "
          f"(required: at least {REQUIRED_RATIO:.0%})")
    print(f"messages stored by the gateway: {stored} of {sent} requests (warm-up included)")
    shutil.rmtree(work, ignore_errors=True)
    # wrk stops counting at the deadline; requests then in flight still complete and are stored.
    return 0 if ratio >= REQUIRED_RATIO and stored >= sent else 1


def _send_number(index: int) -> str:
    return f"+1650{2_000_000 + index:07d}"


def _add_opted_in(settings, count: int, slug: str) -> None:
    """`count` numbers opted in to `slug`, written in bulk (the ledger is not what is measured here)."""
    database = Database(settings.database_url)
    now = utcnow()
    try:
        with database.transaction() as session:
            program = programs.by_slug(session, slug)
            bulk.insert_rows(session, PhoneNumber.__table__,
                             ("e164", "kind", "region", "reachability", "ledger_seq", "ledger_head", "created_at"),
                             [(_send_number(i), "fixed_line_or_mobile", "US", "ok", 0, "0" * 64, now)
                              for i in range(count)])
            ids = session.scalars(select(PhoneNumber.id).where(PhoneNumber.e164.like("+1650%"))).all()
            bulk.insert_rows(session, Consent.__table__,
                             ("number_id", "program_id", "status", "restorable", "updated_at"),
                             [(number_id, program.id, "opted_in", False, now) for number_id in ids])
    finally:
        database.dispose()


def _api_key(settings) -> str:
    database = Database(settings.database_url)
    try:
        with database.transaction() as session:
            return keys.create(session, "bench", ["send"])[1]
    finally:
        database.dispose()


def _wrk_sends(server: dict, requests_file: Path, first: int, count: int, duration: int, key: str, args) -> dict:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency",
               "-s", str(ROOT / "bench" / "send_api.lua"), server["url"], "--",
               str(requests_file), str(first), str(count), str(args.threads), key]
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120, check=True).stdout
    return wrk_report("gateway", output)


def _stored(settings) -> int:
    database = Database(settings.database_url)
    try:
        with database.sessions() as session:
            return session.scalar(select(func.count()).select_from(OutboundMessage))
    finally:
        database.dispose()


if __name__ == "__main__":
    sys.exit(main())
