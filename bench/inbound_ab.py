"""Two versions of the gateway side by side under the inbound webhook benchmark's texts: B (this
checkout) against A (another checkout, `--against`), alternating runs; the figure is B's rate over A's.

bench/inbound_webhook.py measures the gateway against a bare baseline. This one asks whether a change
made the gateway itself faster, with everything else alike: both served by gunicorn with their own
config/gunicorn.conf.py (4 workers), each over a store of its own made by its own code (its
migrations, its programs), both sent the same signed texts by wrk: the mix from `--numbers` numbers,
each starting at its own place in the cycle, or one kind with `--only` (each number sends what that
kind needs before every run, as `inbound_webhook.py --only` does). A warm-up of 3 s each, then
`--rounds` pairs, the order flipping every round.

    git worktree add /tmp/before <revision>
    .venv/bin/python bench/inbound_ab.py --against /tmp/before --duration 5 --rounds 10
    .venv/bin/python bench/inbound_ab.py --against /tmp/before --only STOP --numbers 4000 --rounds 6

Needs wrk and a PostgreSQL server; recreates the databases bench_ab_a and bench_ab_b. The other
checkout runs with this checkout's virtualenv (its code first on the path). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.inbound_webhook import (  # noqa: E402
    BEFORE,
    CYCLE,
    _environment,
    _primer,
    _start_gunicorn,
    _write_requests,
    _wrk,
    measure_rounds,
    stop,
)

SERVER = "postgresql://postgres@127.0.0.1"
PYTHON = ROOT / ".venv" / "bin" / "python"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout (A)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--numbers", type=int, default=1200)
    parser.add_argument("--per-run", type=int, default=12_000, help="distinct requests prepared per run")
    parser.add_argument("--only", choices=CYCLE, help="send only this kind of text (one path)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-inbound-ab-"))
    requests_file = work / "requests.tsv"
    _write_requests(requests_file, args.numbers, (args.rounds + 1) * args.per_run, args.only)
    before_each_run = _primer(args.numbers, lambda number: BEFORE.get(args.only, ()))
    servers: dict[str, dict] = {}
    cursors = {"A": 0, "B": 0}
    try:
        for name, checkout in (("A", args.against.resolve()), ("B", ROOT)):
            servers[name] = _serve(name, checkout, work / name, args.numbers)
            if not args.only:  # each number's texts before its place in the cycle
                _primer(args.numbers, lambda number: CYCLE[:number % len(CYCLE)])(servers[name]["url"])

        def run(name: str, duration: int) -> dict:
            if args.only:
                before_each_run(servers[name]["url"])
            result = _wrk(servers[name], requests_file, cursors[name], args.per_run, duration, args)
            cursors[name] += result["requests"]  # each number's texts stay in order across runs
            return result

        for name in servers:
            run(name, 3)  # imports, pools, prepared statements
        results = measure_rounds(list(servers), args.rounds, lambda name: run(name, args.duration))
    finally:
        stop(servers)
    ratios = [b["rps"] / a["rps"] for a, b in zip(results["A"], results["B"])]
    print()
    print(f"texts: {args.only or 'the mix (' + ', '.join(CYCLE) + ')'}")
    for name, checkout in (("A", args.against), ("B", ROOT)):
        rates = ", ".join(f"{result['rps']:.0f}" for result in results[name])
        print(f"{name} ({checkout}): {rates} req/s")
    print(f"B / A per round: {', '.join(f'{r:.0%}' for r in ratios)}; median {statistics.median(ratios):.1%}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _serve(name: str, checkout: Path, work: Path, numbers: int) -> dict:
    """A store made by `checkout`'s own code, and `checkout`'s gateway serving it under gunicorn."""
    work.mkdir(parents=True)
    env = {**_environment(f"{SERVER}/bench_ab_{name.lower()}", work), "PYTHONPATH": str(checkout)}
    subprocess.run([str(PYTHON), "-c", "from bench.inbound_webhook import _prepare_database; "
                    "from gateway.config import load_settings; import os; "
                    f"_prepare_database(os.environ['DATABASE_URL'], load_settings(), {numbers})"],
                   cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    return _start_gunicorn(name, "gateway.web.app:create_app()", env, work, checkout)


if __name__ == "__main__":
    sys.exit(main())
