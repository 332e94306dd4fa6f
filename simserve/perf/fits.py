"""Fits at run time: the per-operation latency models a calibrated step is composed of, read from fit files
(read-only), and which fit a GPU gets (a user's folder of fits, the fits shipped in simserve/data/fits, or the
nearest shipped one ported by datasheet). Fitting them is simserve.calibration.fitting's job.

Each table's latency is modelled as a physics base times a measured correction:

    t = (c . x) * exp(r(axes))

- x: roofline quantities of the operation computed from the GPU's datasheet (a constant, FLOPs over peak, bytes
  over bandwidth, a per-sequence constant, ...; see TABLES). c >= 0 is fitted by non-negative least squares with
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
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from simserve.hardware import GpuDatasheet, GpuSpec, datasheet_of
from simserve.perf.analytic import causal_pairs

FIT_SCHEMA = "simserve-fit/1"
BYTES = 2.0  # profiles are of 16-bit kernels (bf16 / fp16)
SHIPPED_FITS_DIR = Path(__file__).resolve().parent.parent / "data" / "fits"

Cols = dict[str, np.ndarray]


class FitError(Exception):
    """A fit file that cannot be used."""


# -- roofline features of each table ---------------------------------------------------------------------------
def gemm_features(c: Cols, gpu: GpuDatasheet) -> np.ndarray:
    m, n, k = c["m"], c["n"], c["k"]
    return np.column_stack([np.ones_like(m), 2 * m * n * k / gpu.peak_flops_per_s,
                            BYTES * (m * k + n * k + m * n) / gpu.hbm_bandwidth_bytes_per_s])


def context_attention_quantities(c: Cols) -> tuple[np.ndarray, np.ndarray]:
    """(FLOPs, bytes) of prefill attention: causal pairs (simserve.perf.analytic.causal_pairs) of batch_size
    chunks; Q and O of the new tokens, K and V of all tokens read, K and V of the new tokens written."""
    b, q, cached = c["batch_size"], c["new_tokens"], c["cached_tokens"]
    h, kvh, d = c["num_heads"], c["num_kv_heads"], c["head_dim"]
    flops = 4 * h * d * (b * causal_pairs(q, cached))
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
    BLIS's terms, for a profile of whole steps (simserve.perf.analytic.step_quantities)."""
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


# -- one fitted table ----------------------------------------------------------------------------------------------
def axis_transform(values: np.ndarray) -> np.ndarray:
    """The scale a residual grid's axes are tabulated and interpolated on: log(1 + x)."""
    return np.log1p(values)


def _interp_grid(axes: list[np.ndarray], values: np.ndarray, pts: list[np.ndarray]) -> np.ndarray:
    """Multilinear interpolation on a regular (not uniform) grid; points are inside the grid. The points' weights
    (1 - w, w) and their lower corner's flat index into `values` are made once per axis; each of the 2**dims
    corners then multiplies its weights in axis order and reads its values at the flat index plus its offset."""
    n = len(pts[0])
    dims = len(axes)
    flat = np.zeros(n, dtype=np.int64)
    strides: list[int] = np.cumprod([1, *values.shape[:0:-1]])[::-1].tolist()  # C order
    factors: list[tuple[np.ndarray, np.ndarray] | None] = []  # per axis (1 - w, w); None: one grid value
    for d, (x, p) in enumerate(zip(axes, pts, strict=True)):
        if len(x) == 1:
            factors.append(None)
            continue
        i = np.clip(np.searchsorted(x, p, side="right") - 1, 0, len(x) - 2)
        w = (p - x[i]) / (x[i + 1] - x[i])
        factors.append((1.0 - w, w))
        flat += i * strides[d]
    table = values.ravel()
    out = np.zeros(n)
    for corner in range(1 << dims):
        w_c: np.ndarray | None = None
        offset = 0
        for d in range(dims):
            up = (corner >> d) & 1
            f = factors[d]
            if f is None:
                if up:
                    break  # one grid value: no corner above it
                continue
            w_c = f[up] if w_c is None else w_c * f[up]
            offset += up * strides[d]
        else:
            if w_c is None:
                w_c = np.ones(n)
            if w_c.any():
                out += w_c * table.take(flat + offset)
    return out


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
            pts.append(np.clip(axis_transform(v), axis_transform(grid[0]), axis_transform(grid[-1])))
        return np.exp(_interp_grid([axis_transform(g) for g in self.axes.values()], self.residual, pts))

    def predict_s(self, cols: Cols, gpu: GpuDatasheet) -> np.ndarray:
        return self.predict_from_features(self.kind.features(cols, gpu), cols)

    def predict_from_features(self, x: np.ndarray, cols: Cols) -> np.ndarray:
        """Latency from features computed by the caller (another weight width, MLA attention), with the table's
        correction at `cols`."""
        return (x @ self.coef) * self.correction(cols)

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


# -- a GPU's fit ---------------------------------------------------------------------------------------------------
@dataclass
class Fit:
    """A GPU's calibration: the datasheet it was fitted against and one OpFit per table."""

    gpu: GpuDatasheet
    tables: dict[str, OpFit]
    source: dict[str, Any] = field(default_factory=dict)
    step_overhead_s: float = 0.0
    compute_scale: float = 1.0  # sustained-load factor on every FLOPs term (1: the kernels' own speed)
    path: Path | None = None
    bandwidth_scale: float = 1.0  # factor on every memory-bytes term (1: the profiled kernels' own efficiency)

    @property
    def effective_gpu(self) -> GpuDatasheet:
        """The datasheet the step model computes features from: peak FLOP/s divided by compute_scale and memory
        bandwidth by bandwidth_scale (each fitted term is linear in its feature, so a scale multiplies exactly
        the FLOPs, or the bytes, part of every operation)."""
        if self.compute_scale == 1.0 and self.bandwidth_scale == 1.0:
            return self.gpu
        return self.gpu.model_copy(update={
            "peak_flops_per_s": self.gpu.peak_flops_per_s / self.compute_scale,
            "hbm_bandwidth_bytes_per_s": self.gpu.hbm_bandwidth_bytes_per_s / self.bandwidth_scale})

    def ported_to(self, gpu: GpuDatasheet) -> Fit:
        """The same efficiencies and corrections on another GPU's datasheet (features are recomputed)."""
        src = dict(self.source, ported_from=self.gpu.name)
        return Fit(gpu=gpu, tables=self.tables, source=src, step_overhead_s=self.step_overhead_s,
                   compute_scale=self.compute_scale, path=self.path, bandwidth_scale=self.bandwidth_scale)

    def on(self, gpu: GpuDatasheet) -> Fit:
        """This fit for `gpu`: as it is when it was fitted on that GPU (its name or preset), else ported."""
        return self if gpu.name in (self.gpu.name, self.gpu.preset) else self.ported_to(gpu)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": FIT_SCHEMA, "gpu": self.gpu.model_dump(exclude_none=True), "source": self.source,
                "step_overhead_s": self.step_overhead_s, "compute_scale": self.compute_scale,
                **({"bandwidth_scale": self.bandwidth_scale} if self.bandwidth_scale != 1.0 else {}),
                "tables": {k: v.to_dict() for k, v in self.tables.items()}}

    def save(self, path: str | Path) -> Path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, width=1_000_000))
        return out


def load_fit(path: str | Path) -> Fit:
    """Read a fit file (FitError names the file and what is wrong)."""
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
               compute_scale=float(raw.get("compute_scale", 1.0)), path=p,
               bandwidth_scale=float(raw.get("bandwidth_scale", 1.0)))


@lru_cache(maxsize=16)
def _load_cached(path: str, mtime: float) -> Fit:  # mtime: a rewritten file is read again
    return load_fit(path)


def load_fit_cached(path: str | Path) -> Fit:
    """load_fit, read once per file version (a sweep builds many replicas on the same fit). Shared: do not
    modify the Fit returned (dataclasses.replace it)."""
    p = Path(path)
    if not p.exists():
        raise FitError(f"{p}: no such fit file")
    return _load_cached(str(p.resolve()), p.stat().st_mtime)


# -- which fit a GPU gets --------------------------------------------------------------------------------------------
def fits_in(folder: Path) -> dict[str, Path]:
    """Fit name (the file's stem: a GPU preset's name) -> file, for the fits in a folder."""
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def shipped_fits() -> dict[str, Path]:
    """GPU preset name -> the fit shipped for it."""
    return fits_in(SHIPPED_FITS_DIR)


def fit_for_gpu(gpu: GpuSpec | GpuDatasheet, fits_dir: Path | None = None) -> Fit:
    """The fit of this GPU: `<gpu name>.yaml` in the user's `fits_dir` when there is one, else the shipped fit of
    that name, else the nearest shipped fit (by bandwidth and peak FLOP/s, in log space) ported to this GPU's
    datasheet. A fit named after the GPU but fitted on another one is ported too (Fit.on)."""
    sheet = gpu if isinstance(gpu, GpuDatasheet) else datasheet_of(gpu)
    if fits_dir is not None:
        if not fits_dir.is_dir():
            raise FitError(f"{fits_dir}: no such folder of fits")
        mine = fits_in(fits_dir).get(sheet.name)
        if mine is not None:
            return load_fit_cached(mine).on(sheet)
    fits = shipped_fits()
    if not fits:
        raise FitError(f"no shipped fits in {SHIPPED_FITS_DIR}")
    if sheet.name in fits:
        return load_fit_cached(fits[sheet.name]).on(sheet)
    return nearest_fit(sheet, [load_fit_cached(p) for p in fits.values()]).ported_to(sheet)


def nearest_fit(sheet: GpuDatasheet, fits: list[Fit]) -> Fit:
    def distance(f: Fit) -> float:
        return math.hypot(math.log(f.gpu.hbm_bandwidth_bytes_per_s / sheet.hbm_bandwidth_bytes_per_s),
                          math.log(f.gpu.peak_flops_per_s / sheet.peak_flops_per_s))

    return min(fits, key=distance)
