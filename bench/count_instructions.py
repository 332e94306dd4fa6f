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

With --phases, one process per checkout instead, as a user's (bench_blis's child interpreter, without this
environment's .pth files), split where its time goes: the interpreter's start, `import simserve`, each library simserve
imports (numpy; pydantic with the names simserve's models use and its plugin discovery; PyYAML; SimPy), simserve's
own modules, loading the scenario (pydantic building its validators, the length files read), the run, and the
interpreter's exit. Each boundary is a callgrind client request (CALLGRIND_DUMP_STATS_AT) from a four-line C helper
this script compiles with the system's C compiler against valgrind's callgrind.h; ctypes, which loads it, is counted
in the interpreter's start (numpy imports it anyway). An import is counted where it first happens, so a module two
libraries share is counted with the first.

    python bench/count_instructions.py --phases --requests 1000                  # BLIS's workload, 1k requests
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
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


PHASES_CHILD = r"""
import ctypes, sys
_cg = ctypes.CDLL(sys.argv[1])
def mark(name):
    _cg.cg_dump(name.encode())
mark("interpreter start (and ctypes)")
import simserve
mark("import simserve (the stdlib modules it and later phases use; the compiled engine's check)")
import numpy
mark("numpy")
import pydantic
from pydantic import BaseModel, ConfigDict, Field
mark("pydantic (with the names simserve's models use)")
import pydantic.plugin._loader
list(pydantic.plugin._loader.get_plugins())
mark("pydantic's plugin discovery (importlib.metadata, entry points)")
import yaml
mark("PyYAML")
import simpy
mark("SimPy")
import simserve.scenario, simserve.sim
mark("simserve's modules (classes, pydantic models, presets)")
s = simserve.load_scenario(sys.argv[2], [f"workload.num_requests={sys.argv[3]}", *sys.argv[4:]])
mark("loading the scenario (validators built, length files read)")
r = simserve.run(s)
r.summary
mark("the run (and its summary)")
"""

HELPER_C = """#include <valgrind/callgrind.h>
void cg_dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""


def phases(root: Path, scenario: str, requests: int, overrides: list[str]) -> list[tuple[str, int]]:
    """(phase, instructions) for one user's process of the scenario from the checkout at `root`."""
    from bench_blis import byte_compile, user_env, user_python  # the BLIS bench's child interpreter and environment

    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise SystemExit("--phases needs a C compiler (cc) for its callgrind helper")
    with tempfile.TemporaryDirectory(prefix="simserve-phases-") as tmp:
        helper = Path(tmp, "libcgmark.so")
        Path(tmp, "cgmark.c").write_text(HELPER_C)
        built = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(helper), str(Path(tmp, "cgmark.c"))],
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"could not build the callgrind helper (valgrind's headers?):\n{built.stderr}")
        byte_compile(root)
        out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out.%p",
                              user_python(), "-c", PHASES_CHILD, str(helper), scenario, str(requests), *overrides],
                             cwd=root, env=user_env(root), capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"{root}: the run failed:\n{out.stderr[-2000:]}")
        found: list[tuple[int, str, int]] = []
        for f in Path(tmp).glob("cg.out.*"):
            text = f.read_text(errors="replace")
            part = re.search(r"^part: (\d+)", text, re.M)
            trigger = re.search(r"^desc: Trigger: (.*)$", text, re.M)
            total = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
            if trigger is None or total is None:
                continue
            name = trigger.group(1).removeprefix("Client Request: ")
            if name == "Program termination":
                name = "the interpreter's exit (its final collections, modules torn down)"
            found.append((int(part.group(1)) if part else 10**6, name, int(total.group(1))))
    return [(name, n) for _, name, n in sorted(found)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="bench/blis/blis-speed.yaml", help="relative to each checkout")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--base-requests", type=int, default=10, help="the run that stands for import and parsing")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a scenario override, as `simserve run --set` takes it (repeatable)")
    ap.add_argument("--root", nargs="+", type=Path, default=[ROOT], help="checkouts to compare")
    ap.add_argument("--phases", action="store_true", help="one user's process, split by phase (see above)")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    if args.phases:
        for root in args.root:
            parts = phases(root.resolve(), args.scenario, args.requests, args.overrides)
            total = sum(n for _, n in parts)
            print(f"{root.resolve()}: {args.scenario}, {args.requests:,} requests: {total / 1e6:,.0f} M instructions")
            for name, n in parts:
                print(f"  {n / 1e6:>8,.0f} M  {n / total:6.1%}  {name}")
        return
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
