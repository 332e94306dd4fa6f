"""Reasoning-trace reuse (issue 18, first step): a cluster-wide exact trace cache as a plain object, and the hook
that consults it when a request arrives and fills it when a request completes (docs/model.md, "Trace reuse, first
step").

Exact reuse: a request whose (query type, concept) has a cached trace skips its reasoning (its reasoning tokens
become 0 before routing; the answer is still generated) -- the simplification being that one concept is one query,
so its trace answers it. The lookup is answered at the end of its latency (the request enters the cluster then);
a trace is stored when a request that did not reuse one completes.

Semantic reuse: a true hit is an exact one (same concept, taken as above the similarity threshold); a lookup that
misses becomes a false hit with probability `false_hit_rate` if any trace is cached: the request skips its
reasoning too, and its answer is wrong. One uniform per lookup from the `trace_cache` stream.

Step reuse: on a hit (same concept cached) a share `step_reuse_share` of the reasoning is given to the model as
prompt tokens (prefilled) instead of decoded: reasoning tokens shrink by it and prompt tokens grow by it.

With answer quality (one sample per request), a whole-trace true hit keeps the request's own drawn correctness
(the cached trace's, taken as the request's own success at its natural length or budget), a false hit is wrong
(success probability 0), and step reuse keeps correctness (Retrieval-of-Thought: equal accuracy); the answer's
reasoning spent shrinks the same way (every model and budget it was drawn for, under difficulty routing).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from simserve.engine import Hooks
from simserve.quality import Answer
from simserve.request import Request
from simserve.workload import TraceCacheSpec

if TYPE_CHECKING:
    from simserve.sim import Simulation

Key = tuple[str, int]  # (query type, concept)


class TraceCache:
    """Whole traces keyed by (query type, concept): `lookup` and `insert` at a time in seconds. Capacity in
    entries (None: unbounded), eviction LRU (least recently stored or hit) or LFU (fewest hits since stored, ties
    to the least recently used; counts are forgotten on eviction), an optional time to live from storage (an
    expired trace is a miss and is dropped when looked up). Memory: the entries held, and for LFU a heap of at most
    about four times as many."""

    def __init__(self, spec: TraceCacheSpec) -> None:
        self.capacity = spec.capacity_entries
        self.lfu = spec.eviction == "lfu"
        self.ttl_s = spec.ttl_s
        self.stored_s: OrderedDict[Key, float] = OrderedDict()  # in LRU order, oldest first
        self._uses: dict[Key, tuple[int, int]] = {}  # LFU: key -> (hits + 1, tick of last use)
        self._heap: list[tuple[int, int, Key]] = []  # LFU: (uses, tick, key), stale entries skipped
        self._tick = 0
        self.num_evictions = 0

    def __len__(self) -> int:
        return len(self.stored_s)

    def lookup(self, key: Key, now_s: float) -> bool:
        """Whether a live trace of `key` is held; a hit counts as a use."""
        stored = self.stored_s.get(key)
        if stored is None:
            return False
        if self.ttl_s is not None and now_s - stored >= self.ttl_s:
            del self.stored_s[key]
            self._uses.pop(key, None)
            return False
        self._use(key)
        return True

    def insert(self, key: Key, now_s: float) -> None:
        """Store (or refresh) the trace of `key`, evicting one first if the cache is full."""
        if key not in self.stored_s and self.capacity is not None and len(self.stored_s) >= self.capacity:
            self._evict()
        self.stored_s[key] = now_s
        self._use(key)

    def _use(self, key: Key) -> None:
        self.stored_s.move_to_end(key)
        if not self.lfu:
            return
        self._tick += 1
        uses = self._uses.get(key, (0, 0))[0] + 1
        self._uses[key] = (uses, self._tick)
        heapq.heappush(self._heap, (uses, self._tick, key))
        if len(self._heap) > 4 * len(self._uses) + 64:
            self._heap = [(u, t, k) for k, (u, t) in self._uses.items()]
            heapq.heapify(self._heap)

    def _evict(self) -> None:
        self.num_evictions += 1
        if not self.lfu:
            self.stored_s.popitem(last=False)
            return
        while True:
            uses, tick, key = heapq.heappop(self._heap)
            if self._uses.get(key) == (uses, tick):
                del self._uses[key]
                del self.stored_s[key]
                return


class TraceReuse(Hooks):
    """The trace cache at the front end: looks up each arriving request with a concept, and stores the trace of
    each such request that completes without reusing one."""

    def __init__(self, sim: Simulation, spec: TraceCacheSpec) -> None:
        self.sim = sim
        self.spec = spec
        self.cache = TraceCache(spec)
        self.rng = sim.rngs["trace_cache"]
        self.num_lookups = self.num_hits = self.num_false_hits = self.reused_reasoning_tokens = 0

    def arrived(self, req: Request) -> None:
        if req.concept < 0 or req.parent is not None:
            return
        self.num_lookups += 1
        spec = self.spec
        hit = self.cache.lookup((req.query_type, req.concept), self.sim.env.now)
        if spec.kind == "semantic":
            u = float(self.rng.random())  # drawn for every lookup: the stream does not depend on hits
            if hit:
                self._skip(req, "semantic", wrong=False)
            elif u < spec.false_hit_rate and len(self.cache):
                self.num_false_hits += 1
                self._skip(req, "semantic_false", wrong=True)
            else:
                return
        elif not hit:
            return
        elif spec.kind == "step":
            self._step(req, spec.step_reuse_share)
        else:
            self._skip(req, "exact", wrong=False)
        self.num_hits += 1

    def _skip(self, req: Request, kind: str, wrong: bool) -> None:
        """A whole trace reused: the reasoning is skipped (and with answer quality, the answer wrong if `wrong`)."""
        req.reuse = kind
        req.reused_reasoning_tokens = req.reasoning_tokens
        self.reused_reasoning_tokens += req.reasoning_tokens
        req.reasoning_tokens = 0
        for a in _answers(req):
            a.reasoning = np.zeros_like(a.reasoning)
            a.probes = np.zeros_like(a.probes)
            if wrong:
                a.p = np.zeros_like(a.p)
                a.correct_samples = np.zeros_like(a.correct_samples)
                a.answer_id = np.ones_like(a.answer_id)  # wrong answer 1

    def _step(self, req: Request, share: float) -> None:
        """Cached steps reused: `share` of the reasoning becomes prompt tokens (prefilled, not decoded)."""
        reused = int(round(share * req.reasoning_tokens))
        req.reuse = "step"
        req.reused_reasoning_tokens = reused
        self.reused_reasoning_tokens += reused
        req.reasoning_tokens -= reused
        req.prompt_tokens += reused
        for a in _answers(req):
            cut = int(round(share * a.engine_reasoning_tokens))
            from_reasoning = np.minimum(a.reasoning, cut)
            a.reasoning = a.reasoning - from_reasoning
            a.probes = np.maximum(a.probes - (cut - from_reasoning), 0)

    def finished(self, req: Request) -> None:
        if req.concept >= 0 and req.parent is None and req.status == "completed" and req.reuse == "none":
            self.cache.insert((req.query_type, req.concept), self.sim.env.now)

    def summary(self) -> dict[str, Any]:
        """`trace_cache_hit_ratio` (hits, false hits included, over lookups; NaN with none), lookups, hits, false
        hits (semantic), reasoning tokens saved (decoded no more: skipped, or prefilled under step reuse),
        evictions and the traces held at the end."""
        n = self.num_lookups
        return {"trace_cache_hit_ratio": self.num_hits / n if n else float("nan"), "trace_cache_lookups": n,
                "trace_cache_hits": self.num_hits, "trace_cache_false_hits": self.num_false_hits,
                "reused_reasoning_tokens": self.reused_reasoning_tokens,
                "trace_cache_evictions": self.cache.num_evictions, "trace_cache_entries": len(self.cache)}


def _answers(req: Request) -> list[Answer]:
    """The request's answer and every variant of it (difficulty routing), or none without answer quality."""
    a = req.answer
    if a is None:
        return []
    return [a, *(a.variants.values() if a.variants else ())]
