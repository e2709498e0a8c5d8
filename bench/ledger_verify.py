"""How fast the ledger is checked: events per second of `smsgate ledger verify`'s check, in full
(with and without the replay of every chain through the state machine, --jobs 1 and 2), and
incrementally since a checkpoint after a day's events; `ledger rebuild`; today's code beside the
code before issue 18 (bench/baseline_ledger.py) in the same run.

    .venv/bin/python bench/ledger_verify.py [--events 100000] [--day 1000] [--database-url URL]
                                            [--evidence-as-given]

Builds the store itself, quickly: the example programs, then numbers with chains of the lengths
people make (a double opt-in and its YES, a STOP, a START, HELPs, several programs; about four
events a number), chained by the gateway's own `ledger.chain` and replayed by `ledger.replay`, written
by COPY (PostgreSQL) or one executemany (SQLite) rather than through the services. Then a checkpoint,
then "a day": --day more events on as many numbers. Recreates the database named by --database-url
(default postgresql://postgres@127.0.0.1/bench_ledger_verify; a sqlite:/// URL works too). Each
figure is the best of --repeat runs: wall time (what an operator waits), the CPU time of this
process and its jobs, which moves much less with whatever else the machine runs, and on PostgreSQL
the CPU time of the backends serving them (read from /proc by a sampling process: the check does
part of its work there). The evidence is stored as the gateway stores it, its canonical JSON;
--evidence-as-given stores it as the webhook did before (keys in the order given), which the check
in SQL cannot confirm by itself. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text, update  # noqa: E402

from bench import baseline_ledger  # noqa: E402
from bench.support import empty_store  # noqa: E402
from gateway.domain.consent import EVENT_TYPES, Input, State  # noqa: E402
from gateway.domain.consent import apply as transition  # noqa: E402
from gateway.domain.ledger import GENESIS_HASH, canonical_evidence, chain, replay  # noqa: E402
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


def _stored_evidence(evidence: dict, as_given: bool) -> str:
    """The evidence's text as the gateway stores it (canonical JSON), or as the webhook stored it
    before it sorted the keys."""
    if as_given:
        return json.dumps(evidence, ensure_ascii=False, separators=(",", ":"))
    return canonical_evidence(evidence)[0]


def _event_rows(events, as_given: bool) -> list[tuple]:
    return [tuple(_stored_evidence(event.evidence, as_given) if column == "evidence" else getattr(event, column)
                  for column in _EVENT_COLUMNS) for event in events]


def _insert_events(db: Database, session, rows: list[tuple]) -> None:
    if db.dialect == "postgresql":  # by COPY, the stored text as given
        bulk.insert_rows(session, LedgerEvent.__table__, _EVENT_COLUMNS, rows, copy_from=0)
    else:  # through SQLAlchemy, which takes the evidence as a dict
        session.execute(insert(LedgerEvent.__table__), [
            dict(zip(_EVENT_COLUMNS, row), evidence=json.loads(row[11])) for row in rows])


def _consent_rows(number_id: int, events) -> list[tuple]:
    return [(number_id, program_id, done.state.status.value, done.state.restorable, done.expires_at, done.updated_at)
            for program_id, done in replay(events).items() if done.state.status is not None]


def build(db: Database, settings_programs: Path, events_wanted: int, seed: int = 18,
          as_given: bool = False) -> dict[int, tuple[int, str]]:
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
            rows += _event_rows(events, as_given)
            held += _consent_rows(number_id, events)
            made += len(events)
        with db.transaction() as session:
            bulk.insert_rows(session, PhoneNumber.__table__, ("id", "e164", "kind", "region", "reachability",
                                                               "twilio_blocks", "ledger_seq", "ledger_head",
                                                               "created_at"), numbers)
            _insert_events(db, session, rows)
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


def a_day(db: Database, heads: dict[int, tuple[int, str]], count: int, seed: int = 19, as_given: bool = False) -> None:
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
            rows += _event_rows([event], as_given)
            moved.append({"b_id": number_id, "b_seq": event.seq, "b_head": event.hash})
        _insert_events(db, session, rows)
        table = PhoneNumber.__table__
        from sqlalchemy import bindparam

        session.connection().execute(
            update(table).where(table.c.id == bindparam("b_id"))
            .values(ledger_seq=bindparam("b_seq"), ledger_head=bindparam("b_head")), moved)


def _backend_seconds(pid: int) -> float | None:
    """CPU seconds a process has run (its scheduler's count, in nanoseconds), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def _sample_backends(postmaster: int, database: str, pipe) -> None:
    """In a process of its own (so that its CPU counts in nobody's figure): until told to stop, every
    few milliseconds, the CPU seconds of each PostgreSQL backend serving `database`, known by its
    process title; then the sum of what each ran since the start (a backend that began later, whole;
    one that ended, up to its last sample, when it was idle: a job's backend ends after its last piece)."""
    names: dict[int, bool] = {}
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    marker = f" {database} "

    def sample(starting: bool) -> None:
        for pid in _children(postmaster):
            if pid not in names:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        title = cmdline.read().decode(errors="replace")
                except OSError:
                    title = ""
                if not title.startswith("postgres: "):
                    continue  # just forked: the postmaster's command line until the backend sets its title
                names[pid] = marker in title
            if names[pid]:
                seconds = _backend_seconds(pid)
                if seconds is not None:
                    first.setdefault(pid, seconds if starting else 0.0)
                    last[pid] = seconds

    sample(starting=True)
    pipe.send("started")
    while not pipe.poll(0.005):
        sample(starting=False)
    sample(starting=False)
    pipe.send(sum(last[pid] - first[pid] for pid in last))


class ServerCpu:
    """The CPU the PostgreSQL backends of the bench's database spend between start() and stop();
    None where they cannot be seen (SQLite, a server on another machine or in a container)."""

    def __init__(self, db: Database):
        self.postmaster = None
        if db.dialect == "postgresql":
            with db.engine.connect() as connection:
                backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
                self.database = connection.execute(text("SELECT current_database()")).scalar_one()
            try:
                with open(f"/proc/{backend}/stat") as stat:
                    self.postmaster = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass

    def start(self) -> None:
        self.process = None
        if self.postmaster is None:
            return
        self.pipe, theirs = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(
            target=_sample_backends, args=(self.postmaster, self.database, theirs), daemon=True)
        self.process.start()
        self.pipe.recv()

    def stop(self) -> float | None:
        if self.process is None:
            return None
        self.pipe.send("stop")
        seconds = self.pipe.recv()
        self.process.join()
        return seconds


def measure(name: str, run, repeat: int, server: ServerCpu) -> dict:
    """Best of `repeat`: wall seconds, CPU seconds of the check (this process's, or the jobs' summed as
    they report it) and of its PostgreSQL backends, events walked."""
    best = None
    for _ in range(repeat):
        server.start()
        cpu, wall = time.process_time(), time.perf_counter()
        events, problems, jobs_cpu = run()
        result = {"name": name, "wall": time.perf_counter() - wall,
                  "cpu": jobs_cpu if jobs_cpu is not None else time.process_time() - cpu, "events": events,
                  "problems": problems}
        result["server"] = server.stop()
        if best is None or result["wall"] < best["wall"]:
            best = result
    if best["problems"]:
        raise SystemExit(f"{name}: {best['problems']} problem(s) in an intact store: the bench is wrong")
    events = max(best["events"], 1)
    server = "" if best["server"] is None else f" + PostgreSQL {best['server'] / events * 1e6:6.1f}"
    print(f"{name:52s} {best['events']:>9,} events {best['wall']:7.2f} s wall "
          f"{best['events'] / best['wall']:>9,.0f} events/s   CPU {best['cpu'] / events * 1e6:6.1f}{server} µs/event "
          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_ledger_verify")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--day", type=int, default=1000, help="events (on as many numbers) after the checkpoint")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true", help="today's code only (the baseline is slow)")
    parser.add_argument("--evidence-as-given", action="store_true",
                        help="store the evidence as the webhook did before it sorted the keys (not canonical)")
    args = parser.parse_args()
    db = empty_store(args.database_url)
    server = ServerCpu(db)
    started = time.perf_counter()
    heads = build(db, ROOT / "config" / "programs.example.toml", args.events, as_given=args.evidence_as_given)
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
        results.append(measure("before: full, with replay (1 process)", old(True), args.repeat, server))
        results.append(measure("before: full, chains only (1 process)", old(False), args.repeat, server))
    for jobs in (1, 2):
        results.append(measure(f"now: full, with replay, --jobs {jobs}", new(jobs), args.repeat, server))
        results.append(measure(f"now: full, chains only, --jobs {jobs}", new(jobs, replay=False), args.repeat, server))

    log_dir = Path(tempfile.mkdtemp(prefix="bench-ledger-checkpoints-"))
    log, signer = checkpoints.CheckpointLog(log_dir, ""), checkpoints.Signer(bytes(range(32)))
    log.public_key = signer.public_key
    with db.shared_snapshot() as (session, _):
        checkpoints.take(session, log, signer)
    a_day(db, heads, args.day, as_given=args.evidence_as_given)
    checkpoint, problems = log.newest()
    assert checkpoint is not None and not problems
    if not args.skip_baseline:
        results.append(measure("before: full after a day, with checkpoint", old(True), args.repeat, server))
    results.append(measure("now: full after a day, with checkpoint, --jobs 2",
                           new(2, checkpoint=checkpoint), args.repeat, server))
    for jobs in (1, 2):
        results.append(measure(f"now: --since-checkpoint after a day, --jobs {jobs}",
                               new(jobs, checkpoint=checkpoint, since=True), args.repeat, server))

    def rebuild(function):
        def run():
            with db.transaction() as session:
                count = function(session)
            return count, 0, None
        return run

    results.append(measure("rebuild (consents written)", rebuild(consents.rebuild), 1, server))
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
