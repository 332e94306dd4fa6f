"""Replay of real serving runs: rebuild a measured server from its experiment folder, replay its requests and
compare simulated with measured TTFT, TPOT and e2e; fit the per-step overhead and the FLOPs factor on such a run.

An experiment folder holds `experiment.json` (engine config, `model_architecture`, `gpu_datasheet`, workload) and
`requests.csv` (arrival_s, input_tokens, output_tokens and each request's measured ttft_s, tpot_s, e2e_s). The
server is rebuilt from the folder alone, so a model or GPU with no preset works: the model from its architecture
block, the GPU from its datasheet block (its step times from the shipped fit of that GPU, or the nearest fit
ported by datasheet).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from simserve.calibration.fitting import solve_increasing
from simserve.hardware import model_from_architecture, preset_for_name
from simserve.metrics import MAX_HELD_VALUES
from simserve.metrics import _batches as metrics_batches
from simserve.metrics import _stats as metrics_stats
from simserve.scenario import Scenario, parse_scenario
from simserve.sim import Results, run

METRICS = ("ttft_s", "tpot_s", "e2e_s")
STATS = ("mean", "p50", "p90", "p99")


class ExperimentError(Exception):
    """An experiment folder that cannot be replayed; the message names the file and field."""


@dataclass
class Experiment:
    path: Path
    meta: dict[str, Any]
    requests: pd.DataFrame


def _get(meta: dict[str, Any], dotted: str, where: Path, required: bool = True) -> Any:
    node: Any = meta
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            if required:
                raise ExperimentError(f"{where}: {dotted}: missing (needed to rebuild the server)")
            return None
        node = node[part]
    return node


def load_experiment(path: str | Path) -> Experiment:
    folder = Path(path)
    meta_path = folder / "experiment.json"
    req_path = folder / "requests.csv"
    if not meta_path.exists():
        raise ExperimentError(f"{meta_path}: missing (an experiment folder has experiment.json and requests.csv)")
    if not req_path.exists():
        raise ExperimentError(f"{req_path}: missing (an experiment folder has experiment.json and requests.csv)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ExperimentError(f"{meta_path}: not valid JSON: {exc}") from None
    try:
        df = pd.read_csv(req_path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ExperimentError(f"{req_path}: cannot be read as CSV: {exc}") from None
    needed = ["arrival_s", "input_tokens", "output_tokens", *METRICS]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ExperimentError(f"{req_path}: missing column(s) {', '.join(missing)}")
    if df.empty:
        raise ExperimentError(f"{req_path}: no requests")
    for key in ("model_architecture", "gpu_datasheet", "engine.max_num_seqs", "engine.max_num_batched_tokens",
                "gpu_datasheet.memory_bytes", "gpu_datasheet.hbm_bandwidth_bytes_per_s",
                "gpu_datasheet.bf16_dense_flops_per_s"):
        _get(meta, key, meta_path)
    try:
        model_from_architecture(meta["model_architecture"])
    except ValueError as exc:
        raise ExperimentError(f"{meta_path}: model_architecture: {exc}") from None
    return Experiment(path=folder, meta=meta, requests=df)


def _shared_prefix_tokens(meta: dict[str, Any]) -> int:
    text = (meta.get("workload") or {}).get("profile_yaml")
    if not text:
        return 0
    try:
        prof = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return 0
    return int((prof.get("data") or {}).get("prefix_tokens") or 0)


# vLLM turned async scheduling (its two-deep batch queue) on by default in 0.14.0 (release notes: "Async
# scheduling is now enabled by default"); earlier V1 servers scheduled synchronously unless told otherwise.
ASYNC_DEFAULT_SINCE_VLLM = (0, 14)


def async_scheduling_of(engine: dict[str, Any]) -> bool:
    """Whether the run's server scheduled asynchronously: `engine.async_scheduling` when the run records it,
    else vLLM's default for its version (on from 0.14); off for other engines or an unreadable version."""
    if engine.get("async_scheduling") is not None:
        return bool(engine["async_scheduling"])
    if str(engine.get("name", "")).lower() != "vllm":
        return False
    try:
        version = tuple(int(x) for x in str(engine.get("version", "")).split(".")[:2])
    except ValueError:
        return False
    return version >= ASYNC_DEFAULT_SINCE_VLLM


def experiment_scenario(exp: Experiment, perf: str = "calibrated", step_overhead_s: float | None = None,
                        fit: str | None = None, compute_scale: float | None = None,
                        bandwidth_scale: float | None = None) -> Scenario:
    """The scenario that rebuilds the experiment's server and replays its requests."""
    meta = exp.meta
    eng = meta.get("engine") or {}
    sheet = meta["gpu_datasheet"]
    # A datasheet of a preset's GPU takes the preset's name, so that GPU's own fit is used rather than a port.
    gpu_name = preset_for_name(str(sheet.get("name", "gpu"))) or str(sheet.get("name", "gpu"))
    pcie = any(s in str(sheet.get("name", "")).lower() for s in ("rtx", "pcie", "geforce"))
    memory = float(sheet["memory_bytes"])
    if memory % 1e9 == 0:  # "80 GB" on a datasheet is 80 GiB of device memory (torch reports 79.2 GiB usable)
        memory = memory / 1e9 * 2**30
    gpu = {"name": gpu_name, "memory_bytes": memory,
           "hbm_bandwidth_bytes_per_s": float(sheet["hbm_bandwidth_bytes_per_s"]),
           "peak_flops_per_s": float(sheet["bf16_dense_flops_per_s"]),
           "interconnect_bandwidth_bytes_per_s": float(sheet.get("interconnect_bandwidth_bytes_per_s")
                                                       or (64e9 if pcie else 900e9)),
           "usd_per_hour": 0.0}
    model = model_from_architecture(meta["model_architecture"], name=str(eng.get("model", "model")))
    block = int(eng.get("block_size") or 16)
    pool: dict[str, Any] = {
        "name": "server", "gpu": gpu, "model": model.model_dump(exclude_none=True),
        "replicas": int(eng.get("data_parallel_size") or 1), "tensor_parallel": int(eng.get("tensor_parallel_size")
                                                                                     or 1),
        "max_num_seqs": int(eng["max_num_seqs"]), "max_num_batched_tokens": int(eng["max_num_batched_tokens"]),
        "kv_block_tokens": block, "gpu_memory_utilization": float(eng.get("gpu_memory_utilization") or 0.9),
        "prefix_caching": bool(eng.get("prefix_caching", True)),
        "async_scheduling": async_scheduling_of(eng),
    }
    if eng.get("kv_cache_capacity_tokens"):
        pool["num_kv_blocks"] = int(eng["kv_cache_capacity_tokens"]) // block
    if eng.get("max_model_len"):
        pool["max_model_len_tokens"] = int(eng["max_model_len"])
    perf_spec: dict[str, Any] = {"kind": perf}
    if step_overhead_s is not None and perf in ("calibrated", "roofline"):
        perf_spec["step_overhead_s"] = step_overhead_s
    if fit is not None and perf == "calibrated":
        perf_spec["fit"] = str(Path(fit).resolve())
    if compute_scale is not None and perf == "calibrated":
        perf_spec["compute_scale"] = compute_scale
    if bandwidth_scale is not None and perf == "calibrated":
        perf_spec["bandwidth_scale"] = bandwidth_scale
    data = {
        "name": f"validate-{exp.path.name}", "seed": 1, "model": pool["model"],
        "cluster": {"pools": [pool]}, "perf": perf_spec, "router": "least_outstanding",
        "workload": {"trace": {"format": "requests", "path": str((exp.path / "requests.csv").resolve()),
                               "shared_prefix_tokens": _shared_prefix_tokens(meta), "prefix_block_tokens": block}},
    }
    return parse_scenario(data, f"{exp.path}/experiment.json", exp.path)


def _stats(df: pd.DataFrame, metric: str, measured: bool = False) -> dict[str, float]:
    """Mean and percentiles of a latency over a run's completed requests (or, `measured`, over every row of a
    measured run, which has no status), by the helper every simulated run's summary uses (simserve.metrics)."""
    rows = df[[metric]].assign(status="completed") if measured else df[["status", metric]]
    out = metrics_stats(metric, metrics_batches(rows), metric, MAX_HELD_VALUES)
    return {st: out[f"{metric}_{st}"] for st in STATS}


def compare(real: pd.DataFrame, sim: pd.DataFrame) -> dict[str, float]:
    """`<metric>_<stat>_real`, `_sim` and `_rel_error` (|sim - real| / real) for TTFT, TPOT and e2e."""
    out: dict[str, float] = {}
    for m in METRICS:
        r, s = _stats(real, m, measured=True), _stats(sim, m)
        for st in STATS:
            out[f"{m}_{st}_real"] = r[st]
            out[f"{m}_{st}_sim"] = s[st]
            out[f"{m}_{st}_rel_error"] = abs(s[st] - r[st]) / r[st] if r[st] > 0 else math.nan
    return out


def per_request(exp: Experiment, results: Results) -> pd.DataFrame:
    """Measured and simulated latencies side by side, in arrival order (the replay keeps the file's order)."""
    real = exp.requests
    t = real["engine_arrival_s"] if "engine_arrival_s" in real.columns else real["arrival_s"]
    real = real.iloc[np.argsort(t.to_numpy(float), kind="stable")].reset_index(drop=True)
    sim = results.requests.sort_values("request_id").reset_index(drop=True)
    out = pd.DataFrame({"request_id": real["request_id"] if "request_id" in real.columns else real.index,
                        "input_tokens": real.input_tokens, "output_tokens": real.output_tokens})
    for m in METRICS:
        out[f"{m}_real"] = real[m].to_numpy(float)
        out[f"{m}_sim"] = sim[m].to_numpy(float) if len(sim) == len(real) else np.nan
    return out


def validate_experiment(path: str | Path | Experiment, perf: str = "calibrated", step_overhead_s: float | None = None,
                        fit: str | None = None, compute_scale: float | None = None,
                        bandwidth_scale: float | None = None) -> tuple[dict[str, Any], pd.DataFrame, Results]:
    """Replay an experiment (a folder, or one already loaded) and compare; also returns the per-request table."""
    exp = path if isinstance(path, Experiment) else load_experiment(path)
    scenario = experiment_scenario(exp, perf, step_overhead_s, fit, compute_scale, bandwidth_scale)
    results = run(scenario)
    report: dict[str, Any] = {"experiment": exp.path.name, "perf": perf,
                              "num_requests_real": int(len(exp.requests)),
                              "num_completed_sim": int(results.summary["num_completed"]),
                              "saturated_sim": bool(results.summary["saturated"]),
                              "kv_capacity_blocks": int(results.pools[0]["kv_capacity_blocks"]),
                              "gpu": scenario.cluster.pools[0].gpu if isinstance(scenario.cluster.pools[0].gpu, str)
                              else scenario.cluster.pools[0].gpu.name,
                              **compare(exp.requests, results.requests)}
    return report, per_request(exp, results), results


def fit_step_overhead(path: str | Path, fit: str | None = None, lo_s: float = 0.0, hi_s: float = 0.01,
                      xtol_s: float = 1e-6, compute_scale: float | None = None) -> float:
    """The per-step overhead (host-side scheduling, sampling, launch gaps: what kernel profiles cannot see) that
    makes the replay's mean TPOT equal the measured one, to within `xtol_s` (mean TPOT grows with the overhead)."""
    exp = load_experiment(path)
    target = _stats(exp.requests, "tpot_s", measured=True)["mean"]

    def mean_tpot(overhead: float) -> float:
        scen = experiment_scenario(exp, "calibrated", overhead, fit, compute_scale)
        return float(run(scen).summary["tpot_s_mean"])

    return solve_increasing(mean_tpot, target, lo_s, hi_s, xtol_s)


def fit_compute_scale(path: str | Path, fit: str, overhead_s: float | None = None, lo: float = 0.8,
                      hi: float = 1.5, xtol: float = 2e-4) -> float | None:
    """The factor on FLOPs (sustained clocks under load, framework work in large steps) that makes the median
    in-engine prefill time of requests that did not queue (`queue_s + prefill_s` in the run) equal the simulated
    time to first token; None when the run does not record prefill_s."""
    exp = load_experiment(path)
    real = exp.requests
    if "prefill_s" not in real.columns or "queue_s" not in real.columns:
        return None
    quiet = (real["queue_s"] < 1e-3).to_numpy() & real["prefill_s"].notna().to_numpy()
    if quiet.sum() < 10:
        return None
    measured = (real["queue_s"] + real["prefill_s"]).to_numpy(float)

    def median_ratio(scale: float) -> float:
        _, table, _ = validate_experiment(exp, "calibrated", overhead_s, fit, scale)
        return float(np.median(table["ttft_s_sim"].to_numpy(float)[quiet] / measured[quiet]))

    return solve_increasing(median_ratio, 1.0, lo, hi, xtol)



def comparison_chart(table: pd.DataFrame, title: str) -> Any:
    """Simulated vs measured per request (one panel per metric), an Altair chart; None without altair."""
    try:
        import altair as alt
    except ImportError:
        return None
    long = pd.concat([pd.DataFrame({"metric": m, "measured_s": table[f"{m}_real"], "simulated_s": table[f"{m}_sim"]})
                      for m in METRICS], ignore_index=True).dropna()
    base = alt.Chart(long).mark_circle(size=18, opacity=0.6).encode(
        x=alt.X("measured_s:Q", scale=alt.Scale(type="log")), y=alt.Y("simulated_s:Q", scale=alt.Scale(type="log")),
        tooltip=["metric", "measured_s", "simulated_s"])
    diag = alt.Chart(long).mark_line(color="gray").encode(x="measured_s:Q", y="measured_s:Q")
    chart = (base + diag).properties(width=260, height=260).facet(column="metric:N").resolve_scale(
        x="independent", y="independent").properties(title=title)
    return chart
