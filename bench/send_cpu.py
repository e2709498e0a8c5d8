"""CPU per send on the three send paths, in-process on PostgreSQL: what this process spends (its
`time.process_time()`, not the database server's) per

- `POST /v1/messages` (the real app through Flask's test client: auth, parse, the gate's one read,
  the message and its first step in one statement, the enqueue on the embedded broker);
- the worker's `sending.send` (claim, the gate again, the sender's slot, a stub provider, "sent");
- a batch's `batches.accept` (facts, every rule, the messages and their history inserted; rolled
  back each round), per recipient.

Much less sensitive than throughput to whatever else the machine runs; best of `--repeat` runs. It
takes only public entry points, so the same file measures an older checkout too (run it from there):

    .venv/bin/python bench/send_cpu.py [--numbers 1000] [--batch 20000] [--repeat 3]

Recreates the database named by --database-url (default postgresql://postgres@127.0.0.1/bench_send_cpu).
Loopback only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.support import create_database  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.gate import ALLOW, Kind  # noqa: E402
from gateway.domain.numbers import parse  # noqa: E402
from gateway.domain.programs import load_file  # noqa: E402
from gateway.services import batches, keys, policy, sending  # noqa: E402
from gateway.store import bulk, outbox, programs  # noqa: E402
from gateway.store import consents as store_consents  # noqa: E402
from gateway.store.models import utcnow  # noqa: E402
from gateway.web.app import create_app  # noqa: E402

AREA_CODES = ("212", "305", "312", "415", "503", "602", "713", "617")


def number(index: int) -> str:
    return f"+1{AREA_CODES[index % len(AREA_CODES)]}{3_000_000 + index // len(AREA_CODES):07d}"


class StubProvider:
    """Answers a send at once with a new SID: the provider's cost is not what is measured here."""

    def __init__(self):
        self.count = 0

    def send(self, **_):
        self.count += 1
        return SimpleNamespace(sid=f"SM{self.count:032x}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_send_cpu")
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    create_database(args.database_url)
    work = Path(tempfile.mkdtemp(prefix="send-cpu-"))
    settings = load_settings(env={
        "DATABASE_URL": args.database_url, "SUPPRESSION_KEY": "bench-" + "k" * 40, "VAR_DIR": str(work),
        "SANDBOX": "on", "LOG_LEVEL": "WARNING", "INBOUND_JOURNAL_REPLAY_SECONDS": "0", "REDIS_URL": "",
        "CELERY_BROKER_URL": f"filesystem://{work / 'broker'}", "PUBLIC_BASE_URL": "http://127.0.0.1:5999"})
    app = create_app(settings)
    gateway = app.extensions["gateway"]
    with gateway.db.engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    gateway.db.upgrade()
    total = args.numbers * (2 + args.repeat * 2) + args.batch
    with gateway.db.transaction() as session:
        specs = load_file(settings.programs_file)
        orders = next(spec for spec in specs if spec.slug == "orders")
        programs.store(session, [*specs, replace(orders, slug="fast", sender="+15005550009", mps=100_000,
                                                 join_keywords=("FAST",))])
        key = keys.create(session, "bench", ["send"])[1]
    started = time.perf_counter()
    with gateway.db.transaction() as session:
        # In bulk, as bench/batch_filter.py does: numbers, an opt-in to both programs, and the ledger
        # event behind each (the gate's read finds it for the decision's record).
        bulk.insert_rows(session, programs.Program.metadata.tables["numbers"],
                         ("e164", "kind", "region", "reachability", "ledger_seq", "ledger_head", "created_at"),
                         [(number(i), "fixed_line_or_mobile", "US", "ok", 2, "0" * 64, utcnow()) for i in range(total)])
        session.execute(text("""
            INSERT INTO consents (number_id, program_id, status, restorable, updated_at)
            SELECT n.id, p.id, 'opted_in', false, now()
            FROM numbers n, programs p WHERE p.slug IN ('deals', 'fast')"""))
        session.execute(text("""
            INSERT INTO ledger_events (number_id, seq, type, input, program_id, status_before, status_after, source,
                                       evidence, evidence_digest, occurred_at, prev_hash, hash)
            SELECT number_id, ROW_NUMBER() OVER (PARTITION BY number_id ORDER BY program_id), 'consent',
                   'import_opt_in', program_id, NULL, status, 'import', '{}', md5(id::text) || md5(id::text), now(),
                   repeat('0', 64), md5((id * 3)::text) || md5((id * 5)::text)
            FROM consents"""))
    with gateway.db.engine.begin() as connection:
        connection.execute(text("ANALYZE"))
    print(f"store: {total:,} numbers opted in to deals and fast ({time.perf_counter() - started:.0f} s)")
    gateway.provider = StubProvider()  # (a cached property: this replaces it)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    cursor = iter(range(total))

    def api_round() -> float:
        wanted = [number(next(cursor)) for _ in range(args.numbers)]
        began = time.process_time()
        for to in wanted:
            response = client.post("/v1/messages", headers=headers, json={"to": to, "program": "deals", "body": "Sale"})
            assert response.status_code == 202, response.json
        return (time.process_time() - began) / len(wanted)

    def worker_round() -> float:
        with gateway.db.transaction() as session:
            fast = programs.by_slug(session, "fast")
            ids = [outbox.accept(session, number=store_consents.number_row(session, parse(number(next(cursor)))),
                                 program=fast, kind=Kind.TRANSACTIONAL, body="Shipped", decision=ALLOW).id
                   for _ in range(args.numbers)]
        began = time.process_time()
        for message_id in ids:
            outcome = sending.send(gateway, message_id)
            assert outcome.status == "sent", outcome
        return (time.process_time() - began) / len(ids)

    batch_numbers = [number(i) for i in range(total - args.batch, total)]

    def batch_round() -> float:
        began = time.process_time()
        with gateway.db.transaction() as session:
            result = batches.accept(session, program=programs.by_slug(session, "deals"), body="Sale",
                                    recipients=batch_numbers, now=utcnow(),
                                    gate=policy.Gate(settings.suppression_key, gateway.quiet_hours),
                                    default_region="US")
            assert len(result.accepted) == args.batch, result.refused_by_reason
            spent = time.process_time() - began
            session.rollback()
        return spent / args.batch

    api_round(), worker_round(), batch_round()  # warm-up
    api = min(api_round() for _ in range(args.repeat))
    worker = min(worker_round() for _ in range(args.repeat))
    batch = min(batch_round() for _ in range(args.repeat))
    print(f"POST /v1/messages      {api * 1e6:8.0f} µs CPU per request (best of {args.repeat} x {args.numbers})")
    print(f"worker sending.send    {worker * 1e6:8.0f} µs CPU per message (stub provider)")
    print(f"batches.accept         {batch * 1e6:8.1f} µs CPU per recipient (batch of {args.batch:,})")
    gateway.db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
