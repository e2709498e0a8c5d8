"""Consent import: rows per second of the bulk import against the row-at-a-time one, on PostgreSQL.

Generates CSV files of consent rows, every row distinct (its own number, or the same number's second
program; its own evidence), with the mix a CRM export has: mostly opt-ins, some opt-outs, a few
percent of rows refused (numbers that are not numbers, unknown programs, bad statuses, a second
opt-in of a live consent), and numbers in Virginia, where an opt-out binds for ten years. Then, on a
fresh store each time:

- baseline: the row-at-a-time import (bench/legacy_import.py, as the gateway did before issue 18) at
  a size it can do (`--baseline`, default 5,000 rows);
- bulk: `services.imports` as `smsgate consent import` runs it, at each of `--sizes`.

Prints rows/s (wall clock); the CPU seconds of this process and of the screening processes (with
`--jobs` above 1 they are the children of multiprocessing's fork server, which collects them as they
end: its children's time is read from /proc); the CPU seconds of the PostgreSQL backends that served
the run (read from /proc, so the server must run on this machine); their sum per row (the whole cost
of a row, the figure a busy machine disturbs least; the server's own background processes, WAL
writer and checkpointer, are not in it); and checks that every row was applied or refused as
generated. `--verify` also runs `ledger verify` over the result (slow: 10,000 events/s).

    .venv/bin/python bench/import.py [--sizes 100000,1000000] [--baseline 5000] [--jobs 2]

Recreates the database named by --database-url (default postgresql://postgres@127.0.0.1/bench_import).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import sys
import tempfile
import time
from multiprocessing import forkserver
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.legacy_import import import_csv  # noqa: E402
from bench.support import empty_store  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.domain.programs import load_file  # noqa: E402
from gateway.domain.quiet_hours import default_rules  # noqa: E402
from gateway.services import imports  # noqa: E402
from gateway.store import programs  # noqa: E402
from gateway.store.database import Database  # noqa: E402

# Area codes across the US, Virginia's (703, 804) among them.
AREA_CODES = ("212", "305", "312", "405", "410", "415", "503", "602", "703", "713", "804", "617", "850", "206")


def number(index: int) -> str:
    return f"+1{AREA_CODES[index % len(AREA_CODES)]}{2_000_000 + index // len(AREA_CODES):07d}"


def generate(path: Path, rows: int) -> int:
    """Write `rows` rows; return how many the import must refuse."""
    refused = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("phone", "program", "status", "collected_at", "source_url", "ip"))
        for i in range(rows):
            phone, program, status = number(i), "deals", "opted_in"
            kind = i % 100
            if kind == 0:
                phone, refused = f"555-01{i % 100:02d} x{i}", refused + 1  # not a number
            elif kind == 1:
                program, refused = "newsletter", refused + 1  # no such program
            elif kind == 2:
                status, refused = "subscribed", refused + 1
            elif kind == 3 and i >= 100:
                phone, refused = number(i - 10), refused + 1  # opted in to deals 10 rows before: a repeat
            elif kind in (4, 5) and i >= 100:
                phone, program = number(i - 20), "alerts"  # opted in to deals 20 rows before: a second program
            elif 10 <= kind < 16:
                status = "opted_out"
            writer.writerow((phone, program, status, f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}T10:{i % 60:02d}:00Z",
                             f"https://acme.example/join?ref={i}", f"198.51.{i // 256 % 256}.{i % 256}"))
    return refused


def fresh_store(url: str, settings) -> Database:
    database = empty_store(settings.database_url)
    with database.transaction() as session:
        programs.store(session, load_file(settings.programs_file))
    with database.engine.begin() as connection:
        connection.execute(text("CHECKPOINT"))
    return database


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + screening_cpu()


def screening_cpu() -> float:
    """CPU seconds of the screening processes that have ended (`--jobs` above 1): children of the fork
    server (started with the first pool), which waits for each as it ends. A pool's processes have
    ended when the import returns (it shuts its pool down)."""
    pid = forkserver._forkserver._forkserver_pid
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def server_cpu(database: Database) -> float:
    """CPU seconds the PostgreSQL backends serving this database have used (the pool keeps its
    connections for the whole run, so read just before disposing it). Needs the server on this machine."""
    name = urlsplit(database.url).path.lstrip("/")
    with database.engine.connect() as connection:
        pids = connection.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = :name"), {"name": name})
        pids = [pid for (pid,) in pids]
    ticks = os.sysconf("SC_CLK_TCK")
    used = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used += (int(fields[11]) + int(fields[12])) / ticks
    return used


def run_baseline(database: Database, path: Path, settings) -> tuple[float, float, int, int]:
    started, cpu_started = time.perf_counter(), cpu()
    with database.transaction() as session, path.open(encoding="utf-8", newline="") as handle:
        report = import_csv(session, handle, region="US", actor="bench", suppression_key=settings.suppression_key,
                            rules=default_rules())
    return (time.perf_counter() - started, cpu() - cpu_started, sum(report.applied.values()), len(report.refused))


def run_bulk(database: Database, path: Path, settings, jobs: int) -> tuple[float, float, int, int]:
    started, cpu_started = time.perf_counter(), cpu()
    facts = imports.read_facts(path)
    found, _ = imports.begin(database, digest=facts.digest, name=path.name, actor="bench", total_lines=facts.lines)
    with path.open(encoding="utf-8", newline="") as handle:
        outcome = imports.run(database, found.id, handle, region="US", suppression_key=settings.suppression_key,
                              rules=default_rules(), jobs=jobs)
    return time.perf_counter() - started, cpu() - cpu_started, outcome.applied, outcome.refused


def verify(database: Database) -> tuple[int, float]:
    from gateway.store import ledger

    started = time.perf_counter()
    with database.snapshot() as session:
        breaks = sum(1 for _ in ledger.verify(session))
    return breaks, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_import")
    parser.add_argument("--sizes", default="100000,1000000", help="rows of each bulk run, comma-separated")
    parser.add_argument("--baseline", type=int, default=5_000, help="rows of the row-at-a-time run (0: none)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--verify", action="store_true", help="ledger verify after each bulk run")
    args = parser.parse_args()
    settings = load_settings(env={"DATABASE_URL": args.database_url, "SUPPRESSION_KEY": "bench-" + "k" * 40,
                                  "VAR_DIR": str(ROOT / "var" / "bench"), "SANDBOX": "off",
                                  "TWILIO_AUTH_TOKEN": "bench", "TWILIO_ACCOUNT_SID": "AC" + "2" * 32})
    runs = ([("row at a time", args.baseline)] if args.baseline else []) + [
        ("bulk", int(size)) for size in args.sizes.split(",")]
    print(f"{'path':<14} {'rows':>9} {'seconds':>8} {'rows/s':>8} {'CPU s':>7} {'PG CPU s':>8} {'µs CPU/row':>10} "
          f"{'imported':>9} {'refused':>8}  check")
    failed = False
    expected: dict[int, int] = {}  # rows -> refusals
    with tempfile.TemporaryDirectory() as scratch:
        for name, rows in runs:
            path = Path(scratch) / f"consents-{rows}.csv"
            if rows not in expected:
                expected[rows] = generate(path, rows)
            expected_refused = expected[rows]
            database = fresh_store(args.database_url, settings)
            try:
                if name == "bulk":
                    seconds, used, applied, refused = run_bulk(database, path, settings, args.jobs)
                else:
                    seconds, used, applied, refused = run_baseline(database, path, settings)
                check = "ok" if (applied + refused, refused) == (rows, expected_refused) else \
                    f"EXPECTED {rows - expected_refused} imported, {expected_refused} refused"
                failed |= check != "ok"
                if args.verify and name == "bulk":
                    breaks, verify_seconds = verify(database)
                    check += f"; verify {breaks} breaks in {verify_seconds:.0f} s"
                    failed |= breaks > 0
                server = server_cpu(database)
                print(f"{name:<14} {rows:>9,} {seconds:>8.1f} {rows / seconds:>8,.0f} {used:>7.1f} {server:>8.1f} "
                      f"{(used + server) / rows * 1e6:>10,.0f} {applied:>9,} {refused:>8,}  {check}", flush=True)
            finally:
                database.dispose()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
