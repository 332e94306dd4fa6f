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

Minted tokens (`Minting`): the queries of each (query type, concept) are counted on arrival; a job at each
job_offset_s + k x job_every_s mints the concepts counted at least `min_count` times before it, most frequent first, up
to the store limit. A later request of a minted concept that is not a whole-trace hit (exact, semantic or false)
decodes round(compression x) of its reasoning x (reuse "minted"; minting takes the place of step reuse), and with
answer quality its success probability drops by `accuracy_penalty`: a right sample stays right iff a uniform v
(the `minting` stream, drawn only when the penalty is positive) has v p < p - penalty -- given u < p, u is uniform
on [0, p), so this is u < p - penalty in distribution; a penalty of 0 changes nothing.

With parallel samples the hook runs on the request before it is forked: a whole-trace hit keeps its first drawn
sample only (answered once, unforked); step reuse and minted tokens cut each sample's own reasoning. Costs: the
lookups, and the bytes of the traces held integrated over time (`TraceReuse.costs`; docs/model.md, "Economics of
trace reuse").
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from simserve.engine import Hooks
from simserve.quality import Answer
from simserve.request import Request
from simserve.workload import MintingSpec, TraceCacheSpec

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
        # Storage: bytes each trace holds, their sum, and its time integral (exact: updated as entries change).
        self._bytes: dict[Key, float] = {}
        self.bytes_held = 0.0
        self._byte_s = 0.0
        self._last_s = 0.0

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
            self._hold(key, 0.0, now_s)
            return False
        self._use(key)
        return True

    def insert(self, key: Key, now_s: float, size_bytes: float = 0.0) -> None:
        """Store (or refresh) the trace of `key`, `size_bytes` long, evicting one first if the cache is full."""
        if key not in self.stored_s and self.capacity is not None and len(self.stored_s) >= self.capacity:
            self._evict(now_s)
        self.stored_s[key] = now_s
        self._use(key)
        self._hold(key, size_bytes, now_s)

    def _hold(self, key: Key, size_bytes: float, now_s: float) -> None:
        """The trace of `key` now holds `size_bytes` (0: removed); the byte-seconds integral is brought to now."""
        self._byte_s += self.bytes_held * (now_s - self._last_s)
        self._last_s = now_s
        self.bytes_held += size_bytes - self._bytes.pop(key, 0.0)
        if size_bytes:
            self._bytes[key] = size_bytes

    def byte_seconds(self, now_s: float) -> float:
        """Integral of the bytes held from the start to `now_s`."""
        return self._byte_s + self.bytes_held * (now_s - self._last_s)

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

    def _evict(self, now_s: float) -> None:
        self.num_evictions += 1
        if not self.lfu:
            key, _ = self.stored_s.popitem(last=False)
            self._hold(key, 0.0, now_s)
            return
        while True:
            uses, tick, key = heapq.heappop(self._heap)
            if self._uses.get(key) == (uses, tick):
                del self._uses[key]
                del self.stored_s[key]
                self._hold(key, 0.0, now_s)
                return


class Minting:
    """The minting job's state: queries counted per (query type, concept) seen -- a dict, so memory grows with the
    distinct concepts seen, not with the universe or the users -- and the minted set (at most the store limit).
    Jobs run lazily: `run_due(now)` runs every job due at or before `now` from the counts so far, which are the
    counts before the job's time when called before counting anything at `now`."""

    def __init__(self, spec: MintingSpec) -> None:
        self.spec = spec
        self.counts: dict[Key, int] = {}
        self.minted: set[Key] = set()
        self.num_jobs = 0  # jobs run (due by the last call to run_due)
        self.num_paid_jobs = 0  # jobs that minted at least one pattern: each costs job_gpu_hours
        self.num_minted_requests = 0

    def jobs_due(self, now_s: float) -> int:
        """Jobs at or before `now_s`: those at job_offset_s + k x job_every_s (k = 0, 1, ...) after t = 0."""
        offset, every = self.spec.job_offset_s, self.spec.job_every_s
        if now_s < offset:
            return 0
        return int((now_s - offset) // every) + (1 if offset > 0 else 0)

    def run_due(self, now_s: float) -> None:
        due = self.jobs_due(now_s)
        if due <= self.num_jobs:
            return
        self.num_jobs = due  # later jobs before now see the same counts: only the first can mint anything
        limit = self.spec.store_limit_patterns
        room = (limit - len(self.minted)) if limit is not None else len(self.counts)
        if room <= 0:
            return
        ready = [(-c, k) for k, c in self.counts.items() if c >= self.spec.min_count and k not in self.minted]
        if ready:
            ready.sort()
            self.minted.update(k for _, k in ready[:room])
            self.num_paid_jobs += 1

    def count(self, key: Key) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    @property
    def gpu_hours(self) -> float:
        return self.num_paid_jobs * self.spec.job_gpu_hours


class TraceReuse(Hooks):
    """The trace cache at the front end: looks up each arriving request with a concept, and stores the trace of
    each such request that completes without reusing a whole one; and the minted tokens, if any (either may be
    absent)."""

    def __init__(self, sim: Simulation, spec: TraceCacheSpec | None, minting: MintingSpec | None = None) -> None:
        self.sim = sim
        self.spec = spec
        self.cache = TraceCache(spec) if spec is not None else None
        self.minting = Minting(minting) if minting is not None else None
        self.rng = sim.rngs["trace_cache"]
        self.mint_rng = sim.rngs["minting"]
        self.num_lookups = self.num_hits = self.num_false_hits = self.reused_reasoning_tokens = 0
        self.hit_saved_tokens = 0  # reasoning tokens the cache's hits saved (whole, false and step hits)
        self._moved: dict[int, int] = {}  # step reuse, requests in flight: id -> cached steps put in the prompt
        self.step_prompt_tokens = 0  # those of completed requests (not billed as the user's input)

    def arrived(self, req: Request) -> None:
        if req.concept < 0 or req.parent is not None:
            return
        key = (req.query_type, req.concept)
        mint = self.minting
        minted = False
        if mint is not None:
            mint.run_due(self.sim.env.now)
            minted = key in mint.minted
            mint.count(key)
        if not self._lookup(req, key, minted) and minted:
            self._mint(req)

    def _lookup(self, req: Request, key: Key, minted: bool) -> bool:
        """Consult the trace cache; whether the request reused a whole trace or cached steps."""
        spec, cache = self.spec, self.cache
        if spec is None or cache is None:
            return False
        self.num_lookups += 1
        hit = cache.lookup(key, self.sim.env.now)
        if spec.kind == "semantic":
            u = float(self.rng.random())  # drawn for every lookup: the stream does not depend on hits
            if hit:
                self._skip(req, "semantic", wrong=False)
            elif u < spec.false_hit_rate and len(cache):
                self.num_false_hits += 1
                self._skip(req, "semantic_false", wrong=True)
            else:
                return False
        elif not hit or (spec.kind == "step" and minted):  # a minted concept: its minted tokens, not its steps
            return False
        elif spec.kind == "step":
            self._step(req, spec.step_reuse_share)
        else:
            self._skip(req, "exact", wrong=False)
        self.num_hits += 1
        self.hit_saved_tokens += req.reused_reasoning_tokens
        return True

    def _mint(self, req: Request) -> None:
        """A minted concept: round(compression x) of the reasoning x is decoded; with answer quality, each right
        sample stays right iff v p < p - penalty (v uniform, drawn only for a positive penalty)."""
        assert self.minting is not None
        spec = self.minting.spec
        self.minting.num_minted_requests += 1
        c = spec.compression
        kept = int(round(c * req.reasoning_tokens))
        req.reuse = "minted"
        answers = _answers(req)
        saved = req.reasoning_tokens - kept
        if answers and answers[0].n > 1:  # parallel samples: each keeps round(c x its own reasoning)
            engine = answers[0].reasoning + answers[0].probes
            saved = int((engine - np.rint(c * engine)).sum())
        req.reused_reasoning_tokens = saved
        self.reused_reasoning_tokens += saved
        req.reasoning_tokens = kept
        v = self.mint_rng.random(answers[0].n) if answers and spec.accuracy_penalty > 0 else None
        for a in answers:
            engine = a.reasoning + a.probes  # per sample
            _shorten(a, engine - np.rint(c * engine).astype(engine.dtype))
            if v is not None:
                p = a.p
                lost = a.correct_samples & ~(v * p < p - spec.accuracy_penalty)
                a.p = np.maximum(p - spec.accuracy_penalty, 0.0)
                a.correct_samples = a.correct_samples & ~lost
                a.answer_id = np.where(lost, 1, a.answer_id)  # a right answer lost: wrong answer 1
        if answers and answers[0].n > 1:
            req.reasoning_tokens = answers[0].engine_reasoning_tokens

    def _skip(self, req: Request, kind: str, wrong: bool) -> None:
        """A whole trace reused: the reasoning is skipped (and with answer quality, the answer wrong if `wrong`).
        With parallel samples the cached answer is returned once: the request is not forked, it keeps its first
        drawn sample only (its answer is that sample's), and every sample's reasoning counts as saved."""
        answers = _answers(req)
        saved = req.reasoning_tokens
        if answers and answers[0].n > 1:
            saved = int((answers[0].reasoning + answers[0].probes).sum())
            for a in answers:
                _first_sample_only(a)
        req.reuse = kind
        req.reused_reasoning_tokens = saved
        self.reused_reasoning_tokens += saved
        req.reasoning_tokens = 0
        for a in answers:
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
        req.prompt_tokens += reused
        self._moved[id(req)] = reused
        answers = _answers(req)
        saved = reused
        for i, a in enumerate(answers):
            engine = a.reasoning + a.probes  # per sample: each decodes (1 - share) of its own reasoning
            cut = np.rint(share * engine).astype(engine.dtype)
            _shorten(a, cut)
            if i == 0 and a.n > 1:  # parallel samples: the tokens no sample decodes any more, added up
                saved = int(cut.sum())
        req.reused_reasoning_tokens = saved
        self.reused_reasoning_tokens += saved
        req.reasoning_tokens -= reused
        if answers and answers[0].n > 1:
            req.reasoning_tokens = answers[0].engine_reasoning_tokens

    def finished(self, req: Request) -> None:
        moved = self._moved.pop(id(req), 0) if self._moved and req.parent is None else 0
        if req.status == "completed":
            self.step_prompt_tokens += moved
        if (self.cache is not None and req.concept >= 0 and req.parent is None and req.status == "completed"
                and req.reuse in ("none", "minted")):
            spec = self.spec
            assert spec is not None
            samples = req.answer.n if req.answer is not None else 1  # one sample's trace is stored: the mean
            tokens = (req.reasoning_tokens + req.answer_tokens) / samples
            self.cache.insert((req.query_type, req.concept), self.sim.env.now,
                              spec.bytes_per_entry + spec.bytes_per_token * tokens)

    def costs(self, end_s: float) -> dict[str, Any]:
        """The trace cache's money and time (with a trace cache; none without): `trace_cache_lookup_cost_usd`
        (lookups x the cost of one), `trace_cache_storage_cost_usd` (bytes held integrated over the run, to
        `end_s`, x the price per GB-hour), `trace_cache_byte_hours` (that integral), `trace_cache_lookup_usd`
        and `trace_cache_lookup_latency_s` (of one lookup: every request with a concept waits it before entering
        the cluster), and `trace_cache_saved_tokens_per_hit` (reasoning tokens a hit saved, on average; NaN with
        no hit). The simulation adds the two costs into the run's cost_usd."""
        spec, cache = self.spec, self.cache
        if spec is None or cache is None:
            return {}
        byte_hours = float(cache.byte_seconds(end_s)) / 3600.0
        return {"trace_cache_lookup_cost_usd": self.num_lookups * spec.lookup_cost_usd,
                "trace_cache_storage_cost_usd": byte_hours / 1e9 * spec.storage_price_usd_per_gb_hour,
                "trace_cache_byte_hours": byte_hours, "trace_cache_lookup_usd": spec.lookup_cost_usd,
                "trace_cache_lookup_latency_s": spec.lookup_latency,
                "trace_cache_saved_tokens_per_hit": (self.hit_saved_tokens / self.num_hits if self.num_hits
                                                     else float("nan"))}

    def summary(self) -> dict[str, Any]:
        """`trace_cache_hit_ratio` (hits, false hits included, over lookups; NaN with none), lookups, hits, false
        hits (semantic), reasoning tokens saved (decoded no more: skipped, or prefilled under step reuse),
        evictions and the traces held at the end (with a trace cache); with minting, `minted_patterns` (held at the
        end), `minted_requests`, the jobs due by the end and those that minted something (each paid
        job_gpu_hours: `minting_gpu_hours`, `minting_cost_usd`, added by the simulation)."""
        out: dict[str, Any] = {}
        n = self.num_lookups
        if self.cache is not None:
            out = {"trace_cache_hit_ratio": self.num_hits / n if n else float("nan"), "trace_cache_lookups": n,
                   "trace_cache_hits": self.num_hits, "trace_cache_false_hits": self.num_false_hits,
                   "reused_reasoning_tokens": self.reused_reasoning_tokens,
                   "trace_cache_evictions": self.cache.num_evictions, "trace_cache_entries": len(self.cache)}
        if self.minting is not None:
            out["reused_reasoning_tokens"] = self.reused_reasoning_tokens
            out["minted_patterns"] = len(self.minting.minted)
            out["minted_requests"] = self.minting.num_minted_requests
            out["minting_jobs"] = self.minting.num_jobs
            out["minting_jobs_paid"] = self.minting.num_paid_jobs
        return out


def _shorten(a: Answer, cut: np.ndarray) -> None:
    """Each sample of `a` decodes `cut` fewer tokens (an array, per sample): from its reasoning, then from its
    early-exit probes."""
    from_reasoning = np.minimum(a.reasoning, cut)
    a.reasoning = a.reasoning - from_reasoning
    a.probes = np.maximum(a.probes - (cut - from_reasoning), 0)


def _first_sample_only(a: Answer) -> None:
    """A request answered once from the cache: its answer keeps the first drawn sample alone (not forked)."""
    for name in ("reasoning", "probes", "p", "correct_samples", "answer_id", "score", "tiebreak", "exited", "cut"):
        setattr(a, name, getattr(a, name)[:1])
    a.n, a.m, a.aggregate, a.reward_pool = 1, 1, "majority", None


def _answers(req: Request) -> list[Answer]:
    """The request's answer and every variant of it (difficulty routing), or none without answer quality."""
    a = req.answer
    if a is None:
        return []
    return [a, *(a.variants.values() if a.variants else ())]
