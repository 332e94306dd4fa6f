"""Speed of the answer-quality levers: events per request and wall time with parallel sampling and early exit.

Runs bench_core's reasoning cluster (8 x llama-3.1-8b on H100, roofline perf, --rate requests/s, outputs of 4,000
tokens on average) four ways on the same traffic: quality off, quality on with n = 1, n = 4 with a plurality vote
and early exit (a probe every --probe-every tokens), and n = 4 with first_finished (m = 1; the other three samples
are stopped). Simulated events must grow with requests, not with tokens: the target is n = 4 with early exit
within 2x the events per request of n = 1 (docs/performance.md records the figures).

    python bench/bench_quality.py --requests 100000 --rate 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_core  # noqa: E402

import simserve  # noqa: E402

VARIANTS: dict[str, dict[str, Any]] = {
    "quality off": {},
    "n=1": {"quality": {}},
    "n=4 majority + early exit": {"quality": {}, "parallel": {"n": 4, "aggregate": "majority"},
                                  "early_exit": {"probe_every_tokens": 0}},
    "n=4 first_finished m=1": {"quality": {}, "parallel": {"n": 4, "aggregate": "first_finished", "m": 1}},
}


def scenario(num_requests: int, rate: float, levers: dict[str, Any], probe_every: int) -> dict[str, Any]:
    data = bench_core.scenario_dict(num_requests, rate)
    entry = data["workload"]["mix"][0]
    for key, value in levers.items():
        entry[key] = dict(value)
    if "early_exit" in entry:
        entry["early_exit"]["probe_every_tokens"] = probe_every
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=100000)
    p.add_argument("--rate", type=float, default=2.0, help="arrivals per second (default 2: n = 4 keeps up)")
    p.add_argument("--probe-every", type=int, default=500, help="early exit: tokens between probes")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    args = p.parse_args(argv)
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    print(f"{args.requests:,} requests at {args.rate} req/s on 8 x llama-3.1-8b / H100 (roofline); "
          f"python {sys.version.split()[0]}")
    print(f"{'variant':<28} {'wall s':>8} {'events':>10} {'events/req':>10} {'accuracy':>9} {'tokens':>14} "
          f"{'saturated':>9}")
    base = None
    for name in args.variants:
        data = scenario(args.requests, args.rate, VARIANTS[name], args.probe_every)
        sc = simserve.parse_scenario(data, source="bench")
        t0 = time.perf_counter()
        s = simserve.run(sc).summary
        wall = time.perf_counter() - t0
        per = s["num_events"] / s["num_requests"]
        if name == "n=1":
            base = per
        ratio = f"  ({per / base:.2f}x n=1)" if base and name != "n=1" and name != "quality off" else ""
        print(f"{name:<28} {wall:>8.2f} {s['num_events']:>10,} {per:>10.2f} "
              f"{s.get('accuracy', float('nan')):>9.3f} {s['output_tokens']:>14,} {s['saturated']!s:>9}{ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
