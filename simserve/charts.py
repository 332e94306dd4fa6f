"""Charts (Altair) of one run and of many. One run (the dashboard and `simserve run --report`): latency CDFs by query
type, latency and queue length over time, KV utilisation over time, tokens by phase, the cost breakdown and accuracy
against reasoning tokens, each a function of the run's records (requests.parquet, replicas.parquet as DataFrames)
and its summary. Many runs (the sweep, compare and plan commands): a summary figure against a swept knob with its
confidence band per choice, and a capacity search's probes with their Pareto front. Part of the command line and
the dashboard: output.save_chart writes them with the Vega libraries inlined, so they open offline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import altair as alt
import numpy as np
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


# ------------------------------------------------------------------------------------------ one run

LATENCY_LABELS = {"ttft_s": "TTFT", "time_to_answer_s": "time to answer", "tpot_s": "TPOT", "e2e_s": "e2e"}
CDF_POINTS = 200  # quantiles drawn per query type: a CDF of 100,000 requests stays a small chart
TIME_POINTS = 120  # instants sampled over the run for the time series


def _completed(requests: pd.DataFrame) -> pd.DataFrame:
    return requests[requests["status"] == "completed"]


def latency_cdf(requests: pd.DataFrame, metrics: Sequence[str] = ("ttft_s", "time_to_answer_s", "tpot_s", "e2e_s")
                ) -> Any:
    """The empirical CDF of each latency over completed requests, a line per query type (CDF_POINTS quantiles
    each), a panel per metric, log-scaled x; None without completed requests."""
    done = _completed(requests)
    if done.empty:
        return None
    q = np.linspace(0.0, 1.0, CDF_POINTS + 1)
    rows = []
    for m in metrics:
        for qt, sub in done.groupby("query_type", sort=True):
            x = sub[m].dropna().to_numpy(dtype=float)
            x = x[x > 0]
            if len(x):
                rows.append(pd.DataFrame({"metric": LATENCY_LABELS.get(m, m), "query_type": str(qt),
                                          "seconds": np.quantile(x, q), "share": q}))
    if not rows:
        return None
    data = pd.concat(rows, ignore_index=True)
    return alt.Chart(data).mark_line().encode(
        x=alt.X("seconds:Q", scale=alt.Scale(type="log"), title="seconds (log)"),
        y=alt.Y("share:Q", title="share of completed requests", axis=alt.Axis(format="%")),
        color=alt.Color("query_type:N", title="query type"),
        tooltip=["query_type", "seconds", alt.Tooltip("share:Q", format=".0%")],
    ).properties(width=260, height=200).facet(
        facet=alt.Facet("metric:N", title=None, sort=[LATENCY_LABELS.get(m, m) for m in metrics]), columns=2,
    ).resolve_scale(x="independent").properties(title="latency CDFs by query type (completed requests)")


def _at(replicas: pd.DataFrame, times: np.ndarray, column: str) -> pd.DataFrame:
    """Each replica's `column` at each instant of `times`: the value of the segment covering it (0 where none
    does: before its first segment or after its last)."""
    rows = []
    for (pool, replica), seg in replicas.groupby(["pool", "replica"], sort=True):
        seg = seg.sort_values("start_s")
        i = np.searchsorted(seg["start_s"].to_numpy(), times, side="right") - 1
        inside = (i >= 0) & (times < seg["end_s"].to_numpy()[np.clip(i, 0, None)])
        value = np.where(inside, seg[column].to_numpy(dtype=float)[np.clip(i, 0, None)], 0.0)
        rows.append(pd.DataFrame({"pool": pool, "replica": replica, "time_s": times, column: value}))
    return pd.concat(rows, ignore_index=True)


def _instants(replicas: pd.DataFrame) -> np.ndarray:
    end = float(replicas["end_s"].max()) if len(replicas) else 0.0
    return np.linspace(0.0, end, TIME_POINTS, endpoint=False) + end / TIME_POINTS / 2


def latency_over_time(requests: pd.DataFrame, replicas: pd.DataFrame) -> Any:
    """Above: the p50 and p99 of TTFT and time to answer of the requests arriving in each of TIME_POINTS windows;
    below: the waiting queue (every replica's, summed) sampled at the windows' middles. None without records."""
    done = _completed(requests)
    if done.empty or replicas.empty:
        return None
    times = _instants(replicas)
    end = float(replicas["end_s"].max())
    # Windows of about 20 requests or more each (a p99 of three requests is noise), 5 to 60 of them.
    num_windows = int(np.clip(len(done) // 20, 5, 60))
    width = end / num_windows
    window = np.clip((done["arrival_s"].to_numpy() // width).astype(int), 0, num_windows - 1)
    lat = []
    for m in ("ttft_s", "time_to_answer_s"):
        g = done.assign(window=window).groupby("window")[m]
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            s = g.quantile(q)
            lat.append(pd.DataFrame({"time_s": (s.index.to_numpy() + 0.5) * width, "seconds": s.to_numpy(),
                                     "series": f"{LATENCY_LABELS[m]} {name}"}))
    lat_df = pd.concat(lat, ignore_index=True)
    lat_df = lat_df[lat_df["seconds"] > 0]
    domain = alt.Scale(domain=[0, end])
    top = alt.Chart(lat_df).mark_line(point=True).encode(
        x=alt.X("time_s:Q", title="simulated time (s), by arrival", scale=domain),
        y=alt.Y("seconds:Q", scale=alt.Scale(type="log"), title="latency (s, log)"),
        color=alt.Color("series:N", title=None), tooltip=["time_s", "series", "seconds"],
    ).properties(width=560, height=180, title="latency of the requests arriving over time")
    queue = _at(replicas, times, "num_waiting").groupby(["time_s", "pool"], as_index=False)["num_waiting"].sum()
    bottom = alt.Chart(queue).mark_area(opacity=0.6).encode(
        x=alt.X("time_s:Q", title="simulated time (s)", scale=domain),
        y=alt.Y("num_waiting:Q", title="waiting requests", stack=True),
        color=alt.Color("pool:N", title="pool"), tooltip=["time_s", "pool", "num_waiting"],
    ).properties(width=560, height=120, title="waiting queue (every replica of the pool)")
    return alt.vconcat(top, bottom).resolve_scale(color="independent")


def kv_over_time(replicas: pd.DataFrame, pools: Sequence[dict[str, Any]]) -> Any:
    """KV blocks in use as a share of capacity, per pool (its replicas' mean), sampled over the run."""
    if replicas.empty:
        return None
    capacity = {p["pool"]: float(p["kv_capacity_blocks"]) for p in pools}
    kv = _at(replicas, _instants(replicas), "kv_blocks_mean")
    kv["share"] = kv["kv_blocks_mean"] / kv["pool"].map(capacity).astype(float)
    data = kv.groupby(["time_s", "pool"], as_index=False)["share"].mean()
    return alt.Chart(data).mark_line().encode(
        x=alt.X("time_s:Q", title="simulated time (s)"),
        y=alt.Y("share:Q", title="KV blocks in use (share of capacity)", axis=alt.Axis(format="%")),
        color=alt.Color("pool:N", title="pool"), tooltip=["time_s", "pool", alt.Tooltip("share:Q", format=".1%")],
    ).properties(width=560, height=200, title="KV utilisation over time (mean over the pool's replicas)")


def tokens_by_phase(requests: pd.DataFrame) -> Any:
    """Tokens of completed requests per query type, stacked by phase: prompt computed (prefill), prompt served
    from the prefix cache, reasoning, answer (and early-exit probes where any)."""
    done = _completed(requests)
    if done.empty:
        return None
    phases = {"prompt (prefill)": done["prompt_tokens"] - done["prefix_hit_tokens"],
              "prompt (prefix cache hit)": done["prefix_hit_tokens"],
              "reasoning": done["reasoning_tokens_spent"] if "reasoning_tokens_spent" in done
              else done["reasoning_tokens"],
              "answer": done["answer_tokens"]}
    if "probe_tokens" in done and done["probe_tokens"].sum() > 0:
        phases["early-exit probes"] = done["probe_tokens"]
    data = pd.concat([pd.DataFrame({"query_type": done["query_type"].astype(str), "phase": k,
                                    "tokens": v.astype(float)}) for k, v in phases.items()])
    data = data.groupby(["query_type", "phase"], as_index=False)["tokens"].sum()
    order = list(phases)
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("query_type:N", title=None), x=alt.X("tokens:Q", title="tokens (completed requests)"),
        color=alt.Color("phase:N", sort=order, title="phase"), order=alt.Order("phase_order:Q"),
        tooltip=["query_type", "phase", alt.Tooltip("tokens:Q", format=",.0f")],
    ).transform_calculate(phase_order=f"indexof({order!r}, datum.phase)").properties(
        width=560, height=max(60, 28 * data["query_type"].nunique()), title="tokens by phase")


def cost_breakdown(summary: dict[str, Any], pools: Sequence[dict[str, Any]]) -> Any:
    """The run's cost in USD by part: each pool's GPU time (busy or idle), and the trace cache and minting jobs
    where the scenario has them."""
    rows = [{"part": f"pool {p['pool']} ({p['replicas'] * p['tensor_parallel']} x {p['gpu']})",
             "usd": float(p.get("cost_usd", 0.0))} for p in pools]
    for key, label in (("trace_cache_lookup_cost_usd", "trace cache lookups"),
                       ("trace_cache_storage_cost_usd", "trace cache storage"), ("minting_cost_usd", "minting jobs")):
        v = summary.get(key)
        if v:
            rows.append({"part": label, "usd": float(v)})
    data = pd.DataFrame(rows)
    return alt.Chart(data).mark_bar().encode(
        y=alt.Y("part:N", title=None, sort="-x"), x=alt.X("usd:Q", title="USD over the run"),
        tooltip=["part", alt.Tooltip("usd:Q", format=",.2f")],
    ).properties(width=560, height=max(60, 28 * len(data)), title="cost breakdown")


def accuracy_vs_tokens(requests: pd.DataFrame, bins: int = 12) -> Any:
    """Accuracy of completed requests against the reasoning tokens they spent (quantile bins), per query type,
    the point's size the requests in its bin; None when answer quality is not modelled."""
    done = _completed(requests)
    if done.empty or "correct" not in done:
        return None
    tokens = done["reasoning_tokens_spent"] if "reasoning_tokens_spent" in done else done["reasoning_tokens"]
    rows = []
    for qt, sub in done.assign(tokens=tokens.astype(float)).groupby("query_type", sort=True):
        edges = np.unique(np.quantile(sub["tokens"], np.linspace(0, 1, bins + 1)))
        which = np.clip(np.searchsorted(edges, sub["tokens"], side="right") - 1, 0, max(len(edges) - 2, 0))
        g = sub.assign(bin=which).groupby("bin")
        rows.append(pd.DataFrame({"query_type": str(qt), "tokens": g["tokens"].mean(),
                                  "accuracy": g["correct"].mean(), "requests": g.size()}))
    data = pd.concat(rows, ignore_index=True)
    return alt.Chart(data).mark_line(point=True).encode(
        x=alt.X("tokens:Q", title="reasoning tokens spent (bin mean)"),
        y=alt.Y("accuracy:Q", title="accuracy", axis=alt.Axis(format="%"), scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("query_type:N", title="query type"), size=alt.Size("requests:Q", legend=None),
        tooltip=["query_type", "tokens", alt.Tooltip("accuracy:Q", format=".1%"), "requests"],
    ).properties(width=560, height=220, title="accuracy against reasoning tokens")


def run_charts(requests: pd.DataFrame, replicas: pd.DataFrame, summary: dict[str, Any],
               pools: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Every chart of one run that has data, by name (the order the report and the dashboard show them)."""
    charts = {"latency-cdf": latency_cdf(requests), "latency-over-time": latency_over_time(requests, replicas),
              "kv-over-time": kv_over_time(replicas, pools), "tokens-by-phase": tokens_by_phase(requests),
              "cost": cost_breakdown(summary, pools), "accuracy-vs-tokens": accuracy_vs_tokens(requests)}
    return {k: v for k, v in charts.items() if v is not None}
