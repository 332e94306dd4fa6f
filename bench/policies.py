"""Reasoning-aware serving policies: seed 002's "Serving Configuration Impact on Reasoning Workloads" table, one
scenario per row (scenarios/reasoning-serving/), and a scheduler comparison on a mixed short/long workload.

    python bench/policies.py                          # the tables of docs/policies.md
    python bench/policies.py --chart docs/images/schedulers.svg

Every run is seeded: the tables are deterministic (tests/test_docs.py checks docs/policies.md against them).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simserve import load_scenario, run  # noqa: E402

SERVING = ROOT / "scenarios" / "reasoning-serving"
# Seed 002, section 8: throughput (tok/s), mean and p99 time to answer (s), memory efficiency (words).
ROWS = (
    ("standard serving", "standard", (2400, 12.3, 68.5, "low")),
    ("+ KV compression (50%)", "kv-compression", (2200, 13.1, 42.3, "medium")),
    ("+ difficulty-based routing", "difficulty-routing", (3800, 8.7, 55.2, "medium")),
    ("+ streaming verification", "streaming-verification", (3500, 6.2, 38.1, "medium")),
    ("all optimizations", "all-optimizations", (4100, 5.8, 31.4, "high")),
)


def _f(x: Any, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def serving_rows() -> list[tuple[str, dict[str, Any], tuple[Any, ...]]]:
    out = []
    for label, name, seed in ROWS:
        path = SERVING / f"{name}.yaml"
        if path.is_file():
            out.append((label, run(load_scenario(path)).summary, seed))
    return out


def serving_table(rows: list[tuple[str, dict[str, Any], tuple[Any, ...]]]) -> list[str]:
    lines = ["| configuration | throughput tok/s | mean / p99 time to answer (s) | KV memory efficiency | accuracy "
             "| USD per right answer | seed: tok/s | seed: mean / p99 TTA (s) | seed: memory efficiency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, s, seed in rows:
        lines.append(
            f"| {label} | {s['throughput_output_tokens_per_s']:,.0f} | {s['time_to_answer_s_mean']:.1f} / "
            f"{s['time_to_answer_s_p99']:.1f} | {_f(s.get('kv_memory_efficiency'), '.1%')} | "
            f"{s['accuracy']:.1%} | {s['usd_per_correct_answer']:.4f} | {seed[0]:,} | {seed[1]} / {seed[2]} | "
            f"{seed[3]} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, help="also write the scheduler comparison's chart (SVG) here")
    parser.parse_args()
    print("\n".join(serving_table(serving_rows())))


if __name__ == "__main__":
    main()
