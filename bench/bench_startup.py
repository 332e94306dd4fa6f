"""Start-up: CPU seconds of `import simserve` plus loading a scenario, in fresh interpreters, as a user pays it.

Each run is a new `python -c` child, in bench_blis's `user_python()` (as a `pip install .` user's Python, without
this environment's .pth files), that measures `time.process_time()` around `import simserve` and
`simserve.load_scenario(...)` (the interpreter's own start, about 0.02 s, is not counted; a scenario's run is not
either). The checkout's modules are byte-compiled first, as `pip install .` compiles an installed copy. With several
--root checkouts the runs alternate between them, so a machine whose speed drifts hurts each alike.

    python bench/bench_startup.py --runs 21
    python bench/bench_startup.py --runs 21 --root . ../before     # before and after, alternating
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench_blis import byte_compile, user_env, user_python  # the BLIS bench's child interpreter and environment

ROOT = Path(__file__).resolve().parent.parent
CHILD = ("import time\nt = time.process_time()\nimport simserve\nsimserve.load_scenario({path!r})\n"
         "print(time.process_time() - t)")


def startup_cpu_s(root: Path, scenario: Path) -> float:
    out = subprocess.run([user_python(), "-c", CHILD.format(path=str(scenario.resolve()))], cwd=root,
                         env=user_env(root), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--root", type=Path, nargs="+", default=[ROOT])
    ap.add_argument("--scenario", type=Path, default=ROOT / "bench" / "blis" / "blis-speed.yaml")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    roots = [r.resolve() for r in args.root]
    for root in roots:
        byte_compile(root)
        startup_cpu_s(root, args.scenario)  # warm the file cache
    times: dict[str, list[float]] = {str(r): [] for r in roots}
    load = os.getloadavg()[0]
    for _ in range(args.runs):
        for root in roots:
            times[str(root)].append(startup_cpu_s(root, args.scenario))
    for root, xs in times.items():
        xs.sort()
        print(f"{root}: median {statistics.median(xs):.3f} s CPU, min {xs[0]:.3f}, max {xs[-1]:.3f} "
              f"({len(xs)} runs; load average {load:.2f} -> {os.getloadavg()[0]:.2f})")
    if args.out:
        args.out.write_text(json.dumps(times, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
