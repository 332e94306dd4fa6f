"""What a workload entry says about answer quality and test-time compute (a leaf module: pydantic only).

On a mix entry: `quality` (accuracy against reasoning tokens, per-question spread, wrong answers, difficulty),
`max_reasoning_tokens` (a budget), `early_exit` (probes that stop reasoning once the answer has settled) and
`parallel` (n samples per request and how they are aggregated). docs/quality.md gives the model and every default's
source.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


class DifficultyLevel(BaseModel):
    """One difficulty level of a query type: its share of questions, how long its reasoning runs relative to the
    type's mean, and its accuracy relative to the type's (a shift in log-odds)."""

    model_config = _FROZEN
    share: float = Field(gt=0, description="relative share of questions at this level")
    tokens_factor: float = Field(gt=0, description="reasoning length relative to the query type's mean (the "
                                 "factors are renormalised so the mean length is unchanged)")
    logit_shift: float = Field(default=0.0, description="accuracy shift in log-odds relative to the query type "
                               "(negative: harder)")


class QualitySpec(BaseModel):
    """Answer quality of one query type on the scenario's model.

    Give the accuracy directly (`pass_at_1`, optionally `no_thinking_accuracy`), name a shipped curve (`curve`), or
    give nothing: the shipped default of the (model, query type) pair is used, or the rule of docs/quality.md for a
    model without data (an assumption, said so in the summary's `quality_sources`)."""

    model_config = _FROZEN
    curve: str | None = Field(default=None, description="a shipped accuracy curve, e.g. 'qwen3-235b-a22b/aime24' "
                              "(`simserve quality` lists them)")
    pass_at_1: float | None = Field(default=None, gt=0, lt=1, description="single-sample accuracy at the "
                                    "entry's natural reasoning length")
    no_thinking_accuracy: float | None = Field(default=None, ge=0, lt=1, description="accuracy with no "
                                               "reasoning at all: the curve's floor")
    dispersion: float | None = Field(default=None, ge=0, description="per-question spread of the success rate "
                                     "(standard deviation of its log-odds); 0: every question alike")
    num_wrong_answers: int | None = Field(default=None, ge=1, description="distinct wrong answers a question "
                                          "draws from")
    top_wrong_share: float | None = Field(default=None, gt=0, le=1, description="share of wrong samples that "
                                          "give the question's most common wrong answer")
    wrong_tokens_factor: float | None = Field(default=None, gt=0, description="reasoning length of a wrong "
                                              "sample relative to a right one (underthinking: > 1)")
    sample_tokens_cv: float | None = Field(default=None, ge=0, description="spread of reasoning length between "
                                           "samples of one question (coefficient of variation)")
    difficulty: list[DifficultyLevel] | Literal["math500", "none"] | None = Field(
        default=None, description="difficulty levels: a list, 'math500' (MATH-500's five levels) or 'none'; "
        "default: 'math500' for math query types")
    reward_separation: float | None = Field(default=None, ge=0, description="best_of_n: how far the reward "
                                            "model's score of a right sample lies above a wrong one's (in "
                                            "standard deviations)")


class EarlyExitSpec(BaseModel):
    """Streaming verification: every `probe_every_tokens` reasoning tokens a probe (`probe_tokens` generated
    tokens on the GPU) checks whether the answer has settled; reasoning stops at the first probe after it has."""

    model_config = _FROZEN
    probe_every_tokens: int = Field(gt=0, description="reasoning tokens between probes")
    probe_tokens: int = Field(default=16, ge=0, description="tokens one probe generates (a trial answer)")
    settle_share: float | None = Field(default=None, gt=0, le=1, description="mean share of the natural "
                                       "reasoning after which the answer has settled (default: the model's "
                                       "from DEER)")
    settle_spread: float = Field(default=0.2, ge=0, le=1, description="half-width of the settle share's "
                                 "uniform spread")
    accuracy_change: float | None = Field(default=None, gt=-1, lt=1, description="change in a sample's success "
                                          "probability when it exits early (default: the model's from DEER)")


class ParallelSpec(BaseModel):
    """Parallel sampling: `n` samples of each request share its prompt's KV blocks and decode side by side."""

    model_config = _FROZEN
    n: int = Field(ge=1, description="samples per request")
    aggregate: Literal["majority", "best_of_n", "first_finished"] = Field(
        default="majority", description="majority: plurality vote over all n; best_of_n: the reward model's "
        "best-scored sample; first_finished: a vote over the first m to finish (the others are stopped)")
    m: int = Field(default=1, ge=1, description="first_finished: samples to wait for")
    reward_pool: str | None = Field(default=None, description="best_of_n: the pool whose model scores the "
                                    "samples (a prefill over prompt and sample for each)")

    @model_validator(mode="after")
    def _consistent(self) -> ParallelSpec:
        if self.aggregate == "best_of_n" and self.reward_pool is None:
            raise ValueError("aggregate best_of_n needs 'reward_pool': the pool that runs the reward model")
        if self.aggregate != "best_of_n" and self.reward_pool is not None:
            raise ValueError("'reward_pool' is for aggregate best_of_n")
        if self.m > self.n:
            raise ValueError(f"m ({self.m}) must be at most n ({self.n})")
        if self.aggregate != "first_finished" and self.m != 1:
            raise ValueError("'m' is for aggregate first_finished")
        return self
