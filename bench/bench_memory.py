"""Memory benchmark: peak resident memory of one run against its number of requests.

The same scenario (scenarios/quickstart.yaml at a stable arrival rate, --rate) is run at each of --requests, each
in a fresh Python subprocess, so one run's heap never inflates another's. The child runs
`Simulation(scenario, records_dir=...).run()` (records streamed to Parquet in a temporary folder, as
`simserve run` does) and reports:

- peak_rss_mib: the child's peak resident set (VmHWM in /proc/self/status; ru_maxrss where /proc is missing),
- import_rss_mib: its resident set after importing simserve and loading the scenario, before the run,
- wall_s (time.perf_counter around Simulation(...).run()), num_completed, saturated, num_events, and the sizes
  of the two Parquet files.

Records stream to disk, so peak memory should not grow with the number of requests: the issue's target is that
a 1M-request run peaks no higher than 10% above a 100k-request run of the same scenario (--target-ratio).

    python bench/bench_memory.py --requests 100000 1000000 --rate 1.2 --out /tmp/bench_memory.json

Any scenario and overrides: `--scenario PATH` and `--set KEY=VALUE` (repeatable, as `simserve run --set`); `--rate`
applies only when given, or to the default scenario (1.2/s). The trace-reuse scale run of docs/performance.md:

    python bench/bench_memory.py --scenario scenarios/network-effects.yaml --requests 100000 1000000 \
        --set workload.num_users=10000000 ... (the exact command is in docs/performance.md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "quickstart.yaml"


def peak_rss_mib() -> float:
    """This process's peak resident set in MiB: VmHWM, or ru_maxrss (KiB on Linux) without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


REPORTED = ("trace_cache_hit_ratio", "trace_cache_entries", "minted_patterns", "accuracy")  # when present


def child(scenario_path: Path, num_requests: int, rate: float | None, seed: int,
          overrides: list[str]) -> dict[str, Any]:
    """One run, in this (fresh) process."""
    from simserve import Simulation, load_scenario

    rate_set = [] if rate is None else [f"workload.arrival.rate_per_s={rate}"]
    scenario = load_scenario(scenario_path, [f"workload.num_requests={num_requests}", *rate_set, f"seed={seed}",
                                             *overrides])
    import_rss = rss_mib()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        t0, c0 = time.perf_counter(), time.process_time()
        res = Simulation(scenario, scenario.base_dir, records_dir=Path(tmp)).run()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        sizes = {p.name: p.stat().st_size for p in (res.requests_path, res.replicas_path)}
    s = res.summary
    return {
        "num_requests": num_requests, "rate_per_s": rate, "seed": seed, "wall_s": wall, "cpu_s": cpu,
        "peak_rss_mib": peak_rss_mib(), "import_rss_mib": import_rss,
        "num_completed": s["num_completed"], "saturated": s["saturated"], "num_events": s["num_events"],
        "makespan_s": s["makespan_s"], "ttft_s_p99": s["ttft_s_p99"], "goodput": s["goodput"],
        "requests_parquet_bytes": sizes["requests.parquet"], "replicas_parquet_bytes": sizes["replicas.parquet"],
        **{k: s[k] for k in REPORTED if k in s},
    }


def machine_info() -> dict[str, Any]:
    import numpy
    import pandas
    import pyarrow

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform(),
            "python": sys.version.split()[0], "numpy": numpy.__version__, "pandas": pandas.__version__,
            "pyarrow": pyarrow.__version__}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, nargs="+", default=[100_000, 1_000_000],
                   help="run sizes, each in a fresh subprocess (default 100000 1000000); the first is the baseline")
    p.add_argument("--scenario", type=Path, default=SCENARIO, help="the scenario (default scenarios/quickstart.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario value, as `simserve run --set` (repeatable)")
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second (default: 1.2, stable, "
                   "for the default scenario; the scenario's own rate otherwise)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--target-ratio", type=float, default=1.10,
                   help="largest peak RSS allowed, as a multiple of the first size's (default 1.10)")
    p.add_argument("--out", metavar="FILE.json", help="write every figure, and the machine, here")
    p.add_argument("--child", type=int, metavar="N", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    scenario = args.scenario.resolve()
    if args.rate is None and scenario == SCENARIO:
        args.rate = 1.2
    if args.child is not None:
        print(json.dumps(child(scenario, args.child, args.rate, args.seed, args.overrides)))
        return 0

    info = machine_info()
    print(f"# {info['cpu_model']}, nproc {info['nproc']}; Python {info['python']}, numpy {info['numpy']}, "
          f"pandas {info['pandas']}, pyarrow {info['pyarrow']}")
    where = scenario.relative_to(ROOT) if scenario.is_relative_to(ROOT) else scenario
    rate = "its own rate" if args.rate is None else f"{args.rate}/s"
    print(f"# {where} at {rate}, seed {args.seed}, {' '.join(args.overrides) or 'no overrides'}; each size in a "
          "fresh subprocess")
    print(f"{'requests':>10} {'wall_s':>8} {'cpu_s':>8} {'peak_MiB':>9} {'import_MiB':>10} {'completed':>10} "
          f"{'saturated':>9} "
          f"{'events':>10} {'requests.parquet_MB':>19}", flush=True)
    runs = []
    for n in args.requests:
        cmd = [sys.executable, __file__, "--child", str(n), "--scenario", str(scenario), "--seed", str(args.seed),
               *[a for o in args.overrides for a in ("--set", o)]]
        if args.rate is not None:
            cmd += ["--rate", str(args.rate)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["ru_maxrss_children_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        runs.append(r)
        print(f"{n:>10} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_mib']:>9.1f} "
              f"{r['import_rss_mib']:>10.1f} "
              f"{r['num_completed']:>10} {r['saturated']!s:>9} {r['num_events']:>10} "
              f"{r['requests_parquet_bytes'] / 1e6:>19.1f}"
              + "".join(f" {k}={r[k]:.4g}" for k in REPORTED if k in r), flush=True)
    base = runs[0]["peak_rss_mib"]
    worst = max(r["peak_rss_mib"] for r in runs[1:]) if len(runs) > 1 else base
    ratio = worst / base
    ok = ratio <= args.target_ratio and not any(r["saturated"] for r in runs)
    print(f"peak RSS ratio (largest of the others / {args.requests[0]:,} requests): {ratio:.3f} "
          f"(target <= {args.target_ratio}); {'MET' if ok else 'NOT MET'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": info, "argv": sys.argv if argv is None else argv,
                                              "scenario": str(where), "overrides": args.overrides,
                                              "rate_per_s": args.rate,
                                              "runs": runs, "peak_rss_ratio": ratio, "target_met": ok},
                                             indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
