"""What the review list costs as the ledger grows: one page of `services/review.pending` (the console's
and `smsgate review list`'s read) and the settled-check a decision makes, with and without the partial
index of review events (migration 0018_review_list).

    .venv/bin/python bench/review_list.py [--events 1000000] [--reviews 2000] [--after 200000] [--database-url URL]

Builds the store as bench/ledger_verify.py does (the example programs, numbers with chains of the
lengths people make, written by COPY), then appends a "no thanks" kept for review (alerts) to
--reviews numbers, resolves every other one as not a revocation, chained like any event, and then
--after more events (a HELP each from as many numbers), so that the replies are not the newest. Each
figure is the median of --repeat runs, in milliseconds, on a warm cache. Recreates the database named
by --database-url (default postgresql://postgres@127.0.0.1/bench_review_list). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import bindparam, func, insert, select, text, update  # noqa: E402

from bench.ledger_verify import _EVENT_COLUMNS as EVENT_COLUMNS  # noqa: E402
from bench.ledger_verify import START, _database, _event_rows, a_day, build  # noqa: E402
from gateway.domain.ledger import chain  # noqa: E402
from gateway.domain.review import NOT_REVOCATION_EVENT, REVIEW_EVENT, reference  # noqa: E402
from gateway.services import review  # noqa: E402
from gateway.store import programs  # noqa: E402
from gateway.store import review as store_review  # noqa: E402
from gateway.store.models import LedgerEvent, PhoneNumber  # noqa: E402


def _append(db, heads: dict[int, tuple[int, str]], drafts: dict[int, dict]) -> None:
    """Chain one draft after each number's head, as the gateway would, and move the heads."""
    rows, moved = [], []
    for number_id, draft in sorted(drafts.items()):
        seq, head = heads[number_id]
        (event,) = chain(number_id, seq, head, [draft])
        heads[number_id] = (event.seq, event.hash)
        rows.append(dict(zip(EVENT_COLUMNS, _event_rows([event])[0]), evidence=event.evidence))
        moved.append({"b_id": number_id, "b_seq": event.seq, "b_head": event.hash})
    table = PhoneNumber.__table__
    with db.transaction() as session:
        session.execute(insert(LedgerEvent.__table__), rows)
        session.connection().execute(update(table).where(table.c.id == bindparam("b_id"))
                                     .values(ledger_seq=bindparam("b_seq"), ledger_head=bindparam("b_head")), moved)


def add_reviews(db, heads: dict[int, tuple[int, str]], count: int, seed: int = 29) -> int:
    """A reply kept for review on `count` numbers, every other one resolved; returns how many await review."""
    rng = random.Random(seed)
    with db.transaction() as session:
        alerts = programs.by_slug(session, "alerts").id
    chosen = sorted(rng.sample(sorted(heads), count))
    at = START + timedelta(days=500)
    _append(db, heads, {number_id: dict(
        type=REVIEW_EVENT, input=REVIEW_EVENT, program_id=alerts, status_before=None, status_after=None,
        expires_at=None, source="sms", actor=None, reference=f"SM{number_id:032x}",
        evidence={"body": "No thanks", "class": "ambiguous", "language": "en"}, occurred_at=at)
        for number_id in chosen})
    with db.transaction() as session:
        ids = dict(session.execute(select(LedgerEvent.number_id, LedgerEvent.id)
                                   .where(LedgerEvent.type == REVIEW_EVENT)).all())
    resolved = chosen[::2]
    _append(db, heads, {number_id: dict(
        type=NOT_REVOCATION_EVENT, input=NOT_REVOCATION_EVENT, program_id=alerts, status_before=None,
        status_after=None, expires_at=None, source="system", actor="cli:bench", reference=reference(ids[number_id]),
        evidence={"review_event": ids[number_id], "decision": "not-revocation"}, occurred_at=at + timedelta(hours=1))
        for number_id in resolved})
    return count - len(resolved)


def timed(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(db, repeat: int, awaiting: int) -> dict[str, float]:
    def page(expected: int = min(50, awaiting), **options):
        def run():
            with db.transaction() as session:
                found = review.pending(session, limit=50, **options)
            assert len(found.items) == expected, len(found.items)
            return found
        return run

    first = page()()
    with db.transaction() as session:
        oldest_review = session.scalar(select(func.min(LedgerEvent.id)).where(LedgerEvent.type == REVIEW_EVENT))

    def settled():
        with db.transaction() as session:
            store_review.settled_by(session, oldest_review)

    return {"first page of 50": timed(page(), repeat), "one program's page": timed(page(program="alerts"), repeat),
            "next page (before=)": timed(page(before=first.older), repeat),
            "a program with none (empty)": timed(page(0, program="orders"), repeat),
            "settled check of one reply": timed(settled, repeat)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_review_list")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reviews", type=int, default=2000)
    parser.add_argument("--after", type=int, default=200_000,
                        help="events (HELPs, on as many numbers) after the replies: they are not the newest events")
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    db = _database(args.database_url)
    started = time.perf_counter()
    heads = build(db, ROOT / "config" / "programs.example.toml", args.events)
    awaiting = add_reviews(db, heads, args.reviews)
    a_day(db, heads, args.after)
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE ledger_events"))
        events = connection.scalar(text("SELECT count(*) FROM ledger_events"))
    print(f"{events:,} events, {args.reviews:,} replies kept for review, {awaiting:,} awaiting "
          f"(built in {time.perf_counter() - started:.0f} s); median of {args.repeat}, ms", flush=True)
    with_index = measure(db, args.repeat, awaiting)
    with db.engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_ledger_events_review"))
        connection.execute(text("ANALYZE ledger_events"))
    without = measure(db, args.repeat, awaiting)
    for name, ms in with_index.items():
        print(f"  {name:28s} {ms:8.1f} ms with the index   {without[name]:8.1f} ms without", flush=True)
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
