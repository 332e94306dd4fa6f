"""KV compression of reasoning traces (H2O / SnapKV / R-KV style eviction): the pool option, what a sequence keeps,
and its effect on answers (accuracy retention against the kept share, longer traces at low budgets).

Semantics (docs/model.md, "KV compression"): a compressed sequence keeps its whole prompt and at most
`budget` generated tokens of KV (the last `window_tokens` of them always among those kept, as R-KV and SnapKV keep
an observation window), so it holds KV for min(context, prompt + budget) tokens. The budget is `budget_tokens`, or
`budget_share` of the sequence's natural reasoning length (the reasoning it would spend uncompressed).

Accuracy: a sample's success probability is multiplied by `retention(k)`, k = budget / natural reasoning length (the
kept share, at most 1), fitted per method to R-KV's accuracy-vs-budget figure (rkv_kv_budget.csv):
retention(k) = 1 - exp(-(k / k0) ** c). Length: a trace whose kept share is below `lengthen_below_share` runs
longer, natural x (1 + lengthen_factor x (1 - k / lengthen_below_share)): arXiv:2512.12008 reports that eviction at
low budgets produces longer reasoning traces, without a formula we could use, so the defaults are assumed.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

# Fitted by bench/fit_kv_compression.py to ../shared/data/reasoning-quality/rkv_kv_budget.csv (k0, c); H2O has no
# series there and takes SnapKV's (arXiv:2512.12008 finds H2O and its decoding SnapKV variant the dominant, close,
# strategies on reasoning models): an assumption.
RETENTION_FITS: dict[str, tuple[float, float]] = {
    "rkv": (0.05108, 1.0922),
    "snapkv": (0.12202, 1.0655),
    "h2o": (0.12202, 1.0655),
}
RETENTION_SOURCES = {
    "rkv": "fitted: R-KV series of rkv_kv_budget.csv (arXiv:2505.24133 main results)",
    "snapkv": "fitted: SnapKV series of rkv_kv_budget.csv (arXiv:2505.24133 main results)",
    "h2o": "assumed: SnapKV's fit (no H2O series in rkv_kv_budget.csv)",
}


class KvCompressionSpec(BaseModel):
    """A pool's KV compression of generated tokens (the prompt is kept whole)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    method: Literal["rkv", "snapkv", "h2o"] = Field(
        description="eviction policy: rkv (R-KV, redundancy-aware), snapkv (SnapKV applied while decoding), h2o "
                    "(heavy hitters); sets the accuracy retention curve")
    budget_tokens: int | None = Field(default=None, gt=0, description="generated tokens of KV a sequence keeps at "
                                      "most (the prompt's KV is kept whole besides)")
    budget_share: float | None = Field(default=None, gt=0, le=1, description="or: the budget as a share of the "
                                       "sequence's natural reasoning length (the reasoning it would spend "
                                       "uncompressed)")
    window_tokens: int = Field(default=128, ge=0, description="most recent tokens always kept (inside the budget; "
                               "R-KV and SnapKV keep such a window): it bounds the budget from below")
    lengthen_factor: float = Field(default=0.3, ge=0, description="assumed: at kept share 0 reasoning runs (1 + "
                                   "this) times its natural length (arXiv:2512.12008: low budgets lengthen traces)")
    lengthen_below_share: float = Field(default=0.25, gt=0, le=1, description="assumed: kept share below which "
                                        "traces lengthen, linearly to lengthen_factor at share 0")

    @model_validator(mode="after")
    def _one_budget(self) -> KvCompressionSpec:
        if (self.budget_tokens is None) == (self.budget_share is None):
            raise ValueError("kv_compression needs exactly one of 'budget_tokens' and 'budget_share'")
        if self.budget_tokens is not None and self.window_tokens > self.budget_tokens:
            raise ValueError(f"window_tokens ({self.window_tokens}) must not exceed budget_tokens "
                             f"({self.budget_tokens})")
        return self

    def retention(self, kept_share: np.ndarray | float) -> np.ndarray:
        """Accuracy kept at kept share k (budget over natural reasoning length): 1 - exp(-(k / k0) ** c)."""
        k0, c = RETENTION_FITS[self.method]
        k = np.minimum(np.asarray(kept_share, float), 1.0)
        return -np.expm1(-np.power(np.maximum(k, 0.0) / k0, c))

    def lengthening(self, kept_share: np.ndarray | float) -> np.ndarray:
        """Factor on the reasoning length at kept share k: 1 + lengthen_factor x max(0, 1 - k / threshold)."""
        k = np.asarray(kept_share, float)
        return 1.0 + self.lengthen_factor * np.maximum(0.0, 1.0 - k / self.lengthen_below_share)

    def kept_share(self, natural_tokens: np.ndarray) -> np.ndarray:
        """Kept share of each natural reasoning length (1 where nothing would be evicted)."""
        natural = np.asarray(natural_tokens, float)
        if self.budget_share is not None:
            return np.full(natural.shape, self.budget_share)
        assert self.budget_tokens is not None
        return np.minimum(1.0, self.budget_tokens / np.maximum(natural, 1.0))

    def budget_of(self, reasoning_tokens: int) -> int:
        """Generated tokens a sequence that runs `reasoning_tokens` of reasoning keeps (with `budget_share`: the
        share of its natural length, the run length divided by the lengthening; never below the window, never 0)."""
        if self.budget_tokens is not None:
            return self.budget_tokens
        assert self.budget_share is not None
        natural = reasoning_tokens / float(self.lengthening(self.budget_share))
        return max(math.ceil(self.budget_share * natural), self.window_tokens, 1)
