"""Speculative decoding against batch size (issue 23, docs/speculative.md): TPOT, output throughput and time to
answer of a closed batch of reasoning requests, with and without speculation, for Llama-3.1-8B (1 H100) and
Llama-3.1-70B (4 H100, tensor parallel), EAGLE (0.8 a position) and n-gram (0.3) drafting k = 3 tokens.

    python bench/speculative.py --out docs/data/speculative.json --charts docs/images   # about 2 min, 1 core

Each point: `batch` requests of 1,000 prompt + 2,000 reasoning + 200 answer tokens arriving together on one
replica with max_num_seqs = batch (so the batch stays full while they decode), the calibrated perf model. The
crossover is the smallest batch at which speculation's throughput falls below plain decoding's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
MODELS = {"llama-3.1-8b": 1, "llama-3.1-70b": 4}
SPECS = {"eagle k=3": {"method": "eagle", "num_speculative_tokens": 3},  # 0.8 a position: 2.95 tokens a step
         "ngram k=3": {"method": "ngram", "num_speculative_tokens": 3}}  # 0.3 a position: 1.42 tokens a step


def point(model: str, tp: int, batch: int, label: str, perf: str) -> dict[str, Any]:
    from simserve import parse_scenario, run

    pool: dict[str, Any] = {"name": "main", "gpu": "h100-sxm", "replicas": 1, "tensor_parallel": tp,
                            "max_num_seqs": batch, "max_num_batched_tokens": 16384}
    if label != "none":
        pool["speculative"] = SPECS[label]
    data = {"name": "spec-bench", "seed": 1, "model": model, "cluster": {"pools": [pool]},
            "perf": {"kind": perf},
            "workload": {"num_requests": batch, "arrival": {"process": "poisson", "rate_per_s": 1e6},
                         "mix": [{"query_type": "t", "prompt_tokens": {"dist": "constant", "value": 1000},
                                  "reasoning_tokens": {"dist": "constant", "value": 2000},
                                  "answer_tokens": {"dist": "constant", "value": 200}}]}}
    s = run(parse_scenario(data)).summary
    return {"model": model, "batch": batch, "speculation": label,
            "tpot_ms": float(1e3 * s["tpot_s_mean"]),
            "throughput_tokens_per_s": float(s["throughput_output_tokens_per_s"]),
            "time_to_answer_s": float(s["time_to_answer_s_mean"])}


def study(perf: str) -> list[dict[str, Any]]:
    rows = []
    for model, tp in MODELS.items():
        for batch in BATCHES:
            for label in ("none", *SPECS):
                rows.append(point(model, tp, batch, label, perf))
                print(rows[-1], file=sys.stderr)
    return rows


def crossovers(rows: list[dict[str, Any]]) -> dict[str, int | None]:
    """Per model and drafter, the smallest batch at which speculation's throughput falls below plain decoding's."""
    out: dict[str, int | None] = {}
    for model in MODELS:
        r = {(x["batch"], x["speculation"]): x for x in rows if x["model"] == model}
        for label in SPECS:
            out[f"{model}, {label}"] = next((b for b in BATCHES if r[(b, label)]["throughput_tokens_per_s"]
                                             < r[(b, "none")]["throughput_tokens_per_s"]), None)
    return out


def charts(rows: list[dict[str, Any]], folder: Path) -> Path:
    import altair as alt
    import pandas as pd
    import vl_convert as vlc

    df = pd.DataFrame(rows).melt(id_vars=["model", "batch", "speculation"], var_name="metric")
    chart = alt.Chart(df, width=220, height=160).mark_line(point=True).encode(
        x=alt.X("batch:Q", scale=alt.Scale(type="log", base=2), title="batch size (sequences)"),
        y=alt.Y("value:Q", scale=alt.Scale(type="log"), title=None),
        color=alt.Color("speculation:N"),
    ).facet(row=alt.Row("metric:N", title=None), column=alt.Column("model:N", title=None)).resolve_scale(
        y="independent")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "speculative.svg"
    path.write_text(vlc.vegalite_to_svg(chart.to_dict()))
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the rows and crossovers (JSON) here")
    p.add_argument("--charts", type=Path, metavar="DIR", help="write the chart (SVG) into this folder")
    p.add_argument("--perf", default="calibrated", help="perf model kind (default: calibrated)")
    args = p.parse_args()
    rows = study(args.perf)
    data = {"rows": rows, "crossover_batch": crossovers(rows)}
    print(json.dumps(data["crossover_batch"]))
    for r in rows:
        print(f"{r['model']:>14} {r['batch']:>4} {r['speculation']:>10} TPOT {r['tpot_ms']:7.2f} ms  "
              f"{r['throughput_tokens_per_s']:9.0f} tok/s  TTA {r['time_to_answer_s']:7.2f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1) + "\n")
    if args.charts:
        print(charts(rows, args.charts))


if __name__ == "__main__":
    main()
