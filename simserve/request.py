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
        "answer_tokens", "computed_tokens", "generated_tokens", "seq", "slot", "kv", "first_token_s",
        "reasoning_end_s", "finish_s", "num_preemptions", "status", "reason", "pool", "replica", "prefix_keys",
        "prefix_unit_tokens", "prefix_hit_tokens", "session", "fork_key", "parent", "answer", "priority", "length_z",
        "kv_keep_tokens", "concept", "reuse", "reused_reasoning_tokens",
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
        self.seq = -1  # running order on its replica (admission order; -1: never admitted)
        self.slot = -1  # its slot in the replica's decode arrays (-1: not decoding)
        self.kv: Any = None  # its KV hold on its replica (simserve.engine.kv.KvHold)
        self.first_token_s = math.nan
        self.reasoning_end_s = math.nan  # when its last reasoning token was sampled
        self.finish_s = math.nan
        self.num_preemptions = 0
        self.status = ""
        self.reason = ""
        self.pool = ""
        self.replica = -1
        # Prefix caching: keys of the prompt's cacheable units (prefix-chained: equal keys at equal positions
        # are equal KV), each `prefix_unit_tokens` long.
        self.prefix_keys: tuple[int, ...] | None = None
        self.prefix_unit_tokens = 0
        self.prefix_hit_tokens = 0
        self.session: Any = None  # multi-turn session state, owned by the workload
        # Parallel sampling: samples of one request (and reward-model scoring passes over them) carry the same
        # non-zero `fork_key`, so their prompt's full blocks are one copy in the prefix cache, as vLLM's n > 1
        # requests share them; `parent` is the request a sample belongs to (None for a request users sent).
        self.fork_key = 0
        self.parent: Request | None = None
        self.answer: Any = None  # answer-quality state (simserve.quality), None when the workload has none
        self.priority = 0  # its class for the priority scheduler: lower is more urgent (vLLM's priority)
        self.length_z = math.nan  # the length predictor's standard normal error (shortest_predicted_first)
        # KV compression on its replica: most tokens of KV kept (prompt + budget); 0: everything is kept.
        self.kv_keep_tokens = 0
        # Trace reuse (simserve.reuse): the concept it asks about (-1: none), how its reasoning was reused ("none",
        # "exact", "semantic", "semantic_false", "step", "minted") and the reasoning tokens the reuse saved (its
        # reasoning_tokens is then what is left to decode; under step reuse, its prompt_tokens include them).
        self.concept = -1
        self.reuse = "none"
        self.reused_reasoning_tokens = 0

    @property
    def output_tokens(self) -> int:
        return self.reasoning_tokens + self.answer_tokens

    @property
    def total_tokens(self) -> int:
        """Largest KV footprint the request can reach: prompt plus all output but the last token."""
        return self.prompt_tokens + self.output_tokens

    @property
    def known_tokens(self) -> int:
        """Tokens the model must have in KV before it can sample the next one: prompt plus output so far
        (vLLM's num_tokens, with tokens sampled in a step still in flight counted)."""
        return self.prompt_tokens + self.generated_tokens

    def __repr__(self) -> str:
        return (f"Request({self.request_id}, arrival_s={self.arrival_s:.6g}, prompt={self.prompt_tokens}, "
                f"reasoning={self.reasoning_tokens}, answer={self.answer_tokens})")
