"""Instructions a simserve run executes, counted by valgrind's callgrind: a measure of the engine's cost that repeats
to about 0.2% whatever else the machine is doing, where CPU seconds on a shared machine can move by 25% between two
runs of the same code (docs/performance.md, "Fewer Python frames per event").

Each checkout in --root (default: this one) runs the scenario once under `valgrind --tool=callgrind` in a fresh
interpreter (`import simserve`, load the scenario with its overrides, `simserve.run`), and once more with
--base-requests requests, whose count stands for importing and parsing; the difference is the run's. valgrind runs
the process about 50 times slower: 5,000 requests of BLIS's workload take about 2.5 minutes.

    python bench/count_instructions.py --scenario bench/blis/blis-speed.yaml --requests 5000 --root ../before .
    python bench/count_instructions.py --scenario scenarios/quickstart.yaml --set workload.arrival.rate_per_s=1.2 \
        --requests 4000 --root ../before .                          # the light load
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import sys
import simserve
s = simserve.load_scenario(sys.argv[1], [f"workload.num_requests={sys.argv[2]}", *sys.argv[3:]])
simserve.run(s)
"""


def count(root: Path, scenario: str, requests: int, overrides: list[str]) -> int:
    """Instructions (callgrind's Ir) of one run of the scenario from the checkout at `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                          CHILD, scenario, str(requests), *overrides], cwd=root, env=env, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise SystemExit(f"{root}: the run failed:\n{out.stderr[-2000:]}")
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise SystemExit(f"{root}: no instruction count in valgrind's output:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="bench/blis/blis-speed.yaml", help="relative to each checkout")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--base-requests", type=int, default=10, help="the run that stands for import and parsing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a scenario override, as `simserve run --set` takes it (repeatable)")
    ap.add_argument("--root", nargs="+", type=Path, default=[ROOT], help="checkouts to compare")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    first: int | None = None
    for root in args.root:
        root = root.resolve()
        whole = count(root, args.scenario, args.requests, args.overrides)
        base = count(root, args.scenario, args.base_requests, args.overrides)
        run = whole - base
        change = "" if first is None else f"  ({(run - first) / first:+.1%} against the first)"
        first = run if first is None else first
        print(f"{root}: {args.requests:,} requests: {whole / 1e6:,.0f} M instructions in all, "
              f"{base / 1e6:,.0f} M for {args.base_requests} (import, parse), {run / 1e6:,.0f} M for the rest"
              f"{change}", flush=True)


if __name__ == "__main__":
    main()
