"""CPU time of one inbound text in-process, by kind: `inbound.handle` called directly, no HTTP.

The webhook benchmark (bench/inbound_webhook.py) measures throughput from outside, which moves with
whatever else the machine runs; the process CPU time of the handler itself moves much less. For each
kind of text (the kinds and the texts before them that make it do real work, as in the webhook
benchmark) every number texts it once, after its preceding texts (not timed); the figure is the
process CPU time (this process: Python, SQLAlchemy, psycopg, not the server's) and the wall time per
text, best of --repeat.

    .venv/bin/python bench/inbound_cpu.py [--numbers 1000] [--repeat 5] [--only YES]

Needs a PostgreSQL server; it recreates the database named by --database-url (default
postgresql://postgres@127.0.0.1/bench_inbound_cpu). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.inbound_webhook import BEFORE, CYCLE, KINDS, SENDER, _environment, _number, _prepare_database  # noqa: E402
from gateway.config import load_settings  # noqa: E402
from gateway.services import inbound  # noqa: E402
from gateway.web.app import create_app  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1/bench_inbound_cpu")
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=CYCLE, action="append", help="this kind only (may be repeated)")
    args = parser.parse_args()
    env = _environment(args.database_url, Path(tempfile.mkdtemp(prefix="bench-inbound-cpu-")))
    env["LOG_LEVEL"] = "WARNING"
    settings = load_settings(env=env)
    _prepare_database(args.database_url, settings, args.numbers)
    gateway = create_app(settings).extensions["gateway"]
    logging.getLogger("gateway").setLevel(logging.WARNING)
    sids = itertools.count(1)

    def text(number: int, kind: str) -> None:
        inbound.handle(gateway, inbound.InboundText(f"SM{next(sids):032x}", _number(number), SENDER, KINDS[kind]))

    for kind in args.only or CYCLE:
        cpu, wall = [], []
        for _ in range(args.repeat):
            for before in BEFORE.get(kind, ()):
                for number in range(args.numbers):
                    text(number, before)
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            for number in range(args.numbers):
                text(number, kind)
            cpu.append((time.process_time() - started_cpu) / args.numbers * 1e6)
            wall.append((time.perf_counter() - started_wall) / args.numbers * 1e6)
        print(f"{kind:6s} CPU {min(cpu):6.0f} µs  wall {min(wall):6.0f} µs per text"
              f"  (best of {args.repeat}; CPU per run: {', '.join(f'{value:.0f}' for value in cpu)})", flush=True)
    gateway.db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
