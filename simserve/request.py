"""A request: what the workload asked for, plus the engine's progress on it (a leaf data module)."""

from __future__ import annotations

import math
from typing import Any

BUILTIN_PREFIX = "builtin:"


class Request:
    """One request: what the workload asked for, plus the engine's progress on it.

    Output is reasoning tokens then answer tokens. `computed_tokens` are tokens whose KV is in the cache;
    `generated_tokens` are output tokens sampled so far (the last one is not yet in the KV cache).
    """

    __slots__ = (
        "request_id", "user_id", "query_type", "arrival_s", "prompt_tokens", "reasoning_tokens",
        "answer_tokens", "computed_tokens", "generated_tokens", "num_blocks", "admit_seq", "first_token_s",
        "finish_s", "num_preemptions", "status", "reason", "pool", "replica", "prefix_keys",
        "prefix_unit_tokens", "held_units", "shared_blocks", "prefix_hit_tokens", "session", "kv_ready",
    )

    def __init__(self, request_id: int, user_id: int, query_type: str, arrival_s: float,
                 prompt_tokens: int, reasoning_tokens: int, answer_tokens: int) -> None:
        self.request_id = request_id
        self.user_id = user_id
        self.query_type = query_type
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.reasoning_tokens = reasoning_tokens
        self.answer_tokens = answer_tokens
        self.computed_tokens = 0
        self.generated_tokens = 0
        self.num_blocks = 0
        self.admit_seq = -1
        self.first_token_s = math.nan
        self.finish_s = math.nan
        self.num_preemptions = 0
        self.status = ""
        self.reason = ""
        self.pool = ""
        self.replica = -1
        # Prefix caching: keys of the prompt's cacheable units (prefix-chained: equal keys at equal positions
        # are equal KV), each `prefix_unit_tokens` long; units this request holds in a cache, and their blocks.
        self.prefix_keys: tuple[int, ...] | None = None
        self.prefix_unit_tokens = 0
        self.held_units: list[int] = []
        self.shared_blocks = 0
        self.prefix_hit_tokens = 0
        self.session: Any = None  # multi-turn session state, owned by the workload
        self.kv_ready = False  # its KV was transferred in (prefill/decode disaggregation)

    @property
    def output_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens

    @property
    def total_tokens(self) -> int:
        """Largest KV footprint the request can reach: prompt plus all output but the last token."""
        return self.prompt_tokens + self.output_tokens

    @property
    def known_tokens(self) -> int:
        """Tokens the model must have in KV before it can sample the next one: prompt plus output so far."""
        return self.prompt_tokens + self.generated_tokens

    def __repr__(self) -> str:
        return (f"Request({self.request_id}, arrival_s={self.arrival_s:.6g}, prompt={self.prompt_tokens}, "
                f"reasoning={self.reasoning_tokens}, answer={self.answer_tokens})")
