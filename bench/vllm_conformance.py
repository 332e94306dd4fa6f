"""Replay vLLM V1 scheduler oracle cases through simserve and count the requests that match step for step.

Each case (shared/tools/vllm-oracle's JSON: a scheduler config and requests with integer arrival steps) becomes a
scenario whose `linear` perf model takes exactly 1 s per step (`step_overhead_s: 1.0`, all other terms 0), so a
simulated second is a scheduler step, and a `requests` trace (arrival_s = arrival step, prefix_block_hashes). A
request matches when its first-token step, finish step, preemption count and cached prompt tokens at first
admission all equal the oracle's (NAME.requests.csv, written by oracle.py).

    python bench/vllm_conformance.py tests/fixtures/vllm_oracle/cases tests/fixtures/vllm_oracle/oracle [-v]

vLLM's KV cache keeps one block aside (the null block), so a case's `num_gpu_blocks` is simserve's
num_kv_blocks + 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

import simserve

COMPARED = ("first_token_step", "finish_step", "num_preemptions", "num_cached_tokens_first")


def case_scenario(case: dict[str, Any], trace_path: Path, max_model_len: int) -> dict[str, Any]:
    """The simserve scenario of an oracle case (its requests are in the trace at `trace_path`)."""
    cfg = case["config"]
    if cfg.get("policy", "fcfs") != "fcfs":
        raise ValueError(f"policy {cfg['policy']!r}: only fcfs cases can be replayed")
    return {
        "name": "vllm-conformance",
        "model": "llama-3.1-8b",
        "cluster": {"pools": [{
            "name": "main", "gpu": "h100-sxm", "replicas": 1,
            "max_num_seqs": cfg["max_num_seqs"], "max_num_batched_tokens": cfg["max_num_batched_tokens"],
            "kv_block_tokens": cfg["block_size"], "num_kv_blocks": cfg["num_gpu_blocks"] - 1,
            "max_model_len_tokens": max_model_len,
            "chunked_prefill": cfg.get("enable_chunked_prefill", True),
            "prefix_caching": cfg.get("enable_prefix_caching", False),
            "long_prefill_token_threshold": cfg.get("long_prefill_token_threshold", 0),
            "async_scheduling": cfg.get("async_scheduling", False),
        }]},
        "perf": {"kind": "linear", "step_overhead_s": 1.0},
        "workload": {"trace": {"format": "requests", "path": str(trace_path),
                               "prefix_block_tokens": cfg["block_size"]}},
        "engine": {"horizon_s": 1.0e9},
    }


def write_trace(case: dict[str, Any], path: Path) -> None:
    rows = [{"arrival_s": float(r["arrival_step"]), "input_tokens": r["prompt_len"], "output_tokens": r["output_len"],
             "prefix_block_hashes": " ".join(str(h) for h in r.get("prefix_block_hashes") or [])}
            for r in case["requests"]]
    pd.DataFrame(rows).to_csv(path, index=False)


def simulate(case: dict[str, Any], max_model_len: int, exact_steps: bool = False) -> pd.DataFrame:
    """simserve's per-request steps for an oracle case, in the oracle's columns, indexed by request id."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.csv"
        write_trace(case, trace)
        data = case_scenario(case, trace, max_model_len)
        data["engine"]["exact_steps"] = exact_steps
        data["engine"]["check_invariants"] = True
        results = simserve.run(simserve.parse_scenario(data, source="conformance"))
    df = results.requests.sort_values("request_id", ignore_index=True)  # rows come in the order requests ended
    order = sorted(range(len(case["requests"])), key=lambda i: (case["requests"][i]["arrival_step"], i))
    ids = [str(case["requests"][i]["id"]) for i in order]
    first_arrival = min(r["arrival_step"] for r in case["requests"])
    return pd.DataFrame({
        "id": ids,
        "first_token_step": (df["first_token_s"] - 1 + first_arrival).round().astype("Int64").to_numpy(),
        "finish_step": (df["finish_s"] - 1 + first_arrival).round().astype("Int64").to_numpy(),
        "num_preemptions": df["num_preemptions"].to_numpy(),
        "num_cached_tokens_first": df["prefix_hit_tokens"].to_numpy(),
        "status": df["status"].to_numpy(),
    }).set_index("id")


def compare(case_path: Path, oracle_dir: Path, exact_steps: bool = False) -> tuple[int, int, pd.DataFrame]:
    """(matching requests, requests, the rows that differ: oracle and simserve side by side)."""
    case = json.loads(case_path.read_text())
    name = case_path.stem
    oracle = pd.read_csv(oracle_dir / f"{name}.requests.csv", dtype={"id": str}).set_index("id")
    summary = json.loads((oracle_dir / f"{name}.summary.json").read_text())
    sim = simulate(case, int(summary["max_model_len"]), exact_steps)
    real = oracle[list(COMPARED)]
    both = real.join(sim[list(COMPARED)].add_suffix("_sim"))
    same = pd.Series(True, index=both.index)
    for col in COMPARED:
        same &= both[col].astype("Int64") == both[f"{col}_sim"].astype("Int64")
    same = same.fillna(False)
    return int(same.sum()), len(both), both[~same]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", type=Path, help="folder of case JSON files")
    ap.add_argument("oracle", type=Path, help="folder of the oracle's NAME.requests.csv / NAME.summary.json")
    ap.add_argument("--exact-steps", action="store_true", help="step one iteration at a time (no fast-forward)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the requests that differ")
    args = ap.parse_args(argv)
    total_ok = total = cases_ok = 0
    paths = sorted(args.cases.glob("*.json"))
    for path in paths:
        ok, n, diff = compare(path, args.oracle, args.exact_steps)
        total_ok += ok
        total += n
        cases_ok += ok == n
        print(f"{path.stem:28s} {ok:4d}/{n:<4d} {'exact' if ok == n else 'DIFFERS'}")
        if args.verbose and len(diff):
            print(diff.head(12).to_string())
    print(f"cases step-exact: {cases_ok}/{len(paths)}; requests matching: {total_ok}/{total}")
    return 0 if cases_ok == len(paths) else 1


if __name__ == "__main__":
    sys.exit(main())
