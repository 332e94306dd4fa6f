"""Cost of prefix caching on the engine's speed: the core benchmark (bench_core.py's scenario: 8 x llama-3.1-8b
on H100, mean output ~4,000 tokens) with shared prefixes, run with the prefix cache off and on; sessions open at
2.5/s, about 5 requests/s with their later turns.

The workload gives every request a 1,024-token system prompt, and every arrival opens a multi-turn session
(1-3 turns, 30 s think time), so later turns reuse the previous prompt. Both runs simulate the same requests
(session draws are made when a session opens), so the ratio of wall times is the cost of the cache bookkeeping.
Target (issue 3): within 2x.

    python bench/bench_prefix.py --requests 50000   # about 100k requests
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench_core import scenario_dict

import simserve


def prefix_dict(num_requests: int, rate_per_s: float, caching: bool) -> dict:
    d = scenario_dict(num_requests, rate_per_s)
    d["cluster"]["pools"][0]["prefix_caching"] = caching
    d["workload"]["mix"][0]["system_prompt_tokens"] = 1024
    d["workload"]["sessions"] = {"turns": {"dist": "uniform", "low": 1, "high": 3},
                                 "think_time_s": {"dist": "constant", "value": 30.0}}
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=50_000, help="sessions opened (about two turns each)")
    ap.add_argument("--rate", type=float, default=2.5, help="sessions per second")
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    rows = []
    for caching in (False, True):
        sc = simserve.parse_scenario(prefix_dict(args.requests, args.rate, caching))
        t0 = time.perf_counter()
        s = simserve.run(sc).summary
        wall = time.perf_counter() - t0
        row = {"prefix_caching": caching, "wall_s": round(wall, 2), "num_requests": s["num_requests"],
               "num_events": s["num_events"], "events_per_request": round(s["events_per_request"], 2),
               "prefix_cache_hit_ratio": round(s["prefix_cache_hit_ratio"], 4),
               "ttft_s_mean": round(s["ttft_s_mean"], 4), "num_unfinished": s["num_unfinished"],
               "num_preemptions": s["num_preemptions"]}
        rows.append(row)
        print(json.dumps(row))
    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    print(f"wall-time ratio, cache on / off: {ratio:.2f} (target <= 2)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "ratio": ratio}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
