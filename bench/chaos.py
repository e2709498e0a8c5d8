"""Faults with real processes at a larger scale: the scenarios of tests/e2e/test_faults.py with more
numbers and messages (--scale) and more kills (--kills), printing what each counted and how long
recovery took.

    .venv/bin/python bench/chaos.py --database postgresql://postgres@127.0.0.1:5432/smsgate_bench \\
        --redis redis://127.0.0.1:6379/5 --scale 5 --kills 3

Each scenario is one run of its test (pytest, -s), so the counts are the test's own and a run that
lost something fails its assertion and says so. The database's public schema is dropped and
recreated (as the test session does): name one that holds nothing of value. The Redis database
given holds the limiter's counts and, at the next index, the session's broker; each scenario starts
a `redis-server` of its own on a free port as the broker it kills. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {
    "web killed under STOPs": "the_web_process_killed",
    "worker killed mid-batch": "a_worker_killed_mid_batch",
    "broker killed and restarted": "the_broker_killed",
    "two web and two workers": "two_web_and_two_worker",
    "connections killed mid-transaction": "connections_killed_mid_transaction",
}
# What each test prints: a line that starts with one of these.
COUNTS = re.compile(r"^(web SIGKILLed|worker SIGKILLed|broker killed|\d+ numbers, 5 sends|connections ended).*$",
                    re.MULTILINE)


def run(name: str, selector: str, environment: dict[str, str]) -> bool:
    started = time.monotonic()
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", "-k", selector,
         "tests/e2e/test_faults.py"], cwd=ROOT, env=environment, capture_output=True, text=True)
    took = time.monotonic() - started
    counts = [found.group(0) for found in COUNTS.finditer(finished.stdout)]
    print(f"{name} ({'passed' if finished.returncode == 0 else 'FAILED'}, {took:.0f} s with start-up)")
    for line in counts:
        print(f"  {line}")
    if finished.returncode != 0 or not counts:
        quiet = [line for line in finished.stdout.splitlines() if not re.search(r" (INFO|WARNING) ", line)]
        print("\n".join(quiet)[-4000:])
    return finished.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="a PostgreSQL URL whose schema may be dropped")
    parser.add_argument("--redis", required=True, help="a Redis URL with a database index, e.g. redis://…/5")
    parser.add_argument("--scale", type=int, default=5, help="numbers and messages, times the test's")
    parser.add_argument("--kills", type=int, default=3, help="how many times each process is killed")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    arguments = parser.parse_args()
    environment = {**os.environ, "TEST_DATABASE_URL": arguments.database, "REDIS_URL": arguments.redis,
                   "CHAOS_SCALE": str(arguments.scale), "CHAOS_KILLS": str(arguments.kills)}
    print(f"scale {arguments.scale}, kills {arguments.kills}")
    results = [run(name, SCENARIOS[name], environment) for name in arguments.only or SCENARIOS]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
