"""Step-time models: how long one iteration of a replica takes, as a pure function of the batch's composition.

A model implements the `PerfModel` protocol: `step_time_s(batch)` for any batch, and `decode_run_times_s` for a
run of decode-only steps whose membership does not change (each sequence's context grows by one token a step),
vectorised over the run so the engine can fast-forward exactly with any model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simserve.hardware import GpuSpec, ModelSpec

_FROZEN = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class Batch:
    """What one step computes.

    decode_context_tokens: per decoding sequence, the context its new token attends over (KV tokens already in
        cache plus the one being computed).
    prefill_new_tokens / prefill_cached_tokens: per prefill chunk, the tokens computed in this step and the
        tokens of the same sequence already in the KV cache before it (earlier chunks or a cached prefix).
    """

    decode_context_tokens: np.ndarray
    prefill_new_tokens: np.ndarray
    prefill_cached_tokens: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(len(self.decode_context_tokens) + self.prefill_new_tokens.sum())


class PerfModel(Protocol):
    def step_time_s(self, batch: Batch) -> float:
        """Seconds one step of `batch` takes."""
        ...

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        """Seconds of each of `num_steps` decode-only steps; step s (from 0) has contexts
        decode_context_tokens + s. Element s equals step_time_s of that step's batch."""
        ...


class LinearPerfSpec(BaseModel):
    """step = step_overhead_s + per_prefill_token_s x prefill tokens + per_decode_seq_s x decoding sequences
    + per_kv_token_s x context tokens the decoding sequences attend over."""

    model_config = _FROZEN
    kind: Literal["linear"] = "linear"
    step_overhead_s: float = Field(default=0.0, ge=0)
    per_prefill_token_s: float = Field(default=0.0, ge=0)
    per_decode_seq_s: float = Field(default=0.0, ge=0)
    per_kv_token_s: float = Field(default=0.0, ge=0)

    def build(self, gpu: GpuSpec, model: ModelSpec, tensor_parallel: int,
              base_dir: Path | None = None) -> LinearPerf:
        return LinearPerf(self)


class LinearPerf:
    def __init__(self, spec: LinearPerfSpec) -> None:
        self.c0 = spec.step_overhead_s
        self.c_prefill = spec.per_prefill_token_s
        self.c_seq = spec.per_decode_seq_s
        self.c_kv = spec.per_kv_token_s

    def step_time_s(self, batch: Batch) -> float:
        n = len(batch.decode_context_tokens)
        return float(self.c0 + self.c_prefill * float(batch.prefill_new_tokens.sum()) + self.c_seq * n
                     + self.c_kv * float(batch.decode_context_tokens.sum()))

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        n = len(decode_context_tokens)
        kv = float(decode_context_tokens.sum()) + n * np.arange(num_steps, dtype=float)
        return self.c0 + self.c_seq * n + self.c_kv * kv


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
    kind: Literal["roofline"] = "roofline"
    memory_efficiency: float = Field(default=0.8, gt=0, le=1)
    compute_efficiency: float = Field(default=0.7, gt=0, le=1)
    step_overhead_s: float = Field(default=0.002, ge=0, description="scheduler, sampling and launch overhead")
    allreduce_latency_s: float = Field(default=30e-6, ge=0, description="per all-reduce call (NCCL floor)")

    def build(self, gpu: GpuSpec, model: ModelSpec, tensor_parallel: int,
              base_dir: Path | None = None) -> RooflinePerf:
        return RooflinePerf(self, gpu, model, tensor_parallel)


class RooflinePerf:
    def __init__(self, spec: RooflinePerfSpec, gpu: GpuSpec, model: ModelSpec, tensor_parallel: int) -> None:
        tp = tensor_parallel
        self.overhead_s = spec.step_overhead_s
        bw = gpu.hbm_bandwidth_bytes_per_s * spec.memory_efficiency
        flops = gpu.peak_flops_per_s * spec.compute_efficiency
        # Per GPU: everything below is sharded evenly over the tensor-parallel group.
        self.model = model
        self.bw_per_gpu = bw * tp
        self.weight_s = model.weight_bytes / tp / bw
        self.kv_s_per_token = model.kv_bytes_per_token / tp / bw
        self.linear_s_per_token = 2.0 * model.active_params / tp / flops
        self.attn_s_per_pair = 4.0 * model.num_layers * model.num_attention_heads * model.head_dim / tp / flops
        if tp > 1:
            link = gpu.interconnect_bandwidth_bytes_per_s
            per_token = 2.0 * (tp - 1) / tp * model.hidden_size * model.bytes_per_value / link
            # Two all-reduces per layer (after attention and after the MLP).
            self.comm_fixed_s = 2 * model.num_layers * spec.allreduce_latency_s
            self.comm_s_per_token = 2 * model.num_layers * per_token
        else:
            self.comm_fixed_s = 0.0
            self.comm_s_per_token = 0.0

    def _weight_s(self, tokens: float) -> float:
        if self.model.moe is None:
            return self.weight_s
        return self.model.weight_bytes_read(tokens) / self.bw_per_gpu

    def step_time_s(self, batch: Batch) -> float:
        new = batch.prefill_new_tokens.astype(float)
        cached = batch.prefill_cached_tokens.astype(float)
        n = len(batch.decode_context_tokens)
        decode_ctx = float(batch.decode_context_tokens.sum())
        tokens = n + float(new.sum())
        kv_tokens = decode_ctx + float((cached + new).sum()) + tokens  # read by attention + written
        pairs = decode_ctx + float((new * (cached + (new + 1.0) / 2.0)).sum())
        mem = (self.weight_s if self.model.moe is None else self._weight_s(tokens)) + self.kv_s_per_token * kv_tokens
        compute = self.linear_s_per_token * tokens + self.attn_s_per_pair * pairs
        return self.overhead_s + max(mem, compute) + self.comm_fixed_s + self.comm_s_per_token * tokens

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int) -> np.ndarray:
        n = len(decode_context_tokens)
        ctx = float(decode_context_tokens.sum()) + n * np.arange(num_steps, dtype=float)
        mem = (self.weight_s if self.model.moe is None else self._weight_s(n)) + self.kv_s_per_token * (ctx + n)
        compute = self.linear_s_per_token * n + self.attn_s_per_pair * ctx
        return self.overhead_s + np.maximum(mem, compute) + (self.comm_fixed_s + self.comm_s_per_token * n)



@dataclass(frozen=True, slots=True)
class StepQuantities:
    """A step's roofline quantities (what a steps profile is fitted on)."""

    num_seqs: float
    weight_bytes: float
    linear_flops: float
    kv_bytes: float
    attention_flops: float


def step_quantities(model: ModelSpec, decode_context_tokens: np.ndarray, prefill_new_tokens: np.ndarray,
                    prefill_cached_tokens: np.ndarray) -> StepQuantities:
    """Weight bytes read, linear FLOPs (2 x active params per token), KV bytes read and written, and attention
    FLOPs (4 x layers x heads x head_dim per query-key pair, causal within a chunk) of one step."""
    dec = decode_context_tokens.astype(float)
    new = prefill_new_tokens.astype(float)
    cached = prefill_cached_tokens.astype(float)
    tokens = len(dec) + float(new.sum())
    kv_tokens = float(dec.sum()) + float((cached + new).sum()) + tokens
    pairs = float(dec.sum()) + float((new * (cached + (new + 1.0) / 2.0)).sum())
    per_pair = 4.0 * model.num_layers * model.num_attention_heads * model.head_dim
    return StepQuantities(num_seqs=float(len(dec) + len(new)), weight_bytes=model.weight_bytes_read(tokens),
                          linear_flops=2.0 * model.active_params * tokens,
                          kv_bytes=kv_tokens * model.kv_bytes_per_token, attention_flops=per_pair * pairs)
