"""The inbound webhook counted in instructions: the gateway's and the baseline's WSGI apps in-process,
under valgrind's callgrind, per text of each kind.

bench/inbound_webhook.py measures what the target is set on, requests per second under load, but on a
machine whose speed moves from one second to the next its rounds scatter by twenty points and more.
Callgrind counts the instructions this process executes (Python, Flask, SQLAlchemy, psycopg; not
PostgreSQL's, not the kernel's): the same run repeated differs by 0.2%, so a change's effect on the
Python side of a text can be told from noise, path by path.

    .venv/bin/python bench/inbound_instructions.py [--texts 240] [--only STOP --only YES] [--cache]

Each count runs in a process of its own, two at a time, over a database of its own
(bench_instructions_<name>, recreated). The gateway's numbers are first brought to their place in the
cycle of texts, as the webhook benchmark does, then each texts once more (a warm-up: imports, caches,
prepared statements); for one kind, each number then sends what that kind needs before it (a STOP
before START, a STOP and a join before YES), and only then is counting switched on
(`callgrind_control`) for `--texts` texts, one from each number. The baseline (signature, INSERT,
UPDATE) is counted on the mix. Figures are instructions per text.

Needs valgrind (apt-get install -y valgrind) and a PostgreSQL server. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.inbound_webhook import (  # noqa: E402
    BEFORE,
    CYCLE,
    KINDS,
    PATH,
    PUBLIC_BASE_URL,
    _environment,
    _prepare_database,
    _signed,
    kind_of,
)
from gateway.config import load_settings  # noqa: E402

SERVER = "postgresql://postgres@127.0.0.1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=240, help="texts counted per path (one per number)")
    parser.add_argument("--only", choices=CYCLE, action="append", help="this kind only (may be repeated)")
    parser.add_argument("--cache", action="store_true",
                        help="also simulate the caches (a 1 MB last level, as one core's L2 here): misses per text")
    parser.add_argument("--child", nargs=2, metavar=("APP", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _count(*args.child, texts=args.texts)
    runs = [("baseline", "mix"), ("gateway", "mix")] + [("gateway", kind) for kind in args.only or CYCLE]
    # Stores made one after another (Alembic's context is the process's), then counted two at a time.
    prepared = [_prepared(app, kind, texts=args.texts) for app, kind in runs]
    with ThreadPoolExecutor(2) as pool:
        per_text = pool.map(lambda run, store: _under_callgrind(run, store, texts=args.texts, cache=args.cache),
                            runs, prepared)
        counted = dict(zip(runs, per_text))
    baseline, baseline_misses = counted["baseline", "mix"]
    print(f"instructions per text (callgrind, {args.texts} texts each; the baseline on the mix)")
    misses = f"   last-level misses {baseline_misses / 1e3:5.1f} k" if args.cache else ""
    print(f"  baseline (signature + INSERT + UPDATE)  {baseline / 1e6:6.2f} M{misses}")
    for (app, kind), (instructions, missed) in counted.items():
        if app == "gateway":
            misses = f"   last-level misses {missed / 1e3:5.1f} k" if args.cache else ""
            print(f"  gateway  {kind:30s} {instructions / 1e6:6.2f} M   baseline / gateway"
                  f" {baseline / instructions:.0%}{misses}")
    return 0


def _prepared(app: str, kind: str, *, texts: int) -> tuple[Path, dict[str, str]]:
    """A fresh store for one count (outside callgrind: it is not what is counted) and its environment."""
    url = f"{SERVER}/bench_instructions_{app}_{kind.lower()}"
    work = Path(tempfile.mkdtemp(prefix="bench-instructions-"))
    env = _environment(url, work)
    _prepare_database(url, load_settings(env=env), texts)
    return work, env


# The cache simulation's sizes: one core's L2 on the machines measured (1 MB), their 32 kB first level.
# A text's working set beyond that goes to L3 or memory, and the misses counted per text are roughly
# what a text costs above its instructions when other processes share the core (bench/README.md).
_CACHES = ["--cache-sim=yes", "--LL=1048576,16,64", "--D1=32768,8,64", "--I1=32768,8,64"]


def _under_callgrind(run: tuple[str, str], prepared: tuple[Path, dict[str, str]], *, texts: int,
                     cache: bool = False) -> tuple[float, float]:
    """Instructions per text, and last-level cache misses per text (0 without `cache`)."""
    (app, kind), (work, env) = run, prepared
    report = work / "valgrind.log"
    with open(work / "app.log", "wb") as app_log:  # the gateway's log lines, as gunicorn's would go to a file
        subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={work / 'callgrind.out'}",
             *(_CACHES if cache else []), f"--log-file={report}", sys.executable, __file__, "--child", app, kind,
             "--texts", str(texts)],
            cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=app_log)
    log = report.read_text()
    collected = re.search(r"Collected : (\d+)", log)
    missed = re.search(r"LL misses:\s+([\d,]+)", log)
    shutil.rmtree(work, ignore_errors=True)
    return int(collected.group(1)) / texts, int(missed.group(1).replace(",", "")) / texts if missed else 0.0


def _count(app: str, kind: str, *, texts: int) -> int:
    """In the process callgrind runs: prime, warm up, then count `texts` texts of `kind`."""
    from werkzeug.test import EnvironBuilder

    if app == "gateway":
        from gateway.web.app import create_app
    else:
        from bench.baseline_app import create_app
    wsgi = create_app()
    sids = iter(range(1 << 40, 1 << 41))  # the counted texts take 0..texts-1

    def request(index: int, number: int, kind_: str) -> dict:
        signature, params = _signed(index, number, KINDS[kind_])
        return EnvironBuilder(path=PATH, method="POST", base_url=PUBLIC_BASE_URL, data=params,
                              headers={"X-Twilio-Signature": signature}).get_environ()

    def send(environ: dict) -> None:
        answered = []
        body = b"".join(wsgi(environ, lambda status, headers, exc_info=None: answered.append(status)))
        if not answered[0].startswith("200"):
            raise RuntimeError(f"{answered[0]}: {body[:300]!r}")

    numbers = range(texts)
    if app == "gateway":
        for number in numbers:  # each number to its place in the cycle, then its next text
            for before in CYCLE[:number % len(CYCLE)] + (kind_of(number, texts)[1],):
                send(request(next(sids), number, before))
        for number in numbers:
            for before in BEFORE.get(kind, ()) if kind != "mix" else ():
                send(request(next(sids), number, before))
    else:
        for number in numbers:
            send(request(next(sids), number, kind_of(number, texts)[1]))
    counted = [request(index, *kind_of(index + texts, texts, None if kind == "mix" else kind))
               for index in range(texts)]
    subprocess.run(["callgrind_control", "--instr=on", str(os.getpid())], check=True, capture_output=True)
    for environ in counted:
        send(environ)
    subprocess.run(["callgrind_control", "--instr=off", str(os.getpid())], check=True, capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
