"""The analytic step-time models (linear and roofline) and the roofline quantities of a step: the one place that
counts a step's tokens, the KV tokens it reads and writes, and its causal query-key pairs.

The same counts feed the roofline model, the steps table of a profile (calibration fits BLIS's step-level terms on
them) and the prefill-attention features of a fit, so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from simserve.hardware import ModelSpec
from simserve.perf.base import Batch, PerfContext, StepTimes, asum, kept_context_sums


def causal_pairs(new_tokens: np.ndarray, cached_tokens: np.ndarray) -> np.ndarray:
    """Query-key pairs of prefill chunks: each of a chunk's new tokens attends over the chunk's cached tokens and,
    causally, the new tokens up to itself: new x (cached + (new + 1) / 2)."""
    return new_tokens * (cached_tokens + (new_tokens + 1.0) / 2.0)


def step_tokens(batch: Batch) -> tuple[float, float, float]:
    """(tokens computed, KV tokens read by attention plus those written, query-key pairs) of one step."""
    decode_ctx = batch.decode_context_sum
    tokens = float(len(batch.decode_context_tokens))
    kv_tokens = decode_ctx
    pairs = decode_ctx
    # A step has few prefill chunks: plain floats are faster than numpy here (the same arithmetic as
    # causal_pairs, element by element).
    new, cached = batch.prefill_lists()
    assert len(new) == len(cached)
    for i in range(len(new)):  # indexed: a compiled loop, where zip(..., strict=True) is a generic call
        q, c = float(new[i]), float(cached[i])
        tokens += q
        kv_tokens += c + q
        pairs += q * (c + (q + 1.0) / 2.0)
    return tokens, kv_tokens + tokens, pairs


@dataclass(frozen=True, slots=True)
class StepQuantities:
    """A step's roofline quantities (what a steps profile is fitted on)."""

    num_seqs: float
    weight_bytes: float
    linear_flops: float
    kv_bytes: float
    attention_flops: float


def attention_flops_per_pair(model: ModelSpec) -> float:
    """4 x layers x heads x head_dim: QK^T and PV, two FLOPs a multiply-add, over all layers."""
    return 4.0 * model.num_layers * model.num_attention_heads * model.head_dim


def step_quantities(model: ModelSpec, batch: Batch) -> StepQuantities:
    """Weight bytes read, linear FLOPs (2 x active params per token), KV bytes read and written, and attention
    FLOPs (4 x layers x heads x head_dim per query-key pair, causal within a chunk) of one step."""
    tokens, kv_tokens, pairs = step_tokens(batch)
    return StepQuantities(num_seqs=float(len(batch.decode_context_tokens) + len(batch.prefill_new_tokens)),
                          weight_bytes=model.weight_bytes_read(tokens),
                          linear_flops=2.0 * model.active_params * tokens,
                          kv_bytes=kv_tokens * model.kv_bytes_per_token,
                          attention_flops=attention_flops_per_pair(model) * pairs)


class LinearPerf:
    """The linear PerfModel (simserve.perf.specs.LinearPerfSpec): overhead + per prefill token + per decoding
    sequence + per context token the decodes attend over."""

    reads_longest_context = False  # decode_run_stats_s ignores context_max

    def __init__(self, step_overhead_s: float, per_prefill_token_s: float, per_decode_seq_s: float,
                 per_kv_token_s: float) -> None:
        self.c0 = self.overhead_s = step_overhead_s
        self.c_prefill = per_prefill_token_s
        self.c_seq = per_decode_seq_s
        self.c_kv = per_kv_token_s

    def step_time_s(self, batch: Batch) -> float:
        n = len(batch.decode_context_tokens)
        return float(self.c0 + self.c_prefill * float(batch.prefill_new_tokens.sum()) + self.c_seq * n
                     + self.c_kv * float(batch.decode_context_tokens.sum()))

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int,
                           caps: np.ndarray | None = None) -> np.ndarray:
        n = len(decode_context_tokens)
        if caps is None:
            return self.decode_run_stats_s(n, int(asum(decode_context_tokens)), 0, num_steps)
        kv, _ = kept_context_sums(decode_context_tokens, caps, num_steps)
        return self.c0 + self.c_seq * n + self.c_kv * kv

    def decode_run_stats_s(self, n: int, context_sum: int, context_max: int, num_steps: int) -> np.ndarray:
        kv = float(context_sum) + n * np.arange(num_steps, dtype=float)
        return self.c0 + self.c_seq * n + self.c_kv * kv


class RooflinePerf:
    """The roofline PerfModel of one replica (simserve.perf.specs.RooflinePerfSpec), its per-GPU rates computed
    once."""

    reads_longest_context = False  # decode_run_stats_s ignores context_max

    def __init__(self, ctx: PerfContext, memory_efficiency: float, compute_efficiency: float,
                 step_overhead_s: float, allreduce_latency_s: float) -> None:
        gpu, model, tp = ctx.gpu, ctx.model, ctx.tensor_parallel
        self.overhead_s = step_overhead_s
        bw = gpu.hbm_bandwidth_bytes_per_s * memory_efficiency
        flops = gpu.peak_flops_per_s * compute_efficiency
        # Per GPU: everything below is sharded evenly over the tensor-parallel group.
        self.model = model
        self.moe = model.moe is not None  # read once: a pydantic model's attribute is a generic lookup, each step
        self.bw_per_gpu = bw * tp
        self.weight_s = model.weight_bytes / tp / bw
        self.kv_s_per_token = model.kv_bytes_per_token / tp / bw
        self.linear_s_per_token = 2.0 * model.active_params / tp / flops
        self.attn_s_per_pair = attention_flops_per_pair(model) / tp / flops
        if tp > 1:
            link = gpu.interconnect_bandwidth_bytes_per_s
            per_token = 2.0 * (tp - 1) / tp * model.hidden_size * model.bytes_per_value / link
            # Two all-reduces per layer (after attention and after the MLP).
            self.comm_fixed_s = 2 * model.num_layers * allreduce_latency_s
            self.comm_s_per_token = 2 * model.num_layers * per_token
        else:
            self.comm_fixed_s = 0.0
            self.comm_s_per_token = 0.0

    def _weight_s(self, tokens: float) -> float:
        if not self.moe:
            return self.weight_s
        return self.model.weight_bytes_read(tokens) / self.bw_per_gpu

    def step_time_s(self, batch: Batch) -> float:
        tokens, kv_tokens, pairs = step_tokens(batch)
        mem = self._weight_s(tokens) + self.kv_s_per_token * kv_tokens
        compute = self.linear_s_per_token * tokens + self.attn_s_per_pair * pairs
        return self.overhead_s + max(mem, compute) + self.comm_fixed_s + self.comm_s_per_token * tokens

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int,
                           caps: np.ndarray | None = None) -> StepTimes:
        if caps is not None:  # kept contexts stop growing at their caps: no longer affine in the step index
            n = len(decode_context_tokens)
            ctx, _ = kept_context_sums(decode_context_tokens, caps, num_steps)
            mem = self._weight_s(n) + self.kv_s_per_token * (ctx + n)
            compute = self.linear_s_per_token * n + self.attn_s_per_pair * ctx
            return self.overhead_s + np.maximum(mem, compute) + self.comm_fixed_s + self.comm_s_per_token * n
        return self.decode_run_stats_s(len(decode_context_tokens), int(asum(decode_context_tokens)), 0, num_steps)

    def decode_run_stats_s(self, n: int, context_sum: int, context_max: int, num_steps: int) -> StepTimes:
        # Element s is step_time_s of step s's batch to the last bit: the same operations, in the same order, on the
        # same values (n tokens, ctx = context_sum + n*s query-key pairs, ctx + n KV tokens; whole numbers, exact
        # as floats). A run's step ends must equal those of stepping one step at a time exactly, or a tie between
        # replicas could be broken differently in the two modes. Where one roofline side dominates the whole run
        # with a margin far above rounding (both sides are affine in s), the other is not computed.
        tokens = float(n)
        weight_s = self._weight_s(tokens)
        kvs, attn = self.kv_s_per_token, self.attn_s_per_pair
        lin = self.linear_s_per_token * tokens
        last = float(n * (num_steps - 1))
        mem0 = weight_s + kvs * (context_sum + tokens)
        cmp0 = lin + attn * float(context_sum)
        mem1, cmp1 = mem0 + kvs * last, cmp0 + attn * last
        memory_bound = mem0 > cmp0 * _MARGIN and mem1 > cmp1 * _MARGIN
        compute_bound = cmp0 > mem0 * _MARGIN and cmp1 > mem1 * _MARGIN
        if num_steps <= _SCALAR_STEPS:  # a short run: the same operations on floats, without numpy's per-call cost
            return self._stats_list(num_steps, tokens, float(context_sum), weight_s, memory_bound, compute_bound)
        # n*s + context_sum (+ n): whole numbers, exact as floats, which np.arange gives in one call; then ufunc calls
        # with their outputs (in-place operators cost about twice as much).
        stop = float(context_sum + n * num_steps)
        if memory_bound:
            t = np.arange(float(context_sum + n), stop + tokens, tokens)
            np.multiply(t, kvs, t)
            np.add(t, weight_s, t)
        elif compute_bound:
            t = np.arange(float(context_sum), stop, tokens)
            np.multiply(t, attn, t)
            np.add(t, lin, t)
        else:
            t = np.arange(float(context_sum), stop, tokens)
            mem = np.add(t, tokens)
            np.multiply(mem, kvs, mem)
            np.add(mem, weight_s, mem)
            np.multiply(t, attn, t)
            np.add(t, lin, t)
            np.maximum(mem, t, out=t)
        np.add(t, self.overhead_s, t)
        if self.comm_fixed_s:
            np.add(t, self.comm_fixed_s, t)
        if self.comm_s_per_token:
            np.add(t, self.comm_s_per_token * tokens, t)
        return t

    def _stats_list(self, num_steps: int, tokens: float, context_sum: float, weight_s: float, memory_bound: bool,
                    compute_bound: bool) -> list[float]:
        """decode_run_stats_s's values for a short run, step by step: each the same operations, in the same order,
        as the array code's (so the same bits; tests/test_numerics.py compares them)."""
        kvs, attn, lin = self.kv_s_per_token, self.attn_s_per_pair, self.linear_s_per_token * tokens
        overhead, fixed, per_token = self.overhead_s, self.comm_fixed_s, self.comm_s_per_token * tokens
        mem_base = context_sum + tokens  # float(context_sum + n): whole numbers, exact
        out: list[float] = []
        for s in range(num_steps):
            x = float(s) * tokens
            if memory_bound:
                v = (x + mem_base) * kvs + weight_s
            elif compute_bound:
                v = (x + context_sum) * attn + lin
            else:
                y = x + context_sum
                m = (y + tokens) * kvs + weight_s
                c = y * attn + lin
                v = m if m >= c else c
            v += overhead
            if fixed:
                v += fixed
            if per_token:
                v += per_token
            out.append(v)
        return out


# A side dominates a run if it exceeds the other by this factor at both ends: far above the few roundings between
# the affine estimate and each step's value, so the step's own max() would pick the same side.
_MARGIN: Final = 1.0 + 1e-9
# Runs of at most this many steps are timed with floats, not arrays: numpy's per-call cost (about 5,000 instructions
# for each of the array code's 6-8 operations) is most of a short run's; half the runs of a saturated replica
# (pieces between preempting plans) are 3 steps or fewer.
_SCALAR_STEPS: Final = 64
