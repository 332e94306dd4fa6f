"""The scenario's `perf:` blocks: one pydantic spec per step-time model, each building its model with `build(ctx)`.

The models themselves (simserve.perf.analytic, simserve.perf.calibrated) are plain classes that the install compiles
with the engine (mypyc does not translate pydantic models, so the specs live here, apart from them).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from simserve.hardware import GpuSpec, datasheet_of
from simserve.perf.analytic import LinearPerf, RooflinePerf
from simserve.perf.base import PerfContext
from simserve.perf.calibrated import CalibratedPerf
from simserve.perf.fits import Fit, fit_for_gpu, load_fit_cached

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


class LinearPerfSpec(BaseModel):
    """step = step_overhead_s + per_prefill_token_s x prefill tokens + per_decode_seq_s x decoding sequences
    + per_kv_token_s x context tokens the decoding sequences attend over."""

    model_config = _FROZEN
    kind: Literal["linear"] = Field(default="linear", description="step time linear in the batch's work")
    step_overhead_s: float = Field(default=0.0, ge=0, description="seconds every step takes")
    per_prefill_token_s: float = Field(default=0.0, ge=0, description="seconds per prompt token computed")
    per_decode_seq_s: float = Field(default=0.0, ge=0, description="seconds per decoding sequence")
    per_kv_token_s: float = Field(default=0.0, ge=0, description="seconds per context token the decoding "
                                  "sequences attend over")

    def build(self, ctx: PerfContext) -> LinearPerf:
        return LinearPerf(self.step_overhead_s, self.per_prefill_token_s, self.per_decode_seq_s, self.per_kv_token_s)


class RooflinePerfSpec(BaseModel):
    """Roofline step time for one replica of `tensor_parallel` GPUs:

    overhead + max(bytes moved / (HBM bandwidth x memory_efficiency), FLOPs / (peak x compute_efficiency))
    + tensor-parallel all-reduce time. Bytes: weights (read once per step) plus KV read by attention and KV
    written. FLOPs: 2 x active params per token plus attention (4 x layers x heads x head_dim per query-key
    pair; a prefill chunk's queries see its cached tokens and, causally, its own). Efficiencies default to the
    middle of the achievable ranges in REFERENCE.md (decode GEMV 75-88% of HBM bandwidth; large prefill GEMMs
    70-80% of peak).
    """

    model_config = _FROZEN
    kind: Literal["roofline"] = Field(default="roofline", description="step time from datasheet peaks")
    memory_efficiency: float = Field(default=0.8, gt=0, le=1, description="share of HBM bandwidth achieved")
    compute_efficiency: float = Field(default=0.7, gt=0, le=1, description="share of peak FLOPs achieved")
    step_overhead_s: float = Field(default=0.002, ge=0, description="scheduler, sampling and launch overhead")
    allreduce_latency_s: float = Field(default=30e-6, ge=0, description="per all-reduce call (NCCL floor)")

    def build(self, ctx: PerfContext) -> RooflinePerf:
        return RooflinePerf(ctx, self.memory_efficiency, self.compute_efficiency, self.step_overhead_s,
                            self.allreduce_latency_s)


class CalibratedPerfSpec(BaseModel):
    """Step time composed from operations fitted on measured profiles. Without `fit`, each pool uses the fit of its
    GPU: `<gpu>.yaml` in `fits_dir` when given and there, else the one shipped for it (a100-80gb, h100-sxm), else
    the nearest shipped one ported by datasheet."""

    model_config = _FROZEN
    kind: Literal["calibrated"] = Field(default="calibrated", description="step time from operations fitted on "
                                        "measured kernels (docs/calibration.md)")
    fit: str | None = Field(default=None, description="a fit file (simserve calibrate fit); relative to the scenario")
    fits_dir: str | None = Field(default=None, description="a folder of your fits, each named after a GPU preset "
                                 "(h100-sxm.yaml); a pool's GPU's fit there wins over the shipped one; relative to "
                                 "the scenario")
    step_overhead_s: float | None = Field(default=None, ge=0, description="per-step CPU overhead; defaults to the "
                                          "fit's")
    compute_scale: float | None = Field(default=None, gt=0, description="sustained-load factor on every FLOPs "
                                        "term; defaults to the fit's")
    bandwidth_scale: float | None = Field(default=None, gt=0, description="factor on every memory-bytes term "
                                          "(above 1: memory slower than the fit's kernels reached); defaults to "
                                          "the fit's")

    @model_validator(mode="after")
    def _one_source(self) -> CalibratedPerfSpec:
        if self.fit is not None and self.fits_dir is not None:
            raise ValueError("give fit (one file for every pool) or fits_dir (a folder of fits named after GPU "
                             "presets), not both")
        return self

    def resolve_fit(self, gpu: GpuSpec, base_dir: Path | None = None) -> Fit:
        """The fit a pool on `gpu` uses (FitError if it cannot be read); relative paths are from `base_dir`."""
        if self.fit is None:
            return fit_for_gpu(gpu, _resolve(self.fits_dir, base_dir) if self.fits_dir is not None else None)
        return load_fit_cached(_resolve(self.fit, base_dir)).on(datasheet_of(gpu))

    def build(self, ctx: PerfContext) -> CalibratedPerf:
        fit = self.resolve_fit(ctx.gpu, ctx.base_dir)
        if self.compute_scale is not None:
            fit = replace(fit, compute_scale=self.compute_scale)
        if self.bandwidth_scale is not None:
            fit = replace(fit, bandwidth_scale=self.bandwidth_scale)
        overhead = self.step_overhead_s if self.step_overhead_s is not None else fit.step_overhead_s
        return CalibratedPerf(fit, ctx.model, ctx.tensor_parallel, overhead, ctx.expert_parallel,
                              ctx.data_parallel_attention)


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path)
    return base_dir / p if not p.is_absolute() and base_dir is not None else p


PerfSpec = Annotated[RooflinePerfSpec | LinearPerfSpec | CalibratedPerfSpec, Field(discriminator="kind")]
