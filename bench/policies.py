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

sys.path.insert(0, str(ROOT / "bench"))

from test_time_compute import busy_usd  # noqa: E402

from simserve import load_scenario, run  # noqa: E402
from simserve.metrics import group_summary  # noqa: E402

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
        scenario = load_scenario(SERVING / f"{name}.yaml")
        s = run(scenario).summary
        s["busy_usd"] = busy_usd(s, scenario)
        out.append((label, s, seed))
    return out


def serving_table(rows: list[tuple[str, dict[str, Any], tuple[Any, ...]]]) -> list[str]:
    lines = ["| configuration | throughput tok/s | mean / p99 time to answer (s) | KV memory efficiency "
             "| KV used, mean | mean batch | accuracy | USD per right answer | busy USD per right answer | seed: tok/s "
             "| seed: mean / p99 TTA (s) | seed: memory efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s, seed in rows:
        lines.append(
            f"| {label} | {s['throughput_output_tokens_per_s']:,.0f} | {s['time_to_answer_s_mean']:.1f} / "
            f"{s['time_to_answer_s_p99']:.1f} | {_f(s.get('kv_memory_efficiency'), '.1%')} | "
            f"{s['kv_utilization_mean']:.1%} | {s['batch_size_mean']:.1f} | "
            f"{s['accuracy']:.1%} | {s['usd_per_correct_answer']:.4f} | {s['busy_usd'] / s['num_correct']:.4f} | "
            f"{seed[0]:,} | {seed[1]} / {seed[2]} | "
            f"{seed[3]} |")
    return lines


DISTILLED = (("every question to the teacher (DeepSeek-R1, 8 x H200)", "teacher-only"),
             ("easy to DeepSeek-R1-Distill-Qwen-7B (2 x H100), hard to the teacher", "distilled-routing"))


def distilled_table() -> list[str]:
    lines = ["| configuration | accuracy | routing accuracy | accuracy lost | mean / p99 time to answer (s) | GPU cost "
             "USD/h | USD per right answer |", "|---|---|---|---|---|---|---|"]
    for label, name in DISTILLED:
        s = run(load_scenario(SERVING / f"{name}.yaml")).summary
        per_hour = s["cost_usd"] / s["makespan_s"] * 3600
        lines.append(f"| {label} | {s['accuracy']:.1%} | {_f(s.get('routing_accuracy'), '.1%')} | "
                     f"{_f(s.get('accuracy_lost'), '.1%')} | {s['time_to_answer_s_mean']:.0f} / "
                     f"{s['time_to_answer_s_p99']:.0f} | {per_hour:.1f} | {s['usd_per_correct_answer']:.4f} |")
    return lines


SCHEDULERS = (
    ("fcfs", "fcfs"),
    ("priority (short first)", "{kind: priority}"),
    ("shortest predicted first, perfect predictor", "{kind: shortest_predicted_first}"),
    ("shortest predicted first, log error 0.5, aging", "{kind: shortest_predicted_first, log_error: 0.5, "
     "aging_tokens_per_s: 50}"),
    ("fair share (VTC)", "{kind: fair_share}"),
    ("reasoning-aware, recompute", "{kind: reasoning_aware, preempt_mode: recompute}"),
    ("reasoning-aware, swap", "{kind: reasoning_aware, preempt_mode: swap}"),
)


def jain(values: Any) -> float:
    """Jain's fairness index: (sum x)^2 / (n sum x^2); 1 when every value is equal."""
    import numpy as np

    x = np.asarray(values, float)
    return float(x.sum() ** 2 / (len(x) * (x**2).sum())) if len(x) else math.nan


def scheduler_rows() -> list[dict[str, Any]]:
    rows = []
    for label, spec in SCHEDULERS:
        res = run(load_scenario(SERVING / "scheduler-mix.yaml", [f"scheduler={spec}"]))
        s, req = res.summary, res.requests
        done = req[req.status == "completed"]
        row = {"scheduler": label, "summary": s,
               "jain_tta": jain(done.groupby("user_id")["time_to_answer_s"].mean())}
        groups = group_summary(res.requests_path, "query_type")
        for q, name in (("factual", "short"), ("competition_math", "long")):
            g = groups[q]
            row[f"{name}_p50"], row[f"{name}_p99"] = g["time_to_answer_s_p50"], g["time_to_answer_s_p99"]
        rows.append(row)
    return rows


def scheduler_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| scheduler | short: time to answer p50 / p99 (s) | long: p50 / p99 (s) | longest wait (s) | "
             "Jain's index, users' mean time to answer | time-to-answer SLO met | accuracy | swapped GB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["summary"]
        lines.append(f"| {r['scheduler']} | {r['short_p50']:.1f} / {r['short_p99']:.1f} | {r['long_p50']:.0f} / "
                     f"{r['long_p99']:.0f} | {s['max_wait_s']:.0f} | {r['jain_tta']:.3f} | "
                     f"{s['slo_attainment_time_to_answer_s']:.1%} | {s['accuracy']:.1%} | "
                     f"{s['swap_bytes'] / 1e9:.1f} |")
    return lines


def scheduler_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """p50 and p99 time to answer of short and long requests per scheduler, as an SVG (vl-convert, offline)."""
    import altair as alt
    import pandas as pd
    import vl_convert as vlc

    frame = pd.DataFrame([{"scheduler": r["scheduler"], "requests": name, "percentile": q,
                           "time to answer (s)": r[f"{name}_{q}"]}
                          for r in rows for name in ("short", "long") for q in ("p50", "p99")])
    chart = alt.Chart(frame, width=260, height=180).mark_bar().encode(
        y=alt.Y("scheduler:N", sort=None, title=None), x=alt.X("time to answer (s):Q", scale=alt.Scale(type="symlog")),
        color="percentile:N", yOffset="percentile:N").facet(column=alt.Column("requests:N", sort=["short", "long"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(vlc.vegalite_to_svg(chart.to_dict()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, help="also write the scheduler comparison's chart (SVG) here")
    args = parser.parse_args()
    print("\n".join(serving_table(serving_rows())))
    print()
    print("\n".join(distilled_table()))
    print()
    rows = scheduler_rows()
    print("\n".join(scheduler_table(rows)))
    if args.chart:
        scheduler_chart(rows, args.chart)
        print(f"\nwrote {args.chart}")


if __name__ == "__main__":
    main()
