"""Reproduce the tables of docs/cluster.md and print their markdown exactly as the page has it (tests/test_docs.py
checks that the page still says what this prints): the heterogeneous and disaggregated scenarios (about 6 s) and,
given the Mooncake trace, prefix-cache hit ratio against cache size and the routers compared (about 25 s).

    python bench/cluster_tables.py [../shared/data/mooncake-conversation/conversation_trace.jsonl]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import simserve
from simserve.hardware import GPUS

ROOT = Path(__file__).resolve().parent.parent

FAST_LINEAR = {"kind": "linear", "step_overhead_s": 0.001, "per_prefill_token_s": 1e-6, "per_decode_seq_s": 1e-5}
# An H100 with memory for any cache size in the sweep (20M blocks of Llama-3.1-8B KV are 42 TB): the hit ratio
# depends on the blocks only, and a scenario's num_kv_blocks must fit in its GPU's memory.
ROOMY_GPU = {**GPUS["h100-sxm"].model_dump(), "name": "h100-sxm-roomy", "memory_bytes": 1e15}
ROUTERS = ["round_robin", "random", "least_kv", "least_outstanding", "power_of_two", "prefix_affinity"]
CACHE_BLOCKS = [20_000_000, 2_000_000, 200_000, 50_000, 20_000]  # KV blocks of 16 tokens
KV_BLOCK_TOKENS = 16
TRACE_BLOCK_TOKENS = 512  # Mooncake's hash_ids name 512-token prompt blocks


def trace_scenario(path: Path, pools: list[dict], router: str = "round_robin", perf: dict | None = None):
    return simserve.parse_scenario({
        "name": "mooncake", "seed": 1, "model": "llama-3.1-8b", "router": router,
        "cluster": {"pools": pools}, "perf": perf or {"kind": "roofline"},
        "workload": {"trace": {"format": "mooncake", "path": str(path.resolve())}},
    })


def router_pools(replicas: int, **pool: Any) -> list[dict]:
    return [{"gpu": "h100-sxm", "replicas": replicas, "max_num_seqs": 256, "max_num_batched_tokens": 8192, **pool}]


def unique_prompt_tokens(path: Path) -> int:
    """The trace's unique prompt tokens, counted as its README does: distinct hash ids x 512 tokens."""
    ids: set[int] = set()
    with path.open() as f:
        for line in f:
            ids.update(json.loads(line)["hash_ids"])
    return len(ids) * TRACE_BLOCK_TOKENS


def _share(share: float) -> str:
    if share > 1:
        return "> 100%"
    return f"{share:.0%}" if share >= 0.1 else f"{share:.1%}"


def hit_ratio_table(path: Path, blocks: list[int] = CACHE_BLOCKS) -> list[str]:
    """One replica, the fast linear step model (the cache, not the load, decides the hits), one run per size."""
    unique = unique_prompt_tokens(path)
    lines = [f"| KV blocks ({KV_BLOCK_TOKENS} tokens) | share of the trace's {unique / 1e6:.1f}M unique prompt "
             "tokens | prefix_cache_hit_ratio |", "|---:|---:|---:|"]
    for n in blocks:
        pools = [{"gpu": ROOMY_GPU, "replicas": 1, "num_kv_blocks": n}]
        s = simserve.run(trace_scenario(path, pools, perf=FAST_LINEAR)).summary
        share = n * KV_BLOCK_TOKENS / unique
        ratio = f"{s['prefix_cache_hit_ratio']:.3f}"
        unbounded = share > 1
        lines.append(f"| {n:,}{' (unbounded)' if unbounded else ''} | {_share(share)} | "
                     f"{f'**{ratio}**' if unbounded else ratio} |")
    return lines


# Router table columns: summary key, format, which value is best (bold).
ROUTER_COLUMNS = [("prefix_cache_hit_ratio", "{:.3f}", max), ("ttft_s_mean", "{:.2f}", min),
                  ("ttft_s_p50", "{:.2f}", min), ("ttft_s_p99", "{:.2f}", min), ("e2e_s_mean", "{:.2f}", min),
                  ("num_preemptions", "{:,}", None)]


def router_table(path: Path, replicas: int = 4, routers: list[str] = ROUTERS) -> list[str]:
    """The full trace on `replicas` H100s (roofline), one run per router. In bold: the best value of each column
    (as printed) and the router with the most prefix hits."""
    summaries = {r: simserve.run(trace_scenario(path, router_pools(replicas), r)).summary for r in routers}
    cells = {r: [fmt.format(s[key]) for key, fmt, _ in ROUTER_COLUMNS] for r, s in summaries.items()}
    best = [None if pick is None else pick(float(cells[r][i].replace(",", "")) for r in routers)
            for i, (_, _, pick) in enumerate(ROUTER_COLUMNS)]
    lines = ["| router | prefix hit ratio | TTFT mean (s) | TTFT p50 (s) | TTFT p99 (s) | e2e mean (s) | preemptions |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in routers:
        row = [f"**{c}**" if b is not None and float(c.replace(",", "")) == b else c
               for c, b in zip(cells[r], best, strict=True)]
        name = f"**{r}**" if row[0].startswith("**") else r
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def first_chunk_admission(path: Path, replicas: int = 4) -> dict[str, Any]:
    """Round robin with admission on a prompt's first chunk (`reserve_full_isl: false`) instead of vLLM 0.33's
    whole-prompt admission: the figures the page's prose quotes."""
    s = simserve.run(trace_scenario(path, router_pools(replicas, reserve_full_isl=False))).summary
    return {k: s[k] for k in ("num_preemptions", "ttft_s_mean", "ttft_s_p99", "e2e_s_mean")}


def _g3(x: float) -> str:
    """Three significant digits, at most three decimals, never an exponent: 0.072, 0.368, 7.91, 103."""
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.{max(0, 2 - int(math.floor(math.log10(abs(x)))))}f}"


def _summary(name: str, sets: list[str]) -> dict[str, Any]:
    return simserve.run(simserve.load_scenario(ROOT / "scenarios" / f"{name}.yaml", sets)).summary


def heterogeneous_table(rates: tuple[float, ...] = (2.0, 3.0)) -> list[str]:
    """scenarios/mixed-a100-h100.yaml at each rate, routed by query type and by least outstanding over all six."""
    lines = ["| rate (req/s) | router | TTFT mean | TTFT p99 | TPOT mean | e2e mean | goodput | "
             "cost A100 / H100 (USD) |", "|---:|---|---:|---:|---:|---:|---:|---|"]
    for rate in rates:
        for router in ("by_query_type", "least_outstanding"):
            sets = [f"workload.arrival.rate_per_s={rate}"] + ([f"router={router}"] if router != "by_query_type" else [])
            s = _summary("mixed-a100-h100", sets)
            lines.append(f"| {rate:.1f} | {router} | {_g3(s['ttft_s_mean'])} | {_g3(s['ttft_s_p99'])} | "
                         f"{s['tpot_s_mean']:.4f} | {s['e2e_s_mean']:.1f} | {s['goodput']:.3f} | "
                         f"{s['cost_usd_a100']:.2f} / {s['cost_usd_h100']:.2f} |")
    return lines


def disaggregated_table() -> list[str]:
    """scenarios/disaggregated.yaml (1 prefill + 3 decode replicas) against the same four H100s co-located."""
    lines = ["| layout | TTFT mean | TTFT p99 | TPOT mean | TPOT p99 | e2e mean | goodput | cost (USD) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for layout, sets in (("1 prefill + 3 decode", []), ("4 co-located", ["cluster.pools=[{name: main, replicas: 4}]"])):
        s = _summary("disaggregated", sets)
        lines.append(f"| {layout} | {s['ttft_s_mean']:.3f} | {s['ttft_s_p99']:.3f} | {s['tpot_s_mean']:.4f} | "
                     f"{s['tpot_s_p99']:.4f} | {s['e2e_s_mean']:.1f} | {s['goodput']:.3f} | {s['cost_usd']:.2f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path, nargs="?", help="the Mooncake conversation trace (JSONL): its tables too")
    ap.add_argument("--replicas", type=int, default=4)
    args = ap.parse_args()
    print("\n".join(heterogeneous_table()), end="\n\n", flush=True)
    print("\n".join(disaggregated_table()), flush=True)
    if args.trace is None:
        return 0
    print()
    print("\n".join(hit_ratio_table(args.trace)), flush=True)
    print()
    print("\n".join(router_table(args.trace, args.replicas)), flush=True)
    f = first_chunk_admission(args.trace, args.replicas)
    print(f"\nround_robin with reserve_full_isl: false: {f['num_preemptions']:,} preemptions, TTFT mean "
          f"{f['ttft_s_mean']:.2f} s, p99 {f['ttft_s_p99']:.2f} s, e2e mean {f['e2e_s_mean']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
