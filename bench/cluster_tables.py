"""Reproduce the Mooncake tables of docs/cluster.md: prefix-cache hit ratio against cache size, and routers
compared on the full trace.

    python bench/cluster_tables.py ../shared/data/mooncake-conversation/conversation_trace.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import simserve

FAST_LINEAR = {"kind": "linear", "step_overhead_s": 0.001, "per_prefill_token_s": 1e-6, "per_decode_seq_s": 1e-5}
ROUTERS = ["round_robin", "random", "least_kv", "least_outstanding", "power_of_two", "prefix_affinity"]


def trace_scenario(path: Path, pools: list[dict], router: str = "round_robin", perf: dict | None = None):
    return simserve.parse_scenario({
        "name": "mooncake", "seed": 1, "model": "llama-3.1-8b", "router": router,
        "cluster": {"pools": pools}, "perf": perf or {"kind": "roofline"},
        "workload": {"trace": {"format": "mooncake", "path": str(path.resolve())}},
    })


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args()
    print("| KV blocks | prefix_cache_hit_ratio |")
    for blocks in (20_000_000, 2_000_000, 200_000, 50_000, 20_000):
        pools = [{"replicas": 1, "num_kv_blocks": blocks}]
        s = simserve.run(trace_scenario(args.trace, pools, perf=FAST_LINEAR)).summary
        print(f"| {blocks:,} | {s['prefix_cache_hit_ratio']:.4f} |")
    print("\n| router | hit ratio | TTFT mean | TTFT p50 | TTFT p99 | e2e mean | preemptions |")
    for router in ROUTERS:
        pools = [{"gpu": "h100-sxm", "replicas": args.replicas, "max_num_seqs": 256, "max_num_batched_tokens": 8192}]
        s = simserve.run(trace_scenario(args.trace, pools, router)).summary
        print(f"| {router} | {s['prefix_cache_hit_ratio']:.3f} | {s['ttft_s_mean']:.2f} | {s['ttft_s_p50']:.2f} | "
              f"{s['ttft_s_p99']:.2f} | {s['e2e_s_mean']:.2f} | {s['num_preemptions']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
