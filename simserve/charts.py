"""The many-run commands' charts (Altair): a summary figure against a swept knob with its confidence band per
choice, and a capacity search's probes with their Pareto front. Part of the command line: output.save_chart writes
them with the Vega libraries inlined, so they open offline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import altair as alt
import pandas as pd

from simserve.sweep import summary_table

if TYPE_CHECKING:
    from simserve.plan import PlanResult


def _labels(df: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    """'gpu=h200, router=least_kv' per row: each key's last part and its value."""
    if not keys:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[list(keys)].astype(str).apply(
        lambda r: ", ".join(f"{str(k).rsplit('.', 1)[-1]}={v}" for k, v in r.items()), axis=1)


def sweep_chart(summary: pd.DataFrame, keys: Sequence[str], figure: str, target: float | None = None) -> Any:
    """`figure` (its mean over seeds, and the 95% confidence band) against the first swept key, a line per value
    of the other keys; None when the summary has no such figure."""
    data = summary[summary["figure"] == figure].copy()
    if data.empty or not keys:
        return None
    x, rest = keys[0], list(keys[1:])
    data["choice"] = _labels(data, rest)
    data["setting"] = data[x]  # Vega-Lite reads a dot in a field name as a nested field: cluster.pools.0.replicas
    data = data[["setting", "choice", "mean", "ci_low", "ci_high", "num_seeds"]]
    numeric = pd.api.types.is_numeric_dtype(data["setting"])
    enc_x = alt.X(f"setting:{'Q' if numeric else 'N'}", title=x)
    legend = ", ".join(k.rsplit(".", 1)[-1] for k in rest) or None
    base = alt.Chart(data).encode(x=enc_x, color=alt.Color("choice:N", title=legend))
    y = alt.Y("mean:Q", title=f"{figure} (mean, 95% CI over seeds)", scale=alt.Scale(zero=False))
    tooltip = ["setting", "choice", "mean", "ci_low", "ci_high", "num_seeds"]
    if numeric:
        layers = [base.mark_area(opacity=0.2).encode(y="ci_low:Q", y2="ci_high:Q"),
                  base.mark_line(point=True).encode(y=y, tooltip=tooltip)]
    else:
        layers = [base.mark_errorbar().encode(y="ci_low:Q", y2="ci_high:Q"),
                  base.mark_point(filled=True).encode(y=y, tooltip=tooltip)]
    if target is not None:
        layers.append(alt.Chart(pd.DataFrame({"target": [target]})).mark_rule(strokeDash=[4, 4]).encode(
            y="target:Q"))
    return alt.layer(*layers).properties(width=480, height=300, title=f"{figure} against {x}")


def knob_chart(result: PlanResult) -> Any:
    """A capacity search's first SLO figure against the knob at every setting probed, per choice, with the target."""
    slo = result.slos[0]
    choice_keys = result.choices
    summary = summary_table(result.runs, [result.knob.key, *choice_keys])
    return sweep_chart(summary, [result.knob.key, *choice_keys], slo.figure, slo.target)


def pareto_chart(result: PlanResult) -> Any:
    """Every probe of a capacity search: cost against the first SLO figure (its mean over seeds), filled where
    every SLO is met with confidence, the Pareto front drawn through, the target as a rule."""
    slo = result.slos[0]
    y = f"{slo.figure}_mean"
    probes = result.probes[["objective", y, f"{slo.figure}_bound", "meets", "pareto"]].copy()
    probes["choice"] = _labels(result.probes, result.choices)
    probes["setting"] = _labels(result.probes, [*result.choices, result.knob.key])
    log = bool((probes[y] > 0).all() and slo.target > 0)  # a figure spanning decades (p99 waits when overloaded)
    points = alt.Chart(probes).mark_point(size=60).encode(
        x=alt.X("objective:Q", title=result.objective),
        y=alt.Y(f"{y}:Q", title=f"{slo.figure} (mean over seeds)",
                scale=alt.Scale(type="log") if log else alt.Scale(zero=False)),
        color=alt.Color("choice:N", title=", ".join(k.rsplit(".", 1)[-1] for k in result.choices) or None),
        shape=alt.Shape("meets:N", title="meets every SLO"),
        tooltip=["setting", "objective", y, f"{slo.figure}_bound", "meets"])
    front = alt.Chart(probes[probes["pareto"]].sort_values("objective")).mark_line(color="black").encode(
        x="objective:Q", y=f"{y}:Q", order="objective:Q")
    rule = alt.Chart(pd.DataFrame({"target": [slo.target]})).mark_rule(strokeDash=[4, 4]).encode(y="target:Q")
    return alt.layer(points, front, rule).properties(
        width=480, height=320, title=f"{result.objective} against {slo.figure}: probes and Pareto front")
