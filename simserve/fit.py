"""The fit: measured profile tables -> per-operation latency models (one routine for every table and source).

Each table's latency is modelled as a physics base times a measured correction:

    t = (c . x) * exp(r(axes))

- x: roofline quantities of the operation computed from the GPU's datasheet (a constant, FLOPs over peak, bytes
  over bandwidth, a per-sequence constant, ...; see FEATURES). c >= 0 is fitted by non-negative least squares with
  relative weighting (each row's residual divided by its latency), so a 10 us decode step counts as much as a
  100 ms prefill. 1/c of a FLOPs or bytes term is the achieved efficiency.
- r: the log of measured over base latency, tabulated on the profile's own grid (log axes) and interpolated
  multilinearly; cells the grid lacks are filled from their neighbours along each axis; queries outside the grid
  use the nearest edge. r carries what a roofline cannot (tile and wave quantisation, kernel switches) and falls
  back to 0 (the base alone) where nothing was measured.

Porting to a GPU that was never profiled keeps c and r and recomputes x from the new datasheet: efficiencies are
assumed to carry over, peaks and bandwidths do not.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import nnls

from simserve.hardware import GpuDatasheet
from simserve.profiles import Profile, ProfileError, steps_row_batch

FIT_SCHEMA = "simserve-fit/1"
BYTES = 2.0  # profiles are of 16-bit kernels (bf16 / fp16)

Cols = dict[str, np.ndarray]


def gemm_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    m, n, k = c["m"], c["n"], c["k"]
    return np.column_stack([np.ones_like(m), 2 * m * n * k / gpu.peak_flops_per_s,
                            BYTES * (m * k + n * k + m * n) / gpu.hbm_bandwidth_bytes_per_s])


def context_attention_quantities(c: Cols) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) of prefill attention: causal pairs q x (cached + (q+1)/2); Q and O of the new tokens, K and V
    of all tokens read, K and V of the new tokens written."""
    b, q, cached = c["batch_size"], c["new_tokens"], c["cached_tokens"]
    h, kvh, d = c["num_heads"], c["num_kv_heads"], c["head_dim"]
    pairs = b * q * (cached + (q + 1) / 2)
    flops = 4 * h * d * pairs
    nbytes = BYTES * b * d * (2 * q * h + 2 * (q + cached) * kvh + 2 * q * kvh)
    return flops, nbytes


def attention_features(b: np.ndarray, flops: np.ndarray, nbytes: np.ndarray, gpu: GpuDatasheet) -> np.ndarray:
    """[1, sequences, FLOPs / peak, bytes / bandwidth] of attention calls (prefill or decode, any layout)."""
    return np.column_stack([np.ones_like(b), b, flops / gpu.peak_flops_per_s, nbytes / gpu.hbm_bandwidth_bytes_per_s])


def context_attention_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    flops, nbytes = context_attention_quantities(c)
    return attention_features(c["batch_size"], flops, nbytes, gpu)


def generation_attention_quantities(c: Cols) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) of decode attention: one query per sequence over kv_tokens; K and V read."""
    b, kv = c["batch_size"], c["kv_tokens"]
    h, kvh, d = c["num_heads"], c["num_kv_heads"], c["head_dim"]
    return 4 * b * h * d * kv, BYTES * b * d * (2 * kv * kvh + 2 * h)


def generation_attention_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    flops, nbytes = generation_attention_quantities(c)
    return attention_features(c["batch_size"], flops, nbytes, gpu)


def allreduce_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    n, size = c["num_gpus"], c["message_bytes"]
    return np.column_stack([np.ones_like(n), 2 * (n - 1) / n * size / gpu.interconnect_bandwidth_bytes_per_s])


def elementwise_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    t, w = c["num_tokens"], c["width"]
    return np.column_stack([np.ones_like(t), 2 * BYTES * t * w / gpu.hbm_bandwidth_bytes_per_s])


def steps_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    """[1, sequences, weight bytes / bandwidth, linear FLOPs / peak, KV bytes / bandwidth, attention FLOPs / peak]:
    BLIS's terms, for a profile of whole steps."""
    bw, peak = gpu.hbm_bandwidth_bytes_per_s, gpu.peak_flops_per_s
    return np.column_stack([np.ones_like(c["num_seqs"]), c["num_seqs"], c["weight_bytes"] / bw,
                            c["linear_flops"] / peak, c["kv_bytes"] / bw, c["attention_flops"] / peak])


@dataclass(frozen=True)
class TableKind:
    features: Callable[[Cols, GpuDatasheet], np.ndarray]
    feature_names: tuple[str, ...]
    axes: tuple[str, ...]  # candidate residual axes (columns); single-valued ones are dropped


TABLES: dict[str, TableKind] = {
    "gemm": TableKind(gemm_features, ("const_s", "flops_over_peak", "bytes_over_bandwidth"), ("m", "n", "k")),
    "context_attention": TableKind(
        context_attention_features, ("const_s", "per_seq_s", "flops_over_peak", "bytes_over_bandwidth"),
        ("batch_size", "new_tokens", "cached_tokens", "num_heads", "num_kv_heads", "head_dim")),
    "generation_attention": TableKind(
        generation_attention_features, ("const_s", "per_seq_s", "flops_over_peak", "bytes_over_bandwidth"),
        ("batch_size", "kv_tokens", "num_heads", "num_kv_heads", "head_dim")),
    "allreduce": TableKind(allreduce_features, ("const_s", "bytes_over_link"), ("num_gpus", "message_bytes")),
    "elementwise": TableKind(elementwise_features, ("const_s", "bytes_over_bandwidth"), ("num_tokens", "width")),
    "steps": TableKind(steps_features, ("const_s", "per_seq_s", "weight_bytes_over_bandwidth",
                                        "linear_flops_over_peak", "kv_bytes_over_bandwidth",
                                        "attention_flops_over_peak"), ()),
}


def _axis_transform(values: np.ndarray) -> np.ndarray:
    return np.log1p(values)


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


@dataclass
class OpFit:
    """A fitted table: coefficients of its roofline features and the log-residual grid."""

    table: str
    coef: np.ndarray
    axes: dict[str, np.ndarray] = field(default_factory=dict)  # column -> grid values (sorted, raw units)
    residual: np.ndarray | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> TableKind:
        return TABLES[self.table.split("/")[0]]

    def correction(self, cols: Cols) -> np.ndarray:
        n = len(next(iter(cols.values())))
        if self.residual is None or not self.axes:
            return np.ones(n)
        pts = []
        for name, grid in self.axes.items():
            v = np.broadcast_to(np.asarray(cols[name], dtype=float), (n,))
            pts.append(np.clip(_axis_transform(v), _axis_transform(grid[0]), _axis_transform(grid[-1])))
        return np.exp(_interp_grid([_axis_transform(g) for g in self.axes.values()], self.residual, pts))

    def predict_s(self, cols: Cols, gpu: GpuDatasheet) -> np.ndarray:
        return self.predict_from_features(self.kind.features(cols, gpu), cols)

    def predict_from_features(self, x: np.ndarray, cols: Cols) -> np.ndarray:
        """Latency from features computed by the caller (another weight width, MLA attention), with the table's
        correction at `cols`."""
        return (x @ self.coef) * self.correction(cols)

    # -- serialisation --------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"features": list(self.kind.feature_names), "coef": [float(x) for x in self.coef]}
        if self.residual is not None:
            d["axes"] = {k: [float(x) for x in v] for k, v in self.axes.items()}
            d["residual_float32_b64"] = base64.b64encode(self.residual.astype("<f4").tobytes()).decode()
        d["stats"] = self.stats
        return d

    @classmethod
    def from_dict(cls, table: str, d: dict[str, Any]) -> OpFit:
        axes = {k: np.asarray(v, dtype=float) for k, v in d.get("axes", {}).items()}
        residual = None
        if "residual_float32_b64" in d:
            shape = tuple(len(v) for v in axes.values())
            residual = np.frombuffer(base64.b64decode(d["residual_float32_b64"]), dtype="<f4").astype(float)
            residual = residual.reshape(shape)
        coef = np.asarray(d["coef"], dtype=float)
        kind = TABLES[table.split("/")[0]]
        if len(coef) != len(kind.feature_names):
            raise ValueError(f"tables.{table}.coef: expected {len(kind.feature_names)} values "
                             f"({', '.join(kind.feature_names)}), got {len(coef)}")
        return cls(table=table, coef=coef, axes=axes, residual=residual, stats=d.get("stats", {}))


def _interp_grid(axes: list[np.ndarray], values: np.ndarray, pts: list[np.ndarray]) -> np.ndarray:
    """Multilinear interpolation on a regular (not uniform) grid; points are inside the grid."""
    n = len(pts[0])
    idx_lo, weights = [], []
    for x, p in zip(axes, pts, strict=True):
        if len(x) == 1:
            idx_lo.append(np.zeros(n, dtype=np.int64))
            weights.append(np.zeros(n))
            continue
        i = np.clip(np.searchsorted(x, p, side="right") - 1, 0, len(x) - 2)
        w = (p - x[i]) / (x[i + 1] - x[i])
        idx_lo.append(i)
        weights.append(w)
    out = np.zeros(n)
    dims = len(axes)
    for corner in range(1 << dims):
        w_c = np.ones(n)
        idx = []
        for d in range(dims):
            up = (corner >> d) & 1
            if len(axes[d]) == 1:
                if up:
                    w_c = w_c * 0.0
                idx.append(idx_lo[d])
                continue
            w_c = w_c * (weights[d] if up else 1.0 - weights[d])
            idx.append(idx_lo[d] + up)
        if not w_c.any():
            continue
        out += w_c * values[tuple(idx)]
    return out


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
            fit.residual = _fill_missing(grid, [_axis_transform(v) for v in axes.values()])
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
    from simserve.hardware import model_from_architecture  # local: hardware does not import the fit
    from simserve.perf import step_quantities

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
        q = step_quantities(model, dec, new, cached)
        rows.append({"num_seqs": q.num_seqs, "weight_bytes": q.weight_bytes, "linear_flops": q.linear_flops,
                     "kv_bytes": q.kv_bytes, "attention_flops": q.attention_flops, "latency_s": r.latency_s})
    return pd.DataFrame(rows)


@dataclass
class Fit:
    """A GPU's calibration: the datasheet it was fitted against and one OpFit per table."""

    gpu: GpuDatasheet
    tables: dict[str, OpFit]
    source: dict[str, Any] = field(default_factory=dict)
    step_overhead_s: float = 0.0
    compute_scale: float = 1.0  # sustained-load factor on every FLOPs term (1: the kernels' own speed)
    path: Path | None = None

    @property
    def effective_gpu(self) -> GpuDatasheet:
        """The datasheet the step model computes features from: peak FLOP/s divided by compute_scale."""
        if self.compute_scale == 1.0:
            return self.gpu
        return self.gpu.model_copy(update={"peak_flops_per_s": self.gpu.peak_flops_per_s / self.compute_scale})

    def ported_to(self, gpu: GpuDatasheet) -> Fit:
        """The same efficiencies and corrections on another GPU's datasheet (features are recomputed)."""
        src = dict(self.source, ported_from=self.gpu.name)
        return Fit(gpu=gpu, tables=self.tables, source=src, step_overhead_s=self.step_overhead_s,
                   compute_scale=self.compute_scale, path=self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": FIT_SCHEMA, "gpu": self.gpu.model_dump(exclude_none=True), "source": self.source,
                "step_overhead_s": self.step_overhead_s, "compute_scale": self.compute_scale,
                "tables": {k: v.to_dict() for k, v in self.tables.items()}}

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, width=1_000_000))
        return out


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
    from simserve.hardware import model_from_architecture
    from simserve.oplevel import CalibratedPerf
    from simserve.perf import Batch

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


class FitError(Exception):
    """A fit file that cannot be used."""


def load_fit(path: str | Path) -> Fit:
    p = Path(path)
    try:
        raw = yaml.load(p.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise FitError(f"{p}: no such fit file") from None
    except yaml.YAMLError as exc:
        raise FitError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or raw.get("schema") != FIT_SCHEMA:
        raise FitError(f"{p}: schema: expected {FIT_SCHEMA!r} (write one with `simserve calibrate fit`)")
    try:
        gpu = GpuDatasheet.model_validate(raw["gpu"])
        tables = {k: OpFit.from_dict(k, v) for k, v in raw["tables"].items()}
    except (KeyError, ValueError, TypeError) as exc:
        raise FitError(f"{p}: {exc}") from None
    return Fit(gpu=gpu, tables=tables, source=raw.get("source", {}),
               step_overhead_s=float(raw.get("step_overhead_s", 0.0)),
               compute_scale=float(raw.get("compute_scale", 1.0)), path=p)


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
