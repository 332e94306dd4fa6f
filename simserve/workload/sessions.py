"""Shared prompt prefixes of synthetic workloads: per-query-type system prompts and multi-turn sessions.

A session's next turn arrives a think time after the previous turn finishes and carries the previous turn's prompt
and answer as its prefix, then a new user message; the reasoning is not carried (reasoning services strip it
before the next turn), so only the previous prompt's KV can be reused. Prefix keys name each `unit_tokens`-long
unit of a prompt by its content: units wholly inside a query type's system prompt are shared by every request of
that type; the others belong to the session, whose prompts only ever grow by appending.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simserve.request import Request

_SYSTEM_BASE = 1 << 62
_SESSION_SHIFT = 24  # up to 16M units per session


def prompt_keys(session_id: int, query_index: int, system_tokens: int, prompt_tokens: int,
                unit_tokens: int) -> tuple[int, ...]:
    """Keys of a prompt's units (the last may be partial: it is never cached, see kv.py)."""
    n = -(-prompt_tokens // unit_tokens)
    system_units = system_tokens // unit_tokens
    sys_base = _SYSTEM_BASE + (query_index << 32)
    own = session_id << _SESSION_SHIFT
    return tuple(sys_base + i if i < system_units else own + i for i in range(n))


class SessionState:
    """A session's identity and its follow-up turns, drawn when it opens: (think_s, message, reasoning, answer)."""

    __slots__ = ("session_id", "query_index", "turns")

    def __init__(self, session_id: int, query_index: int, turns: list[tuple[float, int, int, int]]) -> None:
        self.session_id = session_id
        self.query_index = query_index
        self.turns = turns


class Sessions:
    """Makes prefix keys for new requests and the follow-up turns of multi-turn sessions.

    `samplers[q]` draws (prompt, reasoning, answer) for query type q; `turns` and `think_time_s` are built
    distributions (or None for single-turn requests). All of a session's draws come from the `sessions` stream
    when it opens, in arrival order, so the workload is the same whatever the cluster does with it (common random
    numbers across the configurations a sweep compares).
    """

    def __init__(self, samplers: list[Any], system_tokens: list[int], unit_tokens: int,
                 turns: Any | None, think_time_s: Any | None, rng: np.random.Generator) -> None:
        self.samplers = samplers
        self.system_tokens = system_tokens
        self.unit_tokens = unit_tokens
        self.turns = turns
        self.think_time_s = think_time_s
        self.rng = rng
        self._next_session = 0

    @property
    def active(self) -> bool:
        return self.turns is not None or any(self.system_tokens)

    def start(self, req: Request, query_index: int) -> None:
        """Open a session with `req` as its first turn and give its prompt prefix keys."""
        sid = self._next_session
        self._next_session += 1
        follow: list[tuple[float, int, int, int]] = []
        if self.turns is not None and self.think_time_s is not None:
            n = max(1, int(np.rint(self.turns.sample(self.rng, 1)[0]))) - 1
            if n:
                think = np.maximum(self.think_time_s.sample(self.rng, n), 0.0)
                message, reasoning, answer = self.samplers[query_index].sample(self.rng, n)
                follow = [(float(think[i]), int(message[i]), int(reasoning[i]), int(answer[i])) for i in range(n)]
        req.session = SessionState(sid, query_index, follow)
        req.prefix_keys = prompt_keys(sid, query_index, self.system_tokens[query_index], req.prompt_tokens,
                                      self.unit_tokens)
        req.prefix_unit_tokens = self.unit_tokens

    def next_turn(self, prev: Request) -> tuple[float, Request] | None:
        """The session's next turn after `prev` completed, and the think time before it arrives; None if the
        session is over (or `prev` did not complete)."""
        state = prev.session
        if state is None or not state.turns or prev.status != "completed":
            return None
        think_s, message, reasoning, answer = state.turns[0]
        prompt = prev.prompt_tokens + prev.answer_tokens + message
        req = Request(-1, prev.user_id, prev.query_type, prev.finish_s + think_s, prompt, reasoning, answer)
        req.priority = prev.priority
        req.session = SessionState(state.session_id, state.query_index, state.turns[1:])
        req.prefix_keys = prompt_keys(state.session_id, state.query_index, self.system_tokens[state.query_index],
                                      prompt, self.unit_tokens)
        req.prefix_unit_tokens = self.unit_tokens
        return think_s, req
