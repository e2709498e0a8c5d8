"""CPU time of one inbound text in-process, by kind: `inbound.handle` called directly, no HTTP.

The webhook benchmark (bench/inbound_webhook.py) measures throughput from outside, which moves with
whatever else the machine runs; the process CPU time of the handler itself moves much less. For each
kind of text (the kinds and the texts before them that make it do real work, as in the webhook
benchmark) every number texts it once, after its preceding texts (not timed); the figure is the
process CPU time (this process: Python, SQLAlchemy, psycopg), the CPU time of the PostgreSQL backends
serving the benchmark's database (read from /proc, so the server must run on this machine; 10 ms
ticks, so pass enough --numbers), their sum, and the wall time per text, best of --repeat (by the
sum).

    .venv/bin/python bench/inbound_cpu.py [--numbers 1000] [--repeat 5] [--only YES]

Needs a PostgreSQL server; it recreates the database named by --database-url (default
postgresql://postgres@127.0.0.1/bench_inbound_cpu). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

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
    if os.environ.get("EXTRA_SQL"):
        with psycopg.connect(args.database_url, autocommit=True) as c:
            c.execute(os.environ["EXTRA_SQL"])
    gateway = create_app(settings).extensions["gateway"]
    logging.getLogger("gateway").setLevel(logging.WARNING)
    sids = itertools.count(1)

    def text(number: int, kind: str) -> None:
        inbound.handle(gateway, inbound.InboundText(f"SM{next(sids):032x}", _number(number), SENDER, KINDS[kind]))

    server = _Backends(args.database_url)
    for kind in args.only or CYCLE:
        runs = []
        for _ in range(args.repeat):
            for before in BEFORE.get(kind, ()):
                for number in range(args.numbers):
                    text(number, before)
            started_server = server.cpu()
            started_cpu, started_wall = time.process_time(), time.perf_counter()
            for number in range(args.numbers):
                text(number, kind)
            app, wall = time.process_time() - started_cpu, time.perf_counter() - started_wall
            runs.append(tuple(value / args.numbers * 1e6 for value in (app, server.cpu(since=started_server), wall)))
        app, backend, wall = min(runs, key=lambda run: run[0] + run[1])
        print(f"{kind:6s} CPU app {app:6.0f} + server {backend:5.0f} = {app + backend:6.0f} µs  wall {wall:6.0f} µs"
              f" per text  (best of {args.repeat} by the sum; app+server per run:"
              f" {', '.join(f'{a:.0f}+{b:.0f}' for a, b, _ in runs)})", flush=True)
    server.close()
    gateway.db.dispose()
    return 0


class _Backends:
    """CPU time of the PostgreSQL backends connected to the benchmark's database, from /proc."""

    _TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, database_url: str):
        parts = urlsplit(database_url)
        self.name = parts.path.lstrip("/")
        self.admin = psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True)

    def cpu(self, since: dict[int, float] | None = None):
        """Seconds of CPU by backend pid; with `since`, the seconds spent after it (a new backend: all of its)."""
        pids = [pid for (pid,) in self.admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND backend_type = %s", (self.name, "client backend"))]
        now = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue  # ended between the query and the read
            now[pid] = (int(fields[11]) + int(fields[12])) / self._TICK  # utime, stime
        if since is None:
            return now
        return sum(seconds - since.get(pid, 0.0) for pid, seconds in now.items())

    def close(self) -> None:
        self.admin.close()


if __name__ == "__main__":
    sys.exit(main())
