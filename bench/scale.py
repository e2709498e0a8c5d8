"""Cost curves: the request paths and the compliance operations as the store grows, each beside its bare baseline.

For each size N it builds a fresh PostgreSQL store through `smsgate consent import` (the way a
business brings its subscribers, at whatever speed the import has), then measures:

- inbound webhook req/s, the mix of texts of bench/inbound_webhook.py, beside its bare baseline
  (bench/baseline_app.py: signature, one INSERT and one UPDATE), gunicorn ×4 and wrk, rounds back to back;
- send API req/s (`POST /v1/messages`, deals: the whole gate) to the imported numbers, beside the same baseline;
- gate decisions/s for one 100,000-recipient batch drawn from the store (every rule, one facts query),
  beside COPY into a temporary table + JOIN on the driver (bench/batch_filter.py's baseline);
- `smsgate ledger verify` events/s (the command, process start included), beside reading every
  event and hashing it once with SHA-256 on the driver (the floor a check cannot go under);
- export and erase of one number, and a console search (find + the number's record, logged), in-process,
  median of several numbers;
- disk per million numbers: the database's growth over the import, scaled.

    .venv/bin/python bench/scale.py --sizes 10000,100000 [--duration 5] [--rounds 3]

Needs `wrk` and a PostgreSQL server; it recreates the database named by --database-url (default
postgresql://postgres@127.0.0.1/bench_scale) for each size. Loopback only, bounded, stops by itself.
Not part of the test suite. Results and how to read them: bench/README.md, "Scale".
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from bench.batch_filter import _copy_and_join, _gateway_filter  # noqa: E402
from bench.inbound_webhook import (  # noqa: E402  (one set of helpers for every benchmark)
    CYCLE,
    _environment,
    _prepare_database,
    _primer,
    _start_gunicorn,
    _write_requests,
    _wrk,
    measure_rounds,
    stop,
)
from bench.outbound_api import _api_key, _send_number, _wrk_sends  # noqa: E402
from gateway import bootstrap  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.consent import Source  # noqa: E402
from gateway.domain.numbers import parse  # noqa: E402
from gateway.domain.quiet_hours import default_rules  # noqa: E402
from gateway.services import consents, console, privacy  # noqa: E402
from gateway.store import consents as store_consents  # noqa: E402
from gateway.store import programs  # noqa: E402
from gateway.store.models import LedgerEvent, PhoneNumber  # noqa: E402

INBOUND_NUMBERS = 1000  # the inbound mix's numbers (opted in by bench/inbound_webhook.py), on top of N
BATCH = 100_000
SAMPLES = 7  # numbers exported, erased and searched at each size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_scale")
    parser.add_argument("--sizes", default="10000,100000", help="numbers in the store, comma-separated")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured HTTP run")
    parser.add_argument("--rounds", type=int, default=3, help="measured HTTP runs per server, alternating")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--per-run", type=int, default=20_000, help="distinct HTTP requests prepared per run")
    args = parser.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        print(f"\n=== {size:,} numbers")
        rows.append(measure(size, args))
        print_table(rows[-1:])  # each size's row as soon as it is measured: a long run can be stopped
    print()
    print_table(rows)
    return 0


def measure(size: int, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    env = _environment(args.database_url, work)
    settings = load_settings(env=env)
    _prepare_database(args.database_url, settings, INBOUND_NUMBERS)
    url = _driver_url(settings)
    empty = _database_bytes(url)
    row = {"size": size}
    row["import"] = _import(size, env, work)
    _analyze(url, vacuum=True)  # what PostgreSQL's documentation asks for after a bulk load
    row["disk_per_million"] = (_database_bytes(url) - empty) / size * 1_000_000
    print(f"  disk: {row['disk_per_million'] / 2**30:.2f} GiB per million numbers (growth over the import, scaled)")
    row["verify"] = _verify(env, url)
    row["gate"] = _gate_batch(settings, size)
    row.update(_one_number_operations(settings, size))
    row.update(_http(env, settings, size, work, args))
    return row


def _import(size: int, env: dict, work: Path) -> dict:
    """N numbers through `smsgate consent import`, four rows (four ledger events) a number, as the
    issue's 5,000,000 numbers and 20,000,000 events: each opted in to deals, alerts and orders, then
    two in three opted out of alerts again in a later row and the rest out of orders."""
    path = work / "subscribers.csv"
    rows = 0
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", "program", "status", "source", "collected_at"])
        for i in range(size):
            phone = _send_number(i)
            for program in ("deals", "alerts", "orders"):
                writer.writerow([phone, program, "opted_in", "web form", "2026-01-15T10:00:00Z"])
            writer.writerow([phone, "orders" if i % 3 == 0 else "alerts", "opted_out", "support call",
                             "2026-03-01T12:00:00Z"])
            rows += 4
    started = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "smsgate"), "consent", "import", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"import failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    print(f"  import: {rows:,} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    return {"rows": rows, "seconds": seconds, "rate": rows / seconds}


def _driver_url(settings) -> str:
    return settings.database_url.replace("postgresql+psycopg://", "postgresql://")


def _analyze(url: str, *, vacuum: bool = False) -> None:
    """What autovacuum does to a table that grew: fresh statistics, and the statements planned on
    the old ones planned again."""
    with psycopg.connect(url, autocommit=True) as connection:
        if connection.execute("SHOW autovacuum").fetchone()[0] != "on":
            print("  (this server runs with autovacuum off: the bench analyses the store itself)")
        connection.execute("VACUUM ANALYZE" if vacuum else "ANALYZE")


def _database_bytes(url: str) -> int:
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT pg_database_size(current_database())").fetchone()[0]


def _verify(env: dict, url: str) -> dict:
    """The whole check as an operator runs it, beside reading and hashing every event once."""
    with psycopg.connect(url) as connection:
        events = connection.execute("SELECT count(*) FROM ledger_events").fetchone()[0]
    started = time.perf_counter()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "smsgate"), "ledger", "verify", "--jobs", "2"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"ledger verify failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    started = time.perf_counter()
    with psycopg.connect(url) as connection, connection.cursor(name="events") as cursor:
        cursor.itersize = 10_000
        cursor.execute(f"SELECT * FROM {LedgerEvent.__tablename__} ORDER BY number_id, seq")
        for record in cursor:
            hashlib.sha256(repr(record).encode()).digest()
    floor = time.perf_counter() - started
    print(f"  verify: {events:,} events in {seconds:.2f} s ({events / seconds:,.0f}/s); "
          f"read + SHA-256 of each: {floor:.2f} s ({events / floor:,.0f}/s)")
    return {"events": events, "rate": events / seconds, "baseline": events / floor}


def _gate_batch(settings, size: int) -> dict:
    """One batch of 100,000 recipients drawn from the store (all it holds, when it holds fewer), decided
    by the gate, beside COPY + JOIN; best of three of each."""
    from gateway.store.database import Database

    database = Database(settings.database_url)
    rng = random.Random(7)
    # Every recipient a number the store holds, so the batch asks the same of the gate at every size
    # (a number it does not hold is refused before any rule is read): BATCH of them, or all it holds.
    recipients = [_send_number(i) for i in rng.sample(range(size), min(size, BATCH))]
    rng.shuffle(recipients)
    try:
        with database.sessions() as session:
            deals = programs.by_slug(session, "deals")
            session.expunge(deals)
        gateway, baseline = [], []
        for _ in range(3):
            baseline.append(_copy_and_join(database, recipients, deals.id)[0])
            gateway.append(_gateway_filter(database, recipients, deals, settings, default_rules())[0])
    finally:
        database.dispose()
    rate, floor = len(recipients) / min(gateway), len(recipients) / min(baseline)
    print(f"  gate: {rate:,.0f} decisions/s for {len(recipients):,} recipients; COPY + JOIN {floor:,.0f} numbers/s")
    return {"rate": rate, "baseline": floor}


def _one_number_operations(settings, size: int) -> dict:
    """Export, console search (find + record, logged) and erase of single numbers, in-process (no
    process start), medians in milliseconds."""
    gateway = bootstrap.build(settings)
    picks = [_send_number(i) for i in range(size - 2 * SAMPLES, size)]  # kept out of the sends
    with gateway.db.transaction() as session:
        staff = console.create_user(session, "bench", "admin", console.generate_password())
    exports, searches, erasures = [], [], []
    try:
        for e164 in picks[:SAMPLES]:
            started = time.perf_counter()
            with gateway.db.transaction() as session:
                privacy.export(session, store_consents.find_number(session, e164))
            exports.append(time.perf_counter() - started)
            started = time.perf_counter()
            found = console.search(gateway, staff, parse(e164), address="127.0.0.1")
            console.record(gateway, staff, found.number_id, action="view", address="127.0.0.1")
            searches.append(time.perf_counter() - started)
        for e164 in picks[SAMPLES:]:
            started = time.perf_counter()
            with gateway.db.transaction() as session:
                privacy.erase(session, store_consents.find_number(session, e164), settings.suppression_key,
                              consents.Evidence(Source.SYSTEM, actor="bench", details={"request": "erasure"}))
            erasures.append(time.perf_counter() - started)
        with gateway.db.sessions() as session:
            assert session.scalar(select(func.count()).select_from(PhoneNumber)
                                  .where(PhoneNumber.e164.in_(picks[SAMPLES:]))) == 0
    finally:
        gateway.db.dispose()
    result = {"export_ms": statistics.median(exports) * 1000, "search_ms": statistics.median(searches) * 1000,
              "erase_ms": statistics.median(erasures) * 1000}
    print(f"  one number: export {result['export_ms']:.1f} ms, console search {result['search_ms']:.1f} ms, "
          f"erase {result['erase_ms']:.1f} ms (medians of {SAMPLES})")
    return result


def _http(env: dict, settings, size: int, work: Path, args) -> dict:
    """Inbound webhook (the mix) and send API, each beside the baseline app, rounds back to back."""
    runs = args.rounds * 2 + 2  # the baseline's slices: a warm-up, then a run per round of each path
    webhooks, sends = work / "webhooks.tsv", work / "sends.jsonl"
    _write_requests(webhooks, INBOUND_NUMBERS, runs * args.per_run, None)
    with open(sends, "w") as out:
        for index in range(runs * args.per_run):
            out.write(json.dumps({"to": _send_number(index % (size - 2 * SAMPLES)), "program": "deals",
                                  "body": f"Acme Deals: 20% off this weekend only (offer {index})."}) + "\n")
    key = _api_key(settings)
    servers = {}
    try:
        for name, app in (("baseline", "bench.baseline_app:create_app()"), ("gateway", "gateway.web.app:create_app()")):
            servers[name] = _start_gunicorn(name, app, env, work)
        base = servers["gateway"]["url"].rsplit("/webhooks", 1)[0]
        _primer(INBOUND_NUMBERS, lambda number: CYCLE[:number % len(CYCLE)])(servers["gateway"]["url"])
        slices = itertools.count(0, args.per_run)  # the baseline's, in webhooks.tsv
        send_slices = itertools.count(0, args.per_run)  # the gateway's sends, in sends.jsonl
        inbound_cursor = [0]

        def inbound(name: str, duration: int) -> dict:
            if name == "baseline":
                return _wrk(servers[name], webhooks, next(slices), args.per_run, duration, args)
            # The gateway's texts go on in order from where its last run stopped (each number's cycle).
            result = _wrk(servers[name], webhooks, inbound_cursor[0], args.per_run, duration, args)
            inbound_cursor[0] += result["requests"]
            return result

        def send(name: str, duration: int) -> dict:
            if name == "baseline":
                return _wrk(servers[name], webhooks, next(slices), args.per_run, duration, args)
            target = {**servers[name], "url": base + "/v1/messages"}
            return _wrk_sends(target, sends, next(send_slices), args.per_run, duration, key, args)

        for name in servers:
            inbound(name, 3)  # warm-up: imports, pools
        send("gateway", 3)
        # The store was analysed after the import, when it held no messages; the warm-ups wrote the
        # first ones. A maintained PostgreSQL re-analyses a table that grew (autovacuum: 50 rows and
        # 10% after the last time), which re-plans the statements the workers prepared while it was
        # empty; without it, a plan made for an empty messages table scans the table on every send
        # and the send path slows as it fills (measured: 958 -> 596 -> 521 req/s over three rounds).
        # The server this runs on may have autovacuum off, so the bench does the analysis itself.
        _analyze(_driver_url(settings))
        print("  inbound webhook (the mix):")
        inbound_results = measure_rounds(list(servers), args.rounds, lambda name: inbound(name, args.duration))
        print("  send API (deals):")
        send_results = measure_rounds(list(servers), args.rounds, lambda name: send(name, args.duration))
    finally:
        stop(servers)
    return {"inbound": _summary(inbound_results), "send": _summary(send_results)}


def _summary(results: dict[str, list[dict]]) -> dict:
    ratios = [g["rps"] / b["rps"] for b, g in zip(results["baseline"], results["gateway"])]
    return {"rate": statistics.median(r["rps"] for r in results["gateway"]),
            "baseline": statistics.median(r["rps"] for r in results["baseline"]),
            "ratio": statistics.median(ratios)}


def print_table(rows: list[dict]) -> None:
    def http(part: dict) -> str:
        return f"{part['rate']:,.0f} ({part['baseline']:,.0f}) {part['ratio']:.0%}"

    print("| numbers | import rows/s | inbound req/s (baseline) ratio | send req/s (baseline) ratio "
          "| gate decisions/s (COPY+JOIN) | verify events/s (read+hash) | export ms | erase ms "
          "| console search ms | disk per 1M numbers |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['size']:,} | {row['import']['rate']:,.0f} | {http(row['inbound'])} | {http(row['send'])} "
              f"| {row['gate']['rate']:,.0f} ({row['gate']['baseline']:,.0f}) "
              f"| {row['verify']['rate']:,.0f} ({row['verify']['baseline']:,.0f}) "
              f"| {row['export_ms']:.1f} | {row['erase_ms']:.1f} | {row['search_ms']:.1f} "
              f"| {row['disk_per_million'] / 2**30:.2f} GiB |")


if __name__ == "__main__":
    sys.exit(main())
