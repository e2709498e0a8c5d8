"""Batch consent filtering: 100,000 recipients against a store of 1,000,000 numbers on PostgreSQL.

Side by side in one run, on the same 100,000 numbers:
- baseline: COPY the numbers into a temporary table and JOIN numbers and consents, keeping the
  opted-in ones (what a bare "who may I text" query costs);
- gateway: the batch API's filter, `batches.read_facts` + the Gate's `decide_many`: the same COPY and
  join plus suppressions, reachability and the last day's texts (caps), then every rule of the gate
  (country, state caps, quiet hours) for every number.
The gateway must filter at 50% or more of the baseline's numbers per second. For information the run
also times the whole `batches.accept` (messages and their history inserted) and the HTTP request.

    .venv/bin/python bench/batch_filter.py [--store 1000000] [--batch 100000] [--rounds 3]

Recreates the database named by --database-url (default postgresql://postgres@127.0.0.1/bench_batch).
Loopback only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bench.support import empty_store  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.decisions import Stage  # noqa: E402
from gateway.domain.gate import Kind  # noqa: E402
from gateway.domain.programs import load_file
from gateway.domain.quiet_hours import default_rules  # noqa: E402
from gateway.services import batches, keys, policy  # noqa: E402
from gateway.store import bulk, programs
from gateway.store.database import Database  # noqa: E402
from gateway.store.models import utcnow  # noqa: E402

REQUIRED_RATIO = 0.50
# Area codes across the US time zones and the capped states, so quiet hours and caps have work to do.
AREA_CODES = ("212", "305", "312", "405", "410", "415", "503", "602", "713", "808", "907", "617", "850", "206")


def number(index: int) -> str:
    return f"+1{AREA_CODES[index % len(AREA_CODES)]}{2_000_000 + index // len(AREA_CODES):07d}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_batch")
    parser.add_argument("--store", type=int, default=1_000_000, help="numbers in the store")
    parser.add_argument("--batch", type=int, default=100_000, help="recipients per batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = load_settings(env={"DATABASE_URL": args.database_url, "SUPPRESSION_KEY": "bench-" + "k" * 40,
                                  "VAR_DIR": str(ROOT / "var" / "bench"), "SANDBOX": "off",
                                  "TWILIO_AUTH_TOKEN": "bench", "TWILIO_ACCOUNT_SID": "AC" + "2" * 32})
    database = _prepare(args.database_url, settings, args.store)
    rules = default_rules()
    rng = random.Random(5)
    filters, baselines, accepts = [], [], []
    try:
        with database.sessions() as session:
            program = programs.by_slug(session, "deals")
            session.expunge(program)
        for round_ in range(args.rounds + 1):  # the first round warms caches and is not counted
            recipients = [number(i) for i in rng.sample(range(args.store), args.batch)]
            baseline, kept = _copy_and_join(database, recipients, program.id)
            seconds, decided = _gateway_filter(database, recipients, program, settings, rules)
            accept_seconds, accepted = _batch_accept(database, recipients, program, settings, rules)
            if round_:
                baselines.append(baseline)
                filters.append(seconds)
                accepts.append(accept_seconds)
            allowed = sum(d.allowed or d.deferred for d in decided.values())
            print(f"  round {round_}{' (warm-up)' if not round_ else ''}: baseline {baseline:.3f} s ({kept} opted in)"
                  f"  gateway filter {seconds:.3f} s ({allowed} allowed or deferred)"
                  f"  batches.accept {accept_seconds:.3f} s ({accepted} stored)")
    finally:
        database.dispose()
    baseline, gateway = statistics.median(baselines), statistics.median(filters)
    ratio = baseline / gateway
    print()
    print(f"baseline (COPY into a temp table + JOIN numbers, consents): {args.batch / baseline:10,.0f} numbers/s "
          f"({baseline:.3f} s, median of {args.rounds})")
    print(f"gateway  (read_facts + decide_many, every rule):           {args.batch / gateway:10,.0f} numbers/s "
          f"({gateway:.3f} s)")
    print(f"ratio: {ratio:.0%} (required: at least {REQUIRED_RATIO:.0%})")
    print(f"whole batches.accept (filter + insert messages and history): {statistics.median(accepts):.3f} s")
    return 0 if ratio >= REQUIRED_RATIO else 1


def _prepare(url: str, settings, store: int) -> Database:
    database = empty_store(settings.database_url)
    started = time.perf_counter()
    now = utcnow()
    with database.transaction() as session:
        stored = {p.slug: p for p in programs.store(session, load_file(settings.programs_file))}
        keys.create(session, "bench", ["send"])
        bulk.insert_rows(session, programs.Program.metadata.tables["numbers"],
                         ("e164", "kind", "region", "reachability", "ledger_seq", "ledger_head", "created_at"),
                         [(number(i), "fixed_line_or_mobile", "US", "landline" if i % 97 == 0 else "ok", 0, "0" * 64,
                           now) for i in range(store)])
    with database.transaction() as session:
        deals, alerts = stored["deals"].id, stored["alerts"].id
        # Half opted in to deals, a tenth opted out, some pending; alerts for a third.
        session.execute(text("""
            INSERT INTO consents (number_id, program_id, status, restorable, expires_at, updated_at)
            SELECT id, :deals, CASE WHEN id % 10 < 5 THEN 'opted_in' WHEN id % 10 = 5 THEN 'opted_out'
                                    ELSE 'pending' END, false,
                   CASE WHEN id % 10 > 5 THEN now() + interval '1 day' END, now()
            FROM numbers WHERE id % 10 <> 9"""), {"deals": deals})
        session.execute(text("""
            INSERT INTO consents (number_id, program_id, status, restorable, updated_at)
            SELECT id, :alerts, 'opted_in', false, now() FROM numbers WHERE id % 3 = 0"""), {"alerts": alerts})
        # A suppression list and a day of earlier texts, so those joins have rows to find.
        session.execute(text("INSERT INTO suppressions (digest, reason, created_at) "
                             "SELECT md5(id::text) || md5((id * 7)::text), 'erased', now() "
                             "FROM generate_series(1, 20000) id"))
        # The ledger event behind each consent, which the gate's read finds for the decision's record
        # (since 2026-12-06; runs before that date had no ledger events here).
        session.execute(text("""
            INSERT INTO ledger_events (number_id, seq, type, input, program_id, status_before, status_after, source,
                                       evidence, evidence_digest, occurred_at, prev_hash, hash)
            SELECT number_id, ROW_NUMBER() OVER (PARTITION BY number_id ORDER BY program_id), 'consent',
                   'import_opt_in', program_id, NULL, status, 'import', '{}', md5(id::text) || md5(id::text), now(),
                   repeat('0', 64), md5((id * 3)::text) || md5((id * 5)::text)
            FROM consents"""))
    with database.engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    print(f"store: {store:,} numbers, consents, 20,000 suppressions ({time.perf_counter() - started:.0f} s)")
    return database


def _copy_and_join(database: Database, recipients: list[str], program_id: int) -> tuple[float, int]:
    """The bare way, straight on the driver: COPY into a temporary table, JOIN, fetch."""
    url = database.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as connection:
        started = time.perf_counter()
        with connection.transaction():
            connection.execute("CREATE TEMPORARY TABLE baseline_candidates (e164 VARCHAR(20)) ON COMMIT DROP")
            with connection.cursor() as cursor, cursor.copy("COPY baseline_candidates (e164) FROM STDIN") as copy:
                for e164 in recipients:
                    copy.write_row((e164,))
            kept = connection.execute("""
                SELECT n.id, n.e164 FROM baseline_candidates c
                JOIN numbers n ON n.e164 = c.e164
                JOIN consents k ON k.number_id = n.id AND k.program_id = %s AND k.status = 'opted_in'
            """, (program_id,)).fetchall()
        return time.perf_counter() - started, len(kept)


def _gateway_filter(database, recipients, program, settings, rules):
    started = time.perf_counter()
    now = utcnow()
    gate = policy.Gate(settings.suppression_key, rules)
    with database.transaction() as session:
        found = batches.read_facts(session, gate, recipients, program, Kind.MARKETING, now)
    # With the records of the messages it would store (the batch API's stage), as batches.accept asks.
    decided = gate.decide_many({e164: facts for e164, (_, facts) in found.items()}, program, Kind.MARKETING, now,
                               stage=Stage.BATCH)
    return time.perf_counter() - started, decided


def _batch_accept(database, recipients, program, settings, rules) -> tuple[float, int]:
    started = time.perf_counter()
    with database.transaction() as session:
        result = batches.accept(session, program=program, body="Acme Deals: 20% off this weekend.",
                                recipients=recipients, now=utcnow(), gate=policy.Gate(settings.suppression_key, rules),
                                default_region="US")
        seconds = time.perf_counter() - started
        session.rollback()  # every round starts from the same store
    return seconds, len(result.accepted)


if __name__ == "__main__":
    sys.exit(main())
