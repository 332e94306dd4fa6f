"""Reasoning-trace reuse (issue 18): trace caches as plain objects (cluster-wide, or one per replica), minted tokens,
and the hook that consults them when a request arrives (or is routed, per replica) and fills them when a request
completes (docs/model.md, "Trace reuse").

Keys are compact ints: (query type's index among the sorted names) << 40 | id, the id a concept's (whole traces) or
a step's (step reuse, minting). Without concept steps a concept is its own single step (step id = concept id,
per_query P = 1) and every rule below reduces to the first step's (the same lookups, inserts, draws and tokens).

Exact reuse: a request whose (query type, concept) has a cached trace skips its reasoning (its reasoning tokens
become 0 before routing; the answer is still generated) -- the simplification being that one concept is one query,
so its trace answers it. The lookup is answered at the end of its latency (the request enters the cluster then);
a trace is stored when a request that did not reuse one completes.

Semantic reuse: a true hit is an exact one (same concept, taken as above the similarity threshold); a lookup that
misses becomes a false hit with probability `false_hit_rate` if any trace is cached: the request skips its
reasoning too, and its answer is wrong. One uniform per lookup from the `trace_cache` stream.

Step reuse: the cache holds (query type, step) keys. A request of P steps looks up each distinct step once (a use
each), finds F positions whose step is held and not minted, f = F / P, and gives round(step_reuse_share f x) of
its reasoning x to the model as prompt tokens (prefilled) instead of decoded: reasoning tokens shrink by it and
prompt tokens grow by it. A hit (hit ratio) is f > 0. On completion, a request that reused no whole trace stores
its steps, but for those it took from the cache (touched at lookup: storing them again would count a second use).
With `step_fallback`, an exact or semantic cache's miss (not a false hit) does the same from a second, step-keyed
cache; a whole-trace hit ratio stays the whole cache's.

With answer quality (one sample per request), a whole-trace true hit keeps the request's own drawn correctness
(the cached trace's, taken as the request's own success at its natural length or budget), a false hit is wrong
(success probability 0), and step reuse keeps correctness (Retrieval-of-Thought: equal accuracy); the answer's
reasoning spent shrinks the same way (every model and budget it was drawn for, under difficulty routing).

Minted tokens (`Minting`): the queries using each (query type, step) are counted on arrival (a step once per query)
in a Misra-Gries counter of `counter_entries` keys; a job at every multiple of `job_every_s` mints the steps counted
at least `min_count` times before it, most frequent first (ties: the smaller key), up to the store limit. A later
request with m of its P positions minted that is not a whole-trace hit (exact, semantic or false) has minted
reasoning y = round(m x / P), of which it decodes round(compression y): round(compression x) when every step is
minted (reuse "minted" if m > 0, else "step" if f > 0; minted positions never count for step reuse). With answer
quality its success probability drops by accuracy_penalty m / P (in proportion to the reasoning the minted steps
stand for: the penalty of compressing a whole trace, spread over its steps): a right sample stays right iff a
uniform v (the `minting` stream, drawn only when the penalty is positive) has v p < p - penalty m / P -- given u <
p, u is uniform on [0, p), so this is u < p - penalty m / P in distribution; a penalty of 0 changes nothing.

With parallel samples the hook runs on the request before it is forked: a whole-trace hit keeps its first drawn
sample only (answered once, unforked); step reuse and minted tokens cut each sample's own reasoning. Costs: the
lookups, and the bytes of the traces held integrated over time (`TraceReuse.costs`; docs/model.md, "Economics of
trace reuse").
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from simserve.engine import Hooks
from simserve.quality import Answer
from simserve.request import Request
from simserve.workload import ConceptSteps, MintingSpec, TraceCacheSpec

if TYPE_CHECKING:
    from simserve.sim import Simulation

Key = Hashable  # the hook's keys are ints: query-type index << ID_BITS | concept or step id
ID_BITS = 40
WHOLE_REUSE = ("exact", "semantic", "semantic_false")


class TraceCache:
    """Whole traces (or steps) keyed by (query type, concept or step): `lookup` and `insert` at a time in seconds.
    Capacity in entries (None: unbounded), eviction LRU (least recently stored or hit) or LFU (fewest hits since
    stored, ties to the least recently used; counts are forgotten on eviction), an optional time to live from
    storage (an expired trace is a miss and is dropped when looked up). Memory: the entries held, and for LFU a heap
    of at most about four times as many."""

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

    def restart_integral(self, now_s: float) -> None:
        self._byte_s, self._last_s = 0.0, now_s

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



class FrequentCounter:
    """Counts of a stream's keys in at most `capacity` entries: Misra and Gries' frequent-items summary (1982). A
    new key when the table is full is not stored and every count drops by one (zeros leave). Exact while fewer than
    capacity + 1 distinct keys were seen; otherwise each count is low by at most `num_decrements` <= n /
    (capacity + 1) of the n keys counted (each decrement round removes capacity + 1 units of count), never high.
    Amortised O(1) per key: a round costs O(capacity) and happens at most n / (capacity + 1) times."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counts: dict[Key, int] = {}
        self.num_counted = 0  # n
        self.num_decrements = 0  # the most any count is low by

    def add(self, key: Key) -> None:
        self.num_counted += 1
        counts = self.counts
        c = counts.get(key)
        if c is not None:
            counts[key] = c + 1
        elif len(counts) < self.capacity:
            counts[key] = 1
        else:
            self.num_decrements += 1
            self.counts = {k: v - 1 for k, v in counts.items() if v > 1}


class Minting:
    """The minting job's state: queries counted per step pattern (query type, step) seen, in a FrequentCounter of
    `counter_entries` keys (bounded memory, exact below it), and the minted set (at most the store limit). Jobs run
    lazily: `run_due(now)` runs every job due at or before `now` from the counts so far, which are the counts before
    the job's time when called before counting anything at `now`."""

    def __init__(self, spec: MintingSpec) -> None:
        self.spec = spec
        self.counter = FrequentCounter(spec.counter_entries)
        self.minted: set[Key] = set()
        self.num_jobs = 0  # jobs run (due by the last call to run_due)
        self.first_job = 0  # num_jobs when the run started (below 0 after a history)
        self.num_paid_jobs = 0  # jobs that minted at least one pattern: each costs job_gpu_hours
        self.num_minted_requests = 0

    @property
    def counts(self) -> dict[Key, int]:
        return self.counter.counts

    def jobs_due(self, now_s: float) -> int:
        """Jobs at or before `now_s`, counted from t = 0: those at job_offset_s + k x job_every_s (a job at t = 0 is
        not run); below 0 before the first (a history before t = 0)."""
        offset, every = self.spec.job_offset_s, self.spec.job_every_s
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
        self.counter.add(key)

    def start_at(self, t_s: float) -> None:
        """Start the job clock at `t_s` (a history before time 0): the jobs due after it will run."""
        self.num_jobs = self.jobs_due(t_s)

    @property
    def gpu_hours(self) -> float:
        return self.num_paid_jobs * self.spec.job_gpu_hours


class TraceStore:
    """The caches of one scope (the cluster, or one replica): whole traces keyed by (query type, concept) for kinds
    exact and semantic, and steps keyed by (query type, step) for kind step or a step fallback."""

    def __init__(self, spec: TraceCacheSpec) -> None:
        self.whole = TraceCache(spec) if spec.kind != "step" else None
        self.steps = TraceCache(spec) if spec.kind == "step" or spec.step_fallback else None

    def caches(self) -> list[TraceCache]:
        return [c for c in (self.whole, self.steps) if c is not None]


class TraceStores:
    """Every scope's TraceStore (scope -1: the cluster; else a replica's index, made on first use); `len` and
    `num_evictions` sum all their caches (the summary's trace_cache_entries and trace_cache_evictions)."""

    def __init__(self, spec: TraceCacheSpec) -> None:
        self.spec = spec
        self.by_scope: dict[int, TraceStore] = {}

    def at(self, scope: int) -> TraceStore:
        store = self.by_scope.get(scope)
        if store is None:
            store = self.by_scope[scope] = TraceStore(self.spec)
        return store

    def __len__(self) -> int:
        return sum(len(c) for s in self.by_scope.values() for c in s.caches())

    @property
    def num_evictions(self) -> int:
        return sum(c.num_evictions for s in self.by_scope.values() for c in s.caches())

    def byte_seconds(self, now_s: float) -> float:
        return sum(c.byte_seconds(now_s) for s in self.by_scope.values() for c in s.caches())

    def restart_integral(self, now_s: float) -> None:
        """Integrate the bytes held from `now_s` on (the end of a history), forgetting what came before."""
        for s in self.by_scope.values():
            for c in s.caches():
                c.restart_integral(now_s)


class TraceReuse(Hooks):
    """The trace cache at the front end, cluster-wide: looks up each arriving request with a concept, and stores the
    trace (and steps) of each such request that completes without reusing a whole one; and the minted tokens, if
    any (either may be absent)."""

    def __init__(self, sim: Simulation, spec: TraceCacheSpec | None, minting: MintingSpec | None = None) -> None:
        self.sim = sim
        self.spec = spec
        self.cache = TraceStores(spec) if spec is not None else None
        self.minting = Minting(minting) if minting is not None else None
        self.rng = sim.rngs["trace_cache"]
        self.mint_rng = sim.rngs["minting"]
        self.num_lookups = self.num_hits = self.num_false_hits = self.reused_reasoning_tokens = 0
        self.num_step_lookups = self.num_fallback_hits = 0
        self.found_share_sum = 0.0
        self.hit_saved_tokens = 0  # reasoning tokens the cache's hits saved (whole, false and step hits)
        self._moved: dict[int, int] = {}  # step reuse, requests in flight: id -> cached steps put in the prompt
        self.step_prompt_tokens = 0  # those of completed requests (not billed as the user's input)
        mix = [q for q in sim.scenario.workload.mix or () if q.concepts is not None]
        self._qindex = {name: i for i, name in enumerate(sorted({q.query_type for q in mix}))}
        self._steps: dict[str, ConceptSteps] = {}
        for q in mix:  # entries of one query type share its keys: the first entry's steps spec holds for all
            assert q.concepts is not None
            self._steps.setdefault(q.query_type, ConceptSteps(q.concepts.steps))
        self._plain = ConceptSteps(None)
        self._stepped = any(s.spec is not None for s in self._steps.values())
        # id(request) -> (its step keys, those it took from the cache) while in flight, when a step cache was consulted
        self._looked_up: dict[int, tuple[list[int], set[int]]] = {}
        self.extended = self._stepped or (spec is not None and (spec.step_fallback or spec.scope == "replica"))
        self._clock_s: float | None = None  # the history's time while it is replayed (else the simulation's)
        self.history_summary: dict[str, Any] = {}

    def _now(self) -> float:
        return self.sim.env.now if self._clock_s is None else self._clock_s

    def history(self, requests: Iterator[Request], span_s: float, limit: int | None = None) -> Iterator[Request]:
        """The provider's history before the run (`workload.reuse_history_s`): the requests arriving before
        `span_s` pass through the caches and the minting counts only, at their own times shifted to [-span_s, 0)
        (looked up, then stored as answered on arrival; minting jobs due in the history run then); they are not
        served, recorded or priced. The rest are yielded shifted by -span_s and numbered from 0, at most `limit`
        of them. The counters the summary reports start after the history (its own are in `history_summary`)."""
        if self.minting is not None:
            self.minting.start_at(-span_s)
        rest: Request | None = None
        n = 0
        for req in requests:
            if req.arrival_s >= span_s:
                rest = req
                break
            self._clock_s = req.arrival_s - span_s
            self._replay(req, n)
            n += 1
        self._clock_s = None
        self._end_history(n)
        if rest is None:
            return
        chain = itertools.chain((rest,), requests)
        for i, req in enumerate(itertools.islice(chain, limit)):
            req.arrival_s -= span_s
            req.request_id = i
            yield req

    def _replay(self, req: Request, index: int) -> None:
        """One request of the history: looked up (and counted for minting) as on arrival, stored as on completion."""
        if req.concept < 0:
            return
        self.arrived(req)
        self._route_history(req, index)
        req.status = "completed"
        self.finished(req)

    def _route_history(self, req: Request, index: int) -> None:
        """Cluster scope: nothing (looked up on arrival)."""

    def _end_history(self, num_requests: int) -> None:
        """Keep the history's counts apart and start the run's from zero."""
        n = self.num_lookups
        self.history_summary = {"reuse_history_requests": num_requests}
        if self.cache is not None:
            self.history_summary["reuse_history_hit_ratio"] = self.num_hits / n if n else float("nan")
        self.num_lookups = self.num_hits = self.num_false_hits = self.reused_reasoning_tokens = 0
        self.num_step_lookups = self.num_fallback_hits = self.hit_saved_tokens = self.step_prompt_tokens = 0
        self.found_share_sum = 0.0
        if self.cache is not None:
            self.cache.restart_integral(0.0)
            for store in self.cache.by_scope.values():
                for c in store.caches():
                    c.num_evictions = 0
        if self.minting is not None:
            self.history_summary["reuse_history_minted_patterns"] = len(self.minting.minted)
            self.minting.num_paid_jobs = self.minting.num_minted_requests = 0
            self.minting.first_job = self.minting.num_jobs  # the run's jobs are those due after the history

    def _key(self, query_type: str, ident: int) -> int:
        q = self._qindex.get(query_type)
        if q is None:
            q = self._qindex[query_type] = len(self._qindex)
        if not 0 <= ident < 1 << ID_BITS:
            raise ValueError(f"concept or step id {ident} of query type {query_type!r} is outside [0, 2**{ID_BITS})")
        return q << ID_BITS | ident

    def _keys(self, req: Request) -> list[int]:
        """The request's step keys at positions 0..P-1."""
        steps = self._steps.get(req.query_type, self._plain)
        return [self._key(req.query_type, s) for s in steps.of(req.concept)]

    def arrived(self, req: Request) -> None:
        if req.concept < 0 or req.parent is not None:
            return
        keys = self._keys(req)
        minted = self._count(keys)
        self._reuse(req, self.cache.at(-1) if self.cache is not None else None, keys, minted)

    def _count(self, keys: list[int]) -> list[bool]:
        """Run the minting jobs due, say which positions are minted, then count the request's distinct steps."""
        mint = self.minting
        if mint is None:
            return [False] * len(keys)
        mint.run_due(self._now())
        minted = [k in mint.minted for k in keys]
        for k in dict.fromkeys(keys):
            mint.count(k)
        return minted

    def _reuse(self, req: Request, store: TraceStore | None, keys: list[int], minted: list[bool]) -> None:
        """Consult the store's caches (a whole trace first, then steps), then apply minted and reused steps."""
        found = 0
        if store is not None:
            self.num_lookups += 1
            if store.whole is not None and self._whole(req, store.whole, self._key(req.query_type, req.concept)):
                self.num_hits += 1
                self.hit_saved_tokens += req.reused_reasoning_tokens
                return
            if store.steps is not None:
                found = self._found(req, store.steps, keys, minted)
                if found and store.whole is None:
                    self.num_hits += 1  # kind step: a hit is f > 0
                elif found:
                    self.num_fallback_hits += 1
        m = sum(minted)
        if m or found:
            by_steps = self._shrink(req, m / len(keys), found / len(keys))
            if found and store is not None and store.whole is None:
                self.hit_saved_tokens += by_steps

    def _whole(self, req: Request, cache: TraceCache, key: int) -> bool:
        """An exact or semantic lookup: whether the request reused a whole trace (a false hit included)."""
        assert self.spec is not None
        hit = cache.lookup(key, self._now())
        if self.spec.kind == "semantic":
            u = float(self.rng.random())  # drawn for every lookup: the stream does not depend on hits
            if hit:
                self._skip(req, "semantic", wrong=False)
            elif u < self.spec.false_hit_rate and len(cache):
                self.num_false_hits += 1
                self._skip(req, "semantic_false", wrong=True)
            else:
                return False
            return True
        if hit:
            self._skip(req, "exact", wrong=False)
        return hit

    def _found(self, req: Request, cache: TraceCache, keys: list[int], minted: list[bool]) -> int:
        """Look up each distinct step once (a use each); the positions whose step is held and not minted."""
        now = self._now()
        held = {k for k in dict.fromkeys(keys) if cache.lookup(k, now)}
        taken = {k for k, mt in zip(keys, minted, strict=True) if k in held and not mt}
        self.num_step_lookups += 1
        found = sum(k in taken for k in keys)
        self.found_share_sum += found / len(keys)
        self._looked_up[id(req)] = (keys, taken)  # for its completion: the keys are not hashed again
        return found

    def _shrink(self, req: Request, minted_share: float, found_share: float) -> int:
        """Minted steps and cached steps: of the reasoning x, the minted y = round(minted_share x) decodes as
        round(compression y), and round(step_reuse_share found_share x) more (at most what is left) is prefilled
        as prompt tokens. With answer quality the same cut applies to every answer's reasoning spent, sample by
        sample (then its probes), and a minted request's right samples turn wrong at the penalty times its minted
        share. With parallel samples the cached steps are prefilled once, in the shared prompt, and the tokens
        saved are every sample's. Returns the reasoning tokens the cached steps saved (for the hit's worth)."""
        c = self.minting.spec.compression if self.minting is not None else 1.0
        share = self.spec.step_reuse_share if self.spec is not None else 0.0

        def cuts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            y = np.rint(minted_share * x)
            saved = y - np.rint(c * y)
            return saved.astype(np.int64), np.minimum(np.rint(share * found_share * x), x - saved).astype(np.int64)

        saved_one, moved_one = cuts(np.array(req.reasoning_tokens))
        saved, moved = int(saved_one), int(moved_one)
        req.reuse = "minted" if minted_share > 0 else "step"
        answers = _answers(req)
        total, by_steps = saved + moved, moved
        if answers and answers[0].n > 1:  # parallel samples: the tokens no sample decodes any more, added up
            per_saved, per_moved = cuts(answers[0].reasoning + answers[0].probes)
            total, by_steps = int(per_saved.sum() + per_moved.sum()), int(per_moved.sum())
        req.reused_reasoning_tokens = total
        self.reused_reasoning_tokens += total
        req.reasoning_tokens -= saved + moved
        req.prompt_tokens += moved
        if moved:
            self._moved[id(req)] = moved
        penalty = 0.0
        if minted_share > 0:
            assert self.minting is not None
            self.minting.num_minted_requests += 1
            penalty = self.minting.spec.accuracy_penalty * minted_share
        v = self.mint_rng.random(answers[0].n) if answers and penalty > 0 else None
        for a in answers:
            sv, mv = cuts(a.reasoning + a.probes)
            _shorten(a, sv + mv)
            if v is not None:
                p = a.p
                lost = a.correct_samples & ~(v * p < p - penalty)
                a.p = np.maximum(p - penalty, 0.0)
                a.correct_samples = a.correct_samples & ~lost
                a.answer_id = np.where(lost, 1, a.answer_id)  # a right answer lost: wrong answer 1
        if answers and answers[0].n > 1:
            req.reasoning_tokens = answers[0].engine_reasoning_tokens
        return by_steps

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

    def finished(self, req: Request) -> None:
        keys, taken = self._looked_up.pop(id(req), (None, None))
        moved = self._moved.pop(id(req), 0) if self._moved and req.parent is None else 0
        if req.status == "completed":
            self.step_prompt_tokens += moved
        store = self._store_done(req)
        if (store is None or req.concept < 0 or req.parent is not None or req.status != "completed"
                or req.reuse in WHOLE_REUSE):
            return
        spec = self.spec
        assert spec is not None
        now = self._now()
        samples = req.answer.n if req.answer is not None else 1  # one sample's trace is stored: the mean
        text_bytes = spec.bytes_per_token * (req.reasoning_tokens + req.answer_tokens) / samples
        if store.whole is not None:
            store.whole.insert(self._key(req.query_type, req.concept), now, spec.bytes_per_entry + text_bytes)
        if store.steps is not None:
            keys = keys if keys is not None else self._keys(req)
            step_bytes = spec.bytes_per_entry + text_bytes / len(keys)  # a step: its share of the trace's text
            for k in dict.fromkeys(keys):
                if taken is None or k not in taken:
                    store.steps.insert(k, now, step_bytes)

    def _store_done(self, req: Request) -> TraceStore | None:
        """The store a finished request fills: the cluster's."""
        return self.cache.at(-1) if self.cache is not None else None

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
            out["minting_jobs"] = self.minting.num_jobs - self.minting.first_job
            out["minting_jobs_paid"] = self.minting.num_paid_jobs
        out.update(self._steps_summary())
        out.update(self.history_summary)
        return out

    def _steps_summary(self) -> dict[str, Any]:
        """With concept steps, a step fallback or per-replica caches: lookups that consulted a step cache, the mean
        share f of a request's steps found there (NaN with none), fallback hits; and the minting counter's largest
        possible undercount (Misra-Gries: 0 while exact)."""
        if not self.extended:
            return {}
        out: dict[str, Any] = {}
        n = self.num_step_lookups
        if self.spec is not None and (self.spec.kind == "step" or self.spec.step_fallback):
            out = {"step_lookups": n, "step_found_share_mean": self.found_share_sum / n if n else float("nan")}
            if self.spec.step_fallback:
                out["step_fallback_hits"] = self.num_fallback_hits
        if self.minting is not None:
            out["minting_count_error_max"] = self.minting.counter.num_decrements
        return out


class ReplicaTraceReuse(TraceReuse):
    """Per-replica caches (scope replica): each replica holds its own TraceStore of the same spec. Minting stays
    the model's, cluster-wide: counted and decided on arrival. The cache is looked up once the router has chosen
    the request's replica (the `routed` stage, before the replica enqueues it; the reuse then shrinks it after the
    routing decision, not before), and a completed request fills the caches of the replica it was routed to."""

    def __init__(self, sim: Simulation, spec: TraceCacheSpec | None, minting: MintingSpec | None = None) -> None:
        super().__init__(sim, spec, minting)
        self._pending: dict[int, tuple[list[int], list[bool]]] = {}  # id(request) -> (keys, minted), not routed
        self._routed_to: dict[int, int] = {}  # id(request) -> its replica's index, while in flight

    def arrived(self, req: Request) -> None:
        if req.concept < 0 or req.parent is not None:
            return
        keys = self._keys(req)
        self._pending[id(req)] = (keys, self._count(keys))

    def routed(self, req: Request, replica: Any) -> None:
        pending = self._pending.pop(id(req), None)
        if pending is None or self.cache is None:
            return
        self._routed_to[id(req)] = replica.index
        self._reuse(req, self.cache.at(replica.index), *pending)

    def _route_history(self, req: Request, index: int) -> None:
        """Replica scope: history requests go to the replicas in turn (round robin), for want of a router."""
        self.routed(req, _Index(index % len(self.sim.replicas)))

    def _store_done(self, req: Request) -> TraceStore | None:
        self._pending.pop(id(req), None)  # rejected before routing
        scope = self._routed_to.pop(id(req), None)
        return None if scope is None or self.cache is None else self.cache.at(scope)


class _Index:
    """A replica as `routed` needs one for a history request: its index."""

    def __init__(self, index: int) -> None:
        self.index = index


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
