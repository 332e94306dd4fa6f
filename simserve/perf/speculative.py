"""Speculative decoding's data and arithmetic (issue 23): the pool's `speculative` spec, the acceptance model
(per-position acceptance rates by method, query type and phase, with documented defaults), the counter-based draws
of accepted tokens, and the step time of a speculative step (the target model verifying k+1 positions per
decoding sequence plus the drafter's own passes).

The engine side (planner decode pass, decode arrays, fast-forward) is simserve/engine/speculative.py; the model
and its sources are docs/speculative.md.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simserve.hardware import MODELS, ModelSpec
from simserve.perf.base import Batch, PerfContext, PerfModel

SpecMethod = Literal["draft_model", "eagle", "mtp", "ngram"]

# Per-position acceptance rate a (the chance a drafted token is accepted given the ones before it were), by method.
# Sources in docs/speculative.md: DeepSeek-V3 report (MTP: second-token acceptance 85-90%, ~1.8x decode TPS);
# EAGLE-2/EAGLE-3 (mean acceptance lengths 3-5 tokens with 6-7 drafted: a = 0.8 gives 3.95 at k = 6);
# Leviathan et al. 2023 (draft models: alpha 0.5-0.9 across pairs, 0.7 typical); n-gram prompt lookup is an
# assumption (reasoning traces copy little of their prompt).
DEFAULT_ACCEPTANCE: dict[str, float] = {"mtp": 0.87, "eagle": 0.80, "draft_model": 0.70, "ngram": 0.30}

_F = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)
Rate = float | list[float]


class SpeculativeSpec(BaseModel):
    """A pool's speculative decoding: a drafter proposes `num_speculative_tokens` (k) tokens per decoding sequence
    per step, the target verifies k+1 positions, and a run of leading drafts is accepted."""

    model_config = _F
    method: SpecMethod = Field(description="drafter: draft_model (a small model), eagle (an EAGLE head), mtp "
                               "(DeepSeek's multi-token-prediction module), ngram (prompt lookup, no GPU cost)")
    num_speculative_tokens: int = Field(ge=1, le=16, description="k: tokens drafted per sequence per step")
    acceptance_rate: Rate | None = Field(
        default=None, description="per-position acceptance rate a in [0, 1] (the chance a drafted token is "
        "accepted given the ones before it were), or a list of k of them (position by position); default by "
        "method: mtp 0.87, eagle 0.80, draft_model 0.70, ngram 0.30")
    mean_acceptance_length: float | None = Field(
        default=None, gt=1, description="instead of acceptance_rate: mean tokens committed per step, "
        "(1 - a^(k+1)) / (1 - a), from which a constant a is solved")
    answer_acceptance_rate: Rate | None = Field(
        default=None, description="acceptance in the answer phase (default: the reasoning phase's)")
    query_types: dict[str, Rate] = Field(default_factory=dict, description="per query type, the reasoning "
                                         "phase's acceptance rate (overrides acceptance_rate)")
    draft_model: str | ModelSpec | None = Field(default=None, description="draft_model: the drafter (a model "
                                                "preset or an inline spec)")
    draft_cost_factor: float = Field(default=1.0, ge=0, description="scales the drafter's time (0: free)")

    @model_validator(mode="after")
    def _check(self) -> SpeculativeSpec:
        k = self.num_speculative_tokens
        if self.acceptance_rate is not None and self.mean_acceptance_length is not None:
            raise ValueError("give acceptance_rate or mean_acceptance_length, not both")
        if self.mean_acceptance_length is not None and self.mean_acceptance_length >= k + 1:
            raise ValueError(f"mean_acceptance_length must be < num_speculative_tokens + 1 ({k + 1})")
        for rate in [self.acceptance_rate, self.answer_acceptance_rate, *self.query_types.values()]:
            if rate is None:
                continue
            rates = rate if isinstance(rate, list) else [rate]
            if isinstance(rate, list) and len(rate) != k:
                raise ValueError(f"a list of acceptance rates needs num_speculative_tokens ({k}) entries")
            if any(not 0.0 <= r <= 1.0 for r in rates):
                raise ValueError("acceptance rates must be in [0, 1]")
        if self.method == "draft_model":
            if self.draft_model is None:
                raise ValueError("method draft_model needs draft_model (a model preset or an inline spec)")
            if isinstance(self.draft_model, str) and self.draft_model not in MODELS:
                raise ValueError(f"unknown draft_model {self.draft_model!r}; presets: {', '.join(MODELS)}")
        return self

    def base_rate(self) -> Rate:
        """The reasoning phase's acceptance rate (per position) when no query type overrides it."""
        if self.acceptance_rate is not None:
            return self.acceptance_rate
        if self.mean_acceptance_length is not None:
            return rate_for_length(self.mean_acceptance_length, self.num_speculative_tokens)
        return DEFAULT_ACCEPTANCE[self.method]

    def thresholds(self, query_type: str, answer: bool) -> np.ndarray:
        """P(at least j+1 drafts accepted) for j < k: the cumulative products of the per-position rates."""
        rate = self.query_types.get(query_type, self.base_rate())
        if answer and self.answer_acceptance_rate is not None:
            rate = self.answer_acceptance_rate
        k = self.num_speculative_tokens
        rates = np.asarray(rate if isinstance(rate, list) else [rate] * k, float)
        return np.cumprod(rates)


def mean_tokens_per_step(rate: float, k: int) -> float:
    """Expected tokens a sequence commits per step with k drafts and constant acceptance a: 1 + a + ... + a^k
    = (1 - a^(k+1)) / (1 - a) (Leviathan et al. 2023, eq. 1)."""
    return float(k + 1) if rate >= 1.0 else (1.0 - rate ** (k + 1)) / (1.0 - rate)


def rate_for_length(length: float, k: int) -> float:
    """The constant acceptance rate a whose mean tokens per step with k drafts is `length` (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if mean_tokens_per_step(mid, k) < length:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03)


def uniforms(key: int, request_ids: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """One uniform in [0, 1) per (request, tokens generated so far), a pure function of them and the run's key
    (splitmix64 over a counter): a sequence's draws do not depend on which steps were fast-forwarded, on the
    batch it is in, or on the order of slots, so fast-forward and stepping draw the same accepted tokens."""
    with np.errstate(over="ignore"):
        z = (np.uint64(key) + request_ids.astype(np.uint64) * _M1 + generated.astype(np.uint64) * _M2)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(float) * (1.0 / (1 << 53))


def drafter_model(spec: SpeculativeSpec, target: ModelSpec) -> ModelSpec | None:
    """The model whose forward passes draft: the named draft model; for eagle and mtp one decoder layer of the
    target plus its LM head (an EAGLE head or DeepSeek's MTP module is one transformer block sharing the target's
    embedding and head); none for ngram (a CPU lookup)."""
    if spec.method == "ngram":
        return None
    if spec.method == "draft_model":
        assert spec.draft_model is not None
        return MODELS[spec.draft_model] if isinstance(spec.draft_model, str) else spec.draft_model
    head = float(target.vocab_size * target.hidden_size)
    per_layer = (target.num_params - head) / target.num_layers
    per_layer_active = (target.active_params - head) / target.num_layers
    return target.model_copy(update={"name": f"{target.name}-{spec.method}-head", "num_layers": 1,
                                     "num_params": per_layer + head,
                                     "num_active_params": per_layer_active + head,
                                     "intermediate_size": target.intermediate_size})


class SpeculativeTiming:
    """Step time of a speculative step: the target computes each decoding sequence as a decode (its KV read once:
    multi-query decode kernels such as FlashMLA and FlashInfer's read the context once for the q verified
    positions) plus the batch's extra query tokens (q-1 per sequence) as one chunk with no cached context: their
    linear-layer FLOPs and the experts they touch, in the step's own GEMMs, not as a prefill kernel per sequence
    (their attention over the context is left out, and the chunk's causal attention among all of them overstates
    theirs among each sequence's own few), and the drafter runs q-1 sequential passes over the batch (its step
    time less its host overhead, scaled by draft_cost_factor)."""

    def __init__(self, spec: SpeculativeSpec, target: PerfModel, drafter: PerfModel | None) -> None:
        self.spec = spec
        self.target = target
        self.drafter = drafter

    def step_time_s(self, batch: Batch, query_tokens: np.ndarray) -> float:
        """Seconds of a step whose decodes (batch.decode_context_tokens: each one's first verified position's
        context) verify `query_tokens` positions each, with the batch's prefill chunks beside them."""
        ctx = batch.decode_context_tokens
        if not len(ctx):
            return self.target.step_time_s(batch)
        extra = int((query_tokens - 1).sum())  # the verified positions beyond each decode's first
        if extra <= 0:
            verify = batch
        else:  # one chunk of all of them: they share the step's GEMMs; per-sequence prefill kernels they do not pay
            verify = Batch(ctx, np.append(batch.prefill_new_tokens, extra),
                           np.append(batch.prefill_cached_tokens, 0))
        t = self.target.step_time_s(verify)
        passes = int(query_tokens.max()) - 1
        if self.drafter is not None and passes > 0 and self.spec.draft_cost_factor > 0:
            one = self.drafter.step_time_s(Batch(ctx, ctx[:0], ctx[:0])) - self.drafter.overhead_s
            t += self.spec.draft_cost_factor * passes * max(one, 0.0)
        return t


def build_timing(spec: SpeculativeSpec, target: PerfModel, build: object, ctx: PerfContext) -> SpeculativeTiming:
    """The timing of a pool's speculative steps; `build` is the pool's perf spec (its `build(ctx)` makes the
    drafter's model from the same kind of perf model)."""
    model = drafter_model(spec, ctx.model)
    drafter = None
    if model is not None:
        dctx = PerfContext(ctx.gpu, model, ctx.tensor_parallel, ctx.expert_parallel, ctx.data_parallel_attention,
                           ctx.base_dir)
        drafter = build.build(dctx)  # type: ignore[attr-defined]
    return SpeculativeTiming(spec, target, drafter)
