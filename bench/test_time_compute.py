"""Test-time compute on MATH-500-like traffic: seed 002's compute-equivalent configurations, and parallel sampling
with a plurality vote or a reward model over n = 1, 4, 16, 64, each on the same traffic and solver GPUs.

    python bench/test_time_compute.py            # prints the markdown tables of docs/test-time-compute.md
    python bench/test_time_compute.py --chart docs/images/test-time-compute.svg

Every run is seeded: the tables are deterministic (tests/test_docs.py checks the page still says what this prints).
`busy USD per right` prices only the GPU time spent stepping (what a fleet sized to the load would pay); `USD per
right` prices the whole provisioned fleet over the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simserve import load_scenario, run  # noqa: E402

SCENARIOS = ROOT / "scenarios" / "test-time-compute"

# Seed 002, section 5, "Compute-Equivalent Configurations on MATH-500": reasoning tokens, FLOPs per query, accuracy.
CONFIGS = (
    ("big + light", "big-light", "1K", 810, 0.82),
    ("medium + moderate", "medium-moderate", "8K", 1120, 0.86),
    ("small + heavy", "small-heavy", "64K", 896, 0.71),
    ("big + heavy", "big-heavy", "16K", 12960, 0.93),
)
SAMPLES = (1, 4, 16, 64)
# Seed 002, section 6: MATH-500 majority vote and PRM best-of-N accuracy by N (single sample 74%).
SEED_VOTING = {("majority", 16): 0.85, ("majority", 64): 0.90, ("best_of_n", 16): 0.91, ("best_of_n", 64): 0.94}


def busy_usd(s: dict[str, Any], scenario: Any) -> float:
    """The GPU time a run spent stepping, priced: what a fleet sized to its load would pay (its fleet is fixed)."""
    return sum(s.get(f"gpu_busy_share_{p.name}", s["gpu_busy_share"]) * s.get(f"cost_usd_{p.name}", s["cost_usd"])
               for p in scenario.cluster.pools)


def simulate(name: str, overrides: list[str] | None = None) -> dict[str, Any]:
    scenario = load_scenario(SCENARIOS / f"{name}.yaml", overrides or [])
    s = run(scenario).summary
    s["busy_usd"] = busy_usd(s, scenario)
    return s


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def configs_table() -> list[str]:
    lines = ["| configuration | reasoning budget | TFLOPs/query (seed) | accuracy | seed's accuracy | time to answer "
             "p50 / p99 (s) | GPU busy | USD per right | busy USD per right |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, name, budget, tflops, seed_acc in CONFIGS:
        s = simulate(name)
        lines.append(f"| {label} | {budget} | {tflops:,} | {pct(s['accuracy'])} | {pct(seed_acc)} | "
                     f"{s['time_to_answer_s_p50']:.1f} / {s['time_to_answer_s_p99']:.1f} | "
                     f"{pct(s['gpu_busy_share'])} | {s['usd_per_correct_answer']:.4f} | "
                     f"{s['busy_usd'] / s['num_correct']:.4f} |")
    return lines


def sweep() -> list[dict[str, Any]]:
    rows = []
    for aggregate, name in (("majority", "parallel-majority"), ("best_of_n", "parallel-best-of-n")):
        for n in SAMPLES:
            s = simulate(name, [f"workload.mix.0.parallel.n={n}"])
            rows.append({"aggregate": aggregate, "n": n, **s})
    return rows


def sweep_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| aggregate | n | accuracy | seed's | time to answer p99 (s) | GPU-hours | busy GPU-hours | "
             "USD per right | busy USD per right | tokens per right | events per request |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seed = SEED_VOTING.get((r["aggregate"], r["n"]))
        lines.append(f"| {r['aggregate']} | {r['n']} | {pct(r['accuracy'])} | {pct(seed) if seed else '-'} | "
                     f"{r['time_to_answer_s_p99']:.0f} | {r['gpu_hours']:.1f} | "
                     f"{r['gpu_hours'] * r['gpu_busy_share']:.1f} | {r['usd_per_correct_answer']:.3f} | "
                     f"{r['busy_usd'] / r['num_correct']:.4f} | {r['tokens_per_correct_answer']:,.0f} | "
                     f"{r['events_per_request']:.1f} |")
    return lines


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy, p99 time to answer, busy GPU-hours and USD per right answer against n, one line per aggregation,
    as an SVG (rendered offline by vl-convert)."""
    import altair as alt
    import pandas as pd
    import vl_convert as vlc

    frame = pd.DataFrame([{"aggregate": r["aggregate"], "n": r["n"], "accuracy": r["accuracy"],
                           "time to answer p99 (s)": r["time_to_answer_s_p99"],
                           "busy GPU-hours": r["gpu_hours"] * r["gpu_busy_share"],
                           "USD per right answer": r["usd_per_correct_answer"]} for r in rows])
    panels = []
    for metric in ("accuracy", "time to answer p99 (s)", "busy GPU-hours", "USD per right answer"):
        panels.append(alt.Chart(frame, width=220, height=160).mark_line(point=True).encode(
            x=alt.X("n:Q", scale=alt.Scale(type="log", base=2), title="samples per request (n)"),
            y=alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False)), color="aggregate:N"))
    spec = alt.hconcat(*panels).to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(vlc.vegalite_to_svg(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, help="also write the sweep's chart (SVG) here")
    args = parser.parse_args()
    print("\n".join(configs_table()))
    print()
    rows = sweep()
    print("\n".join(sweep_table(rows)))
    if args.chart:
        chart(rows, args.chart)
        print(f"\nwrote {args.chart}")


if __name__ == "__main__":
    main()
