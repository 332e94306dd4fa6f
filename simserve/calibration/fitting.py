"""Fitting: measured profile tables -> the per-operation latency models of simserve.perf.fits (relative-weighted
NNLS on each table's roofline features, then the log-residual grid), held-out and per-table errors, the step
overhead a steps table shows, the steps table's roofline quantities, and the root finding that fits one model
parameter to a replayed run. The only module that needs scipy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq, nnls

from simserve.calibration.profiles import Profile, ProfileError, steps_row_batch
from simserve.hardware import GpuDatasheet, model_from_architecture
from simserve.perf.analytic import step_quantities
from simserve.perf.base import Batch
from simserve.perf.calibrated import CalibratedPerf
from simserve.perf.fits import TABLES, Cols, Fit, OpFit, axis_transform


def _fill_missing(grid: np.ndarray, axes: list[np.ndarray]) -> np.ndarray:
    """Fill NaN cells from the measured cells around them: along each axis, the linear interpolation between the
    nearest measured neighbours (or the nearest one, past an end), weighted by the inverse square of the span
    between those neighbours (extrapolation counts 4x its distance), so the closest evidence dominates; 0 (the base
    model alone) where an axis line has nothing measured."""
    total = np.zeros_like(grid)
    weight = np.zeros_like(grid)
    for ax, x in enumerate(axes):
        moved = np.moveaxis(grid, ax, -1)
        flat = moved.reshape(-1, moved.shape[-1])
        est = np.full_like(flat, np.nan)
        span = np.full_like(flat, np.nan)
        for i, line in enumerate(flat):
            ok = ~np.isnan(line)
            if ok.all() or not ok.any():
                continue
            xo = x[ok]
            est[i] = np.interp(x, xo, line[ok])
            j = np.searchsorted(xo, x)
            below = np.where(j > 0, x - xo[np.clip(j - 1, 0, len(xo) - 1)], np.inf)
            above = np.where(j < len(xo), xo[np.clip(j, 0, len(xo) - 1)] - x, np.inf)
            inside = np.isfinite(below) & np.isfinite(above)
            span[i] = np.where(inside, below + above, 4 * np.minimum(below, above))
        e = np.moveaxis(est.reshape(moved.shape), -1, ax)
        g = np.moveaxis(span.reshape(moved.shape), -1, ax)
        good = ~np.isnan(e)
        w = np.where(good, 1.0 / np.maximum(np.nan_to_num(g, nan=1.0), 1e-9) ** 2, 0.0)
        total += np.where(good, e, 0.0) * w
        weight += w
    filled = np.where(weight > 0, total / np.maximum(weight, 1e-300), 0.0)
    return np.where(np.isnan(grid), filled, grid)


def solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float, xtol: float) -> float:
    """x in [lo, hi] with f(x) = target, f non-decreasing (a replayed run's statistic against one model parameter),
    to within `xtol` by Brent's method (scipy.optimize.brentq: bracketing, so it converges on a step-wise f too, in
    fewer evaluations than bisection). The bound itself when target lies outside [f(lo), f(hi)]. Each f(x) is a
    whole replay, so none is computed twice."""
    seen: dict[float, float] = {}

    def excess(x: float) -> float:
        if x not in seen:
            seen[x] = f(x) - target
        return seen[x]

    if excess(lo) >= 0:
        return lo
    if excess(hi) <= 0:
        return hi
    return float(brentq(excess, lo, hi, xtol=xtol))


def columns_of(df: pd.DataFrame) -> Cols:
    """A table's numeric columns as float arrays, what the feature functions and corrections take."""
    return {c: df[c].to_numpy(dtype=float) for c in df.columns if c not in ("op", "latency_s") and
            df[c].dtype != object}


def ape_stats(pred: np.ndarray, meas: np.ndarray) -> dict[str, Any]:
    ape = np.abs(pred - meas) / meas
    return _ape_summary(ape)


def _ape_summary(ape: np.ndarray) -> dict[str, Any]:
    if not len(ape):
        return {"n": 0, "mape": float("nan"), "p90_ape": float("nan")}
    return {"n": int(len(ape)), "mape": float(ape.mean()), "p90_ape": float(np.quantile(ape, 0.9))}


def fit_table(table: str, df: pd.DataFrame, gpu: GpuDatasheet, residual: bool = True) -> OpFit:
    """Fit one table: relative-weighted NNLS on its roofline features, then the log-residual grid."""
    kind = TABLES[table.split("/")[0]]
    cols = columns_of(df)
    t = df["latency_s"].to_numpy(dtype=float)
    x = kind.features(cols, gpu)
    scale = np.where(x.max(axis=0) > 0, x.max(axis=0) / t.max(), 1.0)  # conditioning only
    coef_scaled, _ = nnls(x / scale / t[:, None], np.ones_like(t), maxiter=50 * x.shape[1])
    coef = coef_scaled / scale
    fit = OpFit(table=table, coef=coef)
    base = x @ coef
    if residual and kind.axes and (base > 0).all():
        axes = {a: np.unique(cols[a]) for a in kind.axes if a in cols and len(np.unique(cols[a])) > 1}
        if axes:
            shape = tuple(len(v) for v in axes.values())
            sums = np.zeros(shape)
            counts = np.zeros(shape)
            idx = tuple(np.searchsorted(v, cols[a]) for a, v in axes.items())
            np.add.at(sums, idx, np.log(t / base))
            np.add.at(counts, idx, 1)
            grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            fit.axes = axes
            fit.residual = _fill_missing(grid, [axis_transform(v) for v in axes.values()])
    fit.stats["train"] = ape_stats(fit.predict_s(cols, gpu), t)
    fit.stats["base_train"] = ape_stats(base, t)
    return fit


def split_tables(profile: Profile) -> dict[str, pd.DataFrame]:
    """The profile's tables as fit units: elementwise is split per op; steps get their roofline quantities
    (which need the profile's model architecture)."""
    out: dict[str, pd.DataFrame] = {}
    for name, df in profile.tables.items():
        if name == "elementwise":
            for op, sub in df.groupby("op"):
                out[f"elementwise/{op}"] = sub.drop(columns=["op"]).reset_index(drop=True)
        elif name == "steps":
            out["steps"] = steps_quantities_frame(profile, df)
        else:
            out[name] = df
    return out


def steps_quantities_frame(profile: Profile, df: pd.DataFrame) -> pd.DataFrame:
    if profile.metadata.model is None:
        raise ProfileError(f"{profile.path}/metadata.yaml: model: a profile with a steps table needs the "
                           "architecture its steps ran (model: {num_layers, hidden_size, ...})")
    try:
        model = model_from_architecture(profile.metadata.model, name=str(profile.metadata.model.get("name", "")))
    except ValueError as exc:
        raise ProfileError(f"{profile.path}/metadata.yaml: model: {exc}") from None
    rows = []
    for _, r in df.iterrows():
        dec, new, cached = steps_row_batch(r)
        q = step_quantities(model, Batch(dec, new, cached))
        rows.append({"num_seqs": q.num_seqs, "weight_bytes": q.weight_bytes, "linear_flops": q.linear_flops,
                     "kv_bytes": q.kv_bytes, "attention_flops": q.attention_flops, "latency_s": r.latency_s})
    return pd.DataFrame(rows)


def fit_profile(profile: Profile, heldout_fraction: float = 0.2, seed: int = 0, residual: bool = True,
                tables: list[str] | None = None) -> Fit:
    """Fit every table of a profile. Held-out error: fit on a random (1 - heldout_fraction) of each table's rows,
    measure on the rest; the returned fit is then refitted on all rows."""
    rng = np.random.default_rng(seed)
    gpu = profile.metadata.gpu
    fits: dict[str, OpFit] = {}
    all_ape: list[np.ndarray] = []
    for name, df in split_tables(profile).items():
        if tables is not None and name.split("/")[0] not in tables:
            continue
        heldout: dict[str, Any] = {"n": 0}
        if heldout_fraction > 0 and len(df) >= 10:
            test = rng.random(len(df)) < heldout_fraction
            if test.any() and (~test).sum() >= len(TABLES[name.split("/")[0]].feature_names):
                part = fit_table(name, df[~test].reset_index(drop=True), gpu, residual)
                tdf = df[test].reset_index(drop=True)
                meas = tdf.latency_s.to_numpy(dtype=float)
                ape = np.abs(part.predict_s(columns_of(tdf), gpu) - meas) / meas
                heldout = _ape_summary(ape)
                if name != "steps":
                    all_ape.append(ape)
        fit = fit_table(name, df, gpu, residual)
        fit.stats["heldout"] = heldout
        fits[name] = fit
    fit_out = Fit(gpu=gpu, tables=fits, step_overhead_s=0.0)
    overhead = 0.0
    if "steps" in profile.tables:
        overhead, composed = composed_step_overhead(fit_out, profile)
        if composed:
            fits["steps"].stats["composed"] = composed
    source: dict[str, Any] = {"profile": str(profile.path.name) if profile.path else None, **{
        k: v for k, v in profile.metadata.source.items() if isinstance(v, str | int | float)}}
    if all_ape:
        source["heldout_overall"] = _ape_summary(np.concatenate(all_ape))
    if "steps" in profile.tables:
        source["step_overhead"] = "steps table: median of measured step minus composed operations"
    return Fit(gpu=gpu, tables=fits, source=source, step_overhead_s=overhead)


def composed_step_overhead(fit: Fit, profile: Profile) -> tuple[float, dict[str, Any]]:
    """What whole measured steps take beyond the sum of their fitted operations (framework and launch
    overhead), as the median difference (>= 0), and the composed model's error on the steps with it."""
    if not all(t in fit.tables for t in ("gemm", "context_attention", "generation_attention")):
        return float(fit.tables["steps"].coef[0]), {}
    assert profile.metadata.model is not None
    model = model_from_architecture(profile.metadata.model)
    perf = CalibratedPerf(fit, model, 1, 0.0)
    df = profile.tables["steps"]
    pred = []
    for _, r in df.iterrows():
        dec, new, cached = steps_row_batch(r)
        pred.append(perf.step_time_s(Batch(dec, new, cached)))
    meas = df.latency_s.to_numpy(dtype=float)
    pred_arr = np.asarray(pred)
    overhead = max(0.0, float(np.median(meas - pred_arr)))
    return overhead, ape_stats(pred_arr + overhead, meas)


def validate_fit(fit: Fit, profile: Profile) -> dict[str, Any]:
    """Predict every row of a profile's op tables; n, mape and p90_ape per table and overall."""
    report: dict[str, Any] = {}
    all_pred, all_meas = [], []
    for name, df in split_tables(profile).items():
        if name not in fit.tables:
            continue
        pred = fit.tables[name].predict_s(columns_of(df), fit.gpu)
        meas = df.latency_s.to_numpy(dtype=float)
        top = name.split("/")[0]
        report.setdefault(top, {"pred": [], "meas": []})
        report[top]["pred"].append(pred)
        report[top]["meas"].append(meas)
        all_pred.append(pred)
        all_meas.append(meas)
    out: dict[str, Any] = {}
    for top, d in report.items():
        out[top] = ape_stats(np.concatenate(d["pred"]), np.concatenate(d["meas"]))
    if all_pred:
        out["overall"] = ape_stats(np.concatenate(all_pred), np.concatenate(all_meas))
    return out
