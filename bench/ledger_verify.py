"""How fast the ledger is checked: events per second of `smsgate ledger verify`'s check, in full
(with and without the replay of every chain through the state machine, --jobs 1 and 2), and
incrementally since a checkpoint after a day's events; `ledger rebuild`; today's code beside the
code before issue 18 (bench/baseline_ledger.py) in the same run.

    .venv/bin/python bench/ledger_verify.py [--events 100000] [--day 1000] [--database-url URL]

Builds the store itself, quickly: the example programs, then numbers with chains of the lengths
people make (a double opt-in and its YES, a STOP, a START, HELPs, several programs; about four
events a number), chained by the gateway's own `ledger.chain` and replayed by `ledger.replay`, written
by COPY (PostgreSQL) or one executemany (SQLite) rather than through the services. Then a checkpoint,
then "a day": --day more events on as many numbers. Recreates the database named by --database-url
(default postgresql://postgres@127.0.0.1/bench_ledger_verify; a sqlite:/// URL works too). Each
figure is the best of --repeat runs: wall time (what an operator waits), and the CPU time of this
process and its jobs (not PostgreSQL's), which moves much less with whatever else the machine runs.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text, update  # noqa: E402

from bench import baseline_ledger  # noqa: E402
from gateway.domain.consent import EVENT_TYPES, Input, State  # noqa: E402
from gateway.domain.consent import apply as transition  # noqa: E402
from gateway.domain.ledger import GENESIS_HASH, chain, replay  # noqa: E402
from gateway.domain.programs import load_file  # noqa: E402
from gateway.store import bulk, checkpoints, consents, ledger, programs  # noqa: E402
from gateway.store.database import Database  # noqa: E402
from gateway.store.models import Consent, LedgerEvent, PhoneNumber  # noqa: E402

START = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
# What happens to a number, as (weight, steps); a step is (program slug or None for all the number's
# programs, input). About four events a number on average.
LIVES = [
    (30, [("deals", "api_request"), ("deals", "confirm_yes")]),
    (15, [("deals", "web_request"), ("deals", "confirm_yes"), ("deals", "keyword_stop")]),
    (10, [("alerts", "keyword_join_direct"), (None, "help"), ("alerts", "keyword_stop"), ("alerts", "keyword_start")]),
    (10, [("deals", "api_request"), ("deals", "doi_expired")]),
    (10, [("deals", "api_request"), ("deals", "confirm_yes"), ("orders", "keyword_join_direct"),
          ("alerts", "keyword_join"), ("alerts", "confirm_yes"), (None, "help"), (None, "keyword_stop")]),
    (10, [("orders", "import_opt_in"), ("deals", "import_opt_in")]),
    (10, [("deals", "keyword_join"), ("deals", "confirm_yes"), (None, "help"), ("deals", "keyword_stop"),
          ("deals", "keyword_start"), (None, "help"), ("deals", "carrier_opt_out"), ("deals", "keyword_start"),
          (None, "help")]),
    (5, [("alerts", "keyword_join_direct"), (None, "wrong_number")]),
]
SOURCES = {"api_request": "api", "web_request": "web", "import_opt_in": "import", "carrier_opt_out": "carrier",
           "doi_expired": "system"}


def _evidence(source: str, e164: str, index: int, input: str) -> tuple[str | None, str | None, dict]:
    """(actor, reference, evidence) as the gateway records them for that source."""
    if source == "sms":
        sid = f"SM{index:032x}"
        return "twilio", sid, {"body": input.split("_")[-1].upper(), "from": e164, "to": "+15005550006",
                               "message_sid": sid}
    if source == "web":
        return "form", None, {"ip": f"203.0.113.{index % 250}", "form": "/subscribe/deals",
                              "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Safari/604.1",
                              "disclosure": "Up to 4 msgs/month. Msg&data rates may apply. Reply STOP to cancel."}
    if source == "api":
        return "crm", f"req-{index}", {"ip": "198.51.100.7", "request_id": f"req-{index}", "campaign": "spring"}
    if source == "import":
        return "import", f"row-{index}", {"file": "subscribers-2019.csv", "row": index, "collected": "2019-04-01"}
    return "system", None, {"code": 21610} if source == "carrier" else {}


def _life(number_id: int, e164: str, slugs: dict[str, int], rng: random.Random, counter) -> list[dict]:
    """One number's drafts, made through the state machine so that the chain could have happened."""
    weights, lives = zip(*LIVES)
    steps = rng.choices(lives, weights)[0]
    states: dict[int, State] = {}
    at = START + timedelta(minutes=rng.randrange(0, 500_000))
    drafts = []
    for slug, input_name in steps:
        at += timedelta(minutes=rng.randrange(1, 20_000))
        source = SOURCES.get(input_name, "sms")
        actor, reference, evidence = _evidence(source, e164, next(counter), input_name)
        if input_name == "help":
            drafts.append(dict(type="help", input="help", program_id=None, status_before=None, status_after=None,
                               expires_at=None, source=source, actor=actor, reference=reference, evidence=evidence,
                               occurred_at=at))
            continue
        input = Input(input_name)
        for program_id in ([slugs[slug]] if slug else sorted(states)):
            before = states.get(program_id, State())
            after = transition(before, input)
            states[program_id] = after
            pending = after.status is not None and after.status.value == "pending"
            drafts.append(dict(type=EVENT_TYPES[input], input=input.value, program_id=program_id,
                               status_before=before.status.value if before.status else None,
                               status_after=after.status.value if after.status else None,
                               expires_at=at + timedelta(hours=48) if pending else None, source=source,
                               actor=actor, reference=reference, evidence=evidence, occurred_at=at))
    return drafts


_EVENT_COLUMNS = ("number_id", "seq", "type", "input", "program_id", "status_before", "status_after", "expires_at",
                  "source", "actor", "reference", "evidence", "evidence_digest", "occurred_at", "prev_hash", "hash")


def _event_rows(events) -> list[tuple]:
    return [tuple(json.dumps(event.evidence) if column == "evidence" else getattr(event, column)
                  for column in _EVENT_COLUMNS) for event in events]


def _consent_rows(number_id: int, events) -> list[tuple]:
    return [(number_id, program_id, done.state.status.value, done.state.restorable, done.expires_at, done.updated_at)
            for program_id, done in replay(events).items() if done.state.status is not None]


def build(db: Database, settings_programs: Path, events_wanted: int, seed: int = 18) -> dict[int, tuple[int, str]]:
    """A store of about `events_wanted` events; returns each number's (seq, head)."""
    rng = random.Random(seed)
    counter = iter(range(1, 10**12))
    with db.transaction() as session:
        stored = programs.store(session, load_file(settings_programs))
        slugs = {program.slug: program.id for program in stored}
    heads: dict[int, tuple[int, str]] = {}
    made, number_id = 0, 0
    while made < events_wanted:
        numbers, rows, held = [], [], []
        while made < events_wanted and len(numbers) < 5000:
            number_id += 1
            e164 = f"+1415{number_id:07d}"
            events = chain(number_id, 0, GENESIS_HASH, _life(number_id, e164, slugs, rng, counter))
            heads[number_id] = (events[-1].seq, events[-1].hash)
            numbers.append((number_id, e164, "mobile", "US", "ok", "", events[-1].seq, events[-1].hash, START))
            rows += _event_rows(events)
            held += _consent_rows(number_id, events)
            made += len(events)
        with db.transaction() as session:
            bulk.insert_rows(session, PhoneNumber.__table__, ("id", "e164", "kind", "region", "reachability",
                                                               "twilio_blocks", "ledger_seq", "ledger_head",
                                                               "created_at"), numbers)
            if db.dialect == "postgresql":
                bulk.insert_rows(session, LedgerEvent.__table__, _EVENT_COLUMNS, rows)
            else:  # through SQLAlchemy, which takes the evidence as a dict
                session.execute(insert(LedgerEvent.__table__), [
                    dict(zip(_EVENT_COLUMNS, row), evidence=json.loads(row[11])) for row in rows])
            bulk.insert_rows(session, Consent.__table__, ("number_id", "program_id", "status", "restorable",
                                                          "expires_at", "updated_at"), held)
    if db.dialect == "postgresql":
        with db.transaction() as session:
            for table in ("numbers", "ledger_events", "consents"):
                session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                     f"(SELECT max(id) FROM {table}))"))
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    return heads


def a_day(db: Database, heads: dict[int, tuple[int, str]], count: int, seed: int = 19) -> None:
    """`count` HELP texts, one each from as many numbers: the events of a day since the checkpoint."""
    rng = random.Random(seed)
    at = START + timedelta(days=400)
    with db.transaction() as session:
        rows, moved = [], []
        for number_id in sorted(rng.sample(sorted(heads), min(count, len(heads)))):
            seq, head = heads[number_id]
            (event,) = chain(number_id, seq, head, [dict(
                type="help", input="help", program_id=None, status_before=None, status_after=None, expires_at=None,
                source="sms", actor="twilio", reference=f"SM{number_id:032x}",
                evidence={"body": "HELP", "message_sid": f"SM{number_id:032x}"}, occurred_at=at)])
            rows += _event_rows([event])
            moved.append({"b_id": number_id, "b_seq": event.seq, "b_head": event.hash})
        session.execute(insert(LedgerEvent.__table__), [
            dict(zip(_EVENT_COLUMNS, row), evidence=json.loads(row[11])) for row in rows])
        table = PhoneNumber.__table__
        from sqlalchemy import bindparam

        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"))
            .values(ledger_seq=bindparam("b_seq"), ledger_head=bindparam("b_head")), moved)


def measure(name: str, run, repeat: int) -> dict:
    """Best of `repeat`: wall seconds, CPU seconds of the check (this process's, or the jobs' summed as
    they report it), events walked."""
    best = None
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        events, problems, jobs_cpu = run()
        result = {"name": name, "wall": time.perf_counter() - wall,
                  "cpu": jobs_cpu if jobs_cpu is not None else time.process_time() - cpu, "events": events,
                  "problems": problems}
        if best is None or result["wall"] < best["wall"]:
            best = result
    if best["problems"]:
        raise SystemExit(f"{name}: {best['problems']} problem(s) in an intact store: the bench is wrong")
    per_event = best["cpu"] / max(best["events"], 1) * 1e6
    print(f"{name:52s} {best['events']:>9,} events {best['wall']:7.2f} s wall "
          f"{best['events'] / best['wall']:>9,.0f} events/s   CPU {per_event:6.1f} µs/event", flush=True)
    return best


def _database(url: str) -> Database:
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[1]).unlink(missing_ok=True)
    else:
        import psycopg

        parts = urlsplit(url)
        name = parts.path.lstrip("/")
        with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as connection:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                connection.execute(f'CREATE DATABASE "{name}"')
    db = Database(url)
    if db.dialect == "postgresql":
        with db.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.upgrade()
    return db


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_ledger_verify")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--day", type=int, default=1000, help="events (on as many numbers) after the checkpoint")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true", help="today's code only (the baseline is slow)")
    args = parser.parse_args()
    db = _database(args.database_url)
    started = time.perf_counter()
    heads = build(db, ROOT / "config" / "programs.example.toml", args.events)
    print(f"built {len(heads):,} numbers, {sum(seq for seq, _ in heads.values()):,} events on {db.dialect} "
          f"in {time.perf_counter() - started:.1f} s", flush=True)

    def old(replay: bool):
        def run():
            tally = ledger.Tally()
            with db.shared_snapshot() as (session, _):
                found = sum(1 for _ in baseline_ledger.verify(session, tally=tally, replay=replay))
            return tally.events, found, None
        return run

    def new(jobs: int, replay: bool = True, checkpoint=None, since: bool = False):
        def run():
            tally = ledger.Tally()
            found = sum(1 for _ in ledger.check(db, checkpoint=checkpoint, jobs=jobs, since_checkpoint=since,
                                                tally=tally, replay=replay))
            return tally.events, found, tally.cpu if jobs > 1 else None
        return run

    results = []
    if not args.skip_baseline:
        results.append(measure("before: full, with replay (1 process)", old(True), args.repeat))
        results.append(measure("before: full, chains only (1 process)", old(False), args.repeat))
    for jobs in (1, 2):
        results.append(measure(f"now: full, with replay, --jobs {jobs}", new(jobs), args.repeat))
        results.append(measure(f"now: full, chains only, --jobs {jobs}", new(jobs, replay=False), args.repeat))

    log_dir = Path(tempfile.mkdtemp(prefix="bench-ledger-checkpoints-"))
    log, signer = checkpoints.CheckpointLog(log_dir, ""), checkpoints.Signer(bytes(range(32)))
    log.public_key = signer.public_key
    with db.shared_snapshot() as (session, _):
        checkpoints.take(session, log, signer)
    a_day(db, heads, args.day)
    checkpoint, problems = log.newest()
    assert checkpoint is not None and not problems
    if not args.skip_baseline:
        results.append(measure("before: full after a day, with checkpoint", old(True), args.repeat))
    results.append(measure("now: full after a day, with checkpoint, --jobs 2",
                           new(2, checkpoint=checkpoint), args.repeat))
    for jobs in (1, 2):
        results.append(measure(f"now: --since-checkpoint after a day, --jobs {jobs}",
                               new(jobs, checkpoint=checkpoint, since=True), args.repeat))

    def rebuild(function):
        def run():
            with db.transaction() as session:
                count = function(session)
            return count, 0, None
        return run

    results.append(measure("rebuild (consents written)", rebuild(consents.rebuild), 1))
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
