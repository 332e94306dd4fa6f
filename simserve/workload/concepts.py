"""Concepts of queries (issue 18, trace reuse): which concept each request asks about, drawn from a Zipf popularity
over a universe of concepts, with per-user locality and novelty; and the trace cache's spec. Users and concepts are
counts and rates, never objects: memory is bounded by a fixed table and a capped LRU, not by users or concepts.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

ZIPF_TABLE_RANKS = 1 << 16  # exact CDF for the most popular ranks; beyond, a continuous approximation (docs/model.md)
USER_MEMORY_CAP = 1 << 16  # users whose last concept is remembered for locality (least recently seen dropped first)


class StepsSpec(BaseModel):
    """A concept's reasoning as `per_query` steps drawn from a vocabulary of `vocabulary` steps with their own Zipf
    popularity, so different concepts share steps (issue 18: [Identify animal] -> [Recall leg count: 8]). Every
    default is an assumption: no measurement of reasoning-step reuse across queries exists."""

    model_config = _FROZEN
    vocabulary: int = Field(default=100_000, gt=0, description="distinct reasoning steps of the query type "
                            "(100000: an assumption)")
    per_query: int = Field(default=8, gt=0, description="steps in one query's reasoning, each standing for an equal "
                           "share of its reasoning tokens (8: an assumption)")
    zipf_exponent: float = Field(default=1.0, ge=0, description="Zipf exponent of step popularity, the step of rank "
                                 "r drawn with probability proportional to r ** -zipf_exponent (1.0: an assumption)")


class ConceptSpec(BaseModel):
    """Each request of a mix entry asks about one concept of a universe of `num_concepts` with Zipf popularity:
    the concept of rank r is asked with probability proportional to r ** -zipf_exponent. With `steps`, the
    concept's reasoning is a sequence of steps shared with other concepts (ConceptSteps); without, a concept is its
    own single step."""

    model_config = _FROZEN
    num_concepts: int = Field(gt=0, description="size of the concept universe")
    zipf_exponent: float = Field(default=0.8, ge=0, description="Zipf exponent of concept popularity (0.8: an "
                                 "assumption; no measurement on LLM prompts exists)")
    user_locality: float = Field(default=0.0, ge=0, le=1, description="share of a user's queries that repeat "
                                 "the user's own last concept (when it is remembered)")
    novelty_per_s: float = Field(default=0.0, ge=0, description="new concepts per second: each enters as the "
                                 "most popular and every other concept moves down one rank")
    steps: StepsSpec | None = Field(default=None, description="the concept's reasoning as steps of a shared, "
                                    "Zipf-popular step vocabulary (null: the concept is its own single step)")


# Presets of a trace cache's location: (lookup latency s, USD per lookup, USD per GB-hour held). Issue 18: an
# in-memory index about 2 ms, a remote vector database about 30 ms, an embedding about 1e-6 USD per query. Remote
# prices are Pinecone serverless Standard's list prices (AWS us-east-1, pinecone.io/pricing): 16 USD per million
# read units, a query taken as 1 read unit (Pinecone charges about 1 per GB of namespace: an assumption), plus the
# embedding; storage 0.33 USD per GB-month (730 hours). The in-memory storage price, 0.01 USD per GB-hour, is an
# assumption (about the memory share of a cloud memory-optimised instance).
LOCATIONS: dict[str, tuple[float, float, float]] = {
    "memory": (0.002, 1e-6, 0.01),
    "remote": (0.030, 1e-6 + 16e-6, 0.33 / 730.0),
}


class TraceCacheSpec(BaseModel):
    """A cache of reasoning traces, cluster-wide or one per replica: `exact` reuse (same concept, the whole trace,
    keyed by (query type, concept)), `semantic` (the same, plus false hits: a lookup of a concept not cached
    returns another cached trace, whose answer is wrong), or `step` (keyed by (query type, step): the share of a
    request's steps found cached, times `step_reuse_share`, of its reasoning is given as prompt tokens, prefilled
    instead of decoded). `step_fallback` adds a step cache behind an exact or semantic one."""

    model_config = _FROZEN
    kind: Literal["exact", "semantic", "step"] = Field(
        default="exact", description="exact: same concept, same query; semantic: same concept above the similarity "
        "threshold, with false hits; step: cached steps of the same concept prefilled as prompt tokens")
    false_hit_rate: float = Field(default=0.05, ge=0, le=1, description="semantic: chance that a lookup of a concept "
                                  "not cached returns another cached trace, with a wrong answer (0.05: an "
                                  "assumption, range 0.01-0.30; a bounded-error cache such as vCache: 0.02)")
    step_reuse_share: float = Field(default=0.35, ge=0, le=1, description="step: share of a hit's reasoning tokens "
                                    "given as prompt tokens instead of decoded (Retrieval-of-Thought: -40% tokens)")
    capacity_entries: int | None = Field(default=None, gt=0, description="traces held at most (null: unbounded)")
    eviction: Literal["lru", "lfu"] = Field(default="lru", description="which trace leaves a full cache")
    ttl_s: float | None = Field(default=None, gt=0, description="a trace expires this long after it was stored "
                                "(null: never)")
    location: Literal["memory", "remote"] = Field(
        default="memory", description="where the index lives, a preset of lookup latency and prices: memory (2 ms, "
        "1e-6 USD per lookup, 0.01 USD per GB-hour) or remote, a managed vector database (30 ms, 1.7e-5 USD, "
        "0.33 USD per GB-month); fields given override it (docs/model.md, sources)")
    lookup_latency_s: float | None = Field(default=None, ge=0, description="delay before a request with a concept "
                                           "enters the cluster (null: the location's, memory 2 ms, remote 30 ms)")
    lookup_usd: float | None = Field(default=None, ge=0, description="cost of one lookup, embedding plus vector "
                                     "search (null: the location's, memory 1e-6 USD, remote 1.7e-5 USD)")
    bytes_per_token: float = Field(default=4.0, ge=0, description="bytes a stored trace holds per token of text "
                                   "(4: about 4 characters of UTF-8 per token, an assumption)")
    bytes_per_entry: float = Field(default=6144.0, ge=0, description="bytes a stored trace holds besides its text: "
                                   "its embedding (6144: 1536 float32 dimensions, an assumption)")
    storage_usd_per_gb_hour: float | None = Field(
        default=None, ge=0, description="price of the bytes held, per GB (1e9 bytes) per hour (null: the location's, "
        "memory 0.01 USD, an assumption; remote 0.33 / 730 USD, a managed vector database's storage price)")
    step_fallback: bool = Field(default=False, description="exact or semantic: a whole-trace miss (not a false "
                                "hit) falls back to step reuse from a second, step-keyed cache of the same "
                                "capacity, eviction and time to live")
    scope: Literal["cluster", "replica"] = Field(default="cluster", description="cluster: one cache looked up "
                                                 "before routing; replica: each replica holds its own (the same "
                                                 "spec), looked up once the request is routed to it and filled "
                                                 "by requests completed there")

    @model_validator(mode="after")
    def _fallback_needs_whole_traces(self) -> TraceCacheSpec:
        if self.step_fallback and self.kind == "step":
            raise ValueError("'step_fallback' falls back from whole traces to steps: it needs kind 'exact' or "
                             "'semantic', not 'step' (a step cache already reuses steps)")
        return self

    @property
    def lookup_latency(self) -> float:
        """Seconds a lookup takes: lookup_latency_s, or the location's."""
        return LOCATIONS[self.location][0] if self.lookup_latency_s is None else self.lookup_latency_s

    @property
    def lookup_cost_usd(self) -> float:
        """USD a lookup costs: lookup_usd, or the location's."""
        return LOCATIONS[self.location][1] if self.lookup_usd is None else self.lookup_usd

    @property
    def storage_price_usd_per_gb_hour(self) -> float:
        """USD per GB-hour of traces held: storage_usd_per_gb_hour, or the location's."""
        return LOCATIONS[self.location][2] if self.storage_usd_per_gb_hour is None else self.storage_usd_per_gb_hour


class MintingSpec(BaseModel):
    """Minted reasoning tokens: a periodic offline job (a fine-tuning run in idle GPU time) mints a token for each
    step pattern (query type, step) seen in at least `min_count` queries, most frequent first, up to the store
    limit (without concept steps, a step is the concept); a later request that is not a whole-trace cache hit
    decodes `compression` of the reasoning its minted steps stand for, with its success probability lowered by
    `accuracy_penalty` times its minted share (docs/model.md, "Minted tokens")."""

    model_config = _FROZEN
    min_count: int = Field(default=5, gt=0, description="queries using a step pattern seen (arrived) before a job "
                           "for it to be minted (5: an assumption)")
    compression: float = Field(default=0.5, ge=0, le=1, description="share of a minted request's reasoning left "
                               "to decode, at equal accuracy (0.5: TokenSkip -40% at <0.4 pt, C3oT -50%, "
                               "Metacognitive Reuse -46%; the seed's 50 -> 10: 0.2)")
    accuracy_penalty: float = Field(default=0.0, ge=0, le=1, description="success probability a request with "
                                    "all its steps minted loses, in proportion to its minted share (0: equal "
                                    "accuracy; cuts of 75-92% cost 4-9 accuracy points)")
    store_limit_patterns: int | None = Field(default=10_000, gt=0, description="minted patterns held at most; "
                                             "none is ever dropped (null: no limit; 10000: an assumption)")
    job_every_s: float = Field(default=86_400.0, gt=0, description="the minting job runs every this long (a "
                               "day), at job_offset_s + k x job_every_s")
    job_offset_s: float = Field(default=0.0, ge=0, description="time of the first job within a period, less than "
                                "job_every_s (e.g. the night trough of a diurnal arrival rate); jobs at t = 0 are "
                                "not run")
    job_gpu_hours: float = Field(default=8.0, ge=0, description="GPU-hours of one job that mints at least one "
                                 "pattern (8: an assumption, a LoRA fine-tune of about an hour on 8 GPUs)")
    usd_per_gpu_hour: float | None = Field(default=None, ge=0, description="price of the job's GPU-hours (null: "
                                           "the first pool's GPU price)")
    counter_entries: int = Field(default=262_144, gt=0, description="step patterns the job counts at most (a "
                                 "Misra-Gries frequent-items counter: exact while fewer distinct patterns are seen, "
                                 "else each count is low by at most n / (counter_entries + 1) of n counted)")


    @model_validator(mode="after")
    def _offset_in_period(self) -> MintingSpec:
        if self.job_offset_s >= self.job_every_s:
            raise ValueError(f"job_offset_s ({self.job_offset_s:g}) must be less than job_every_s "
                             f"({self.job_every_s:g}): it is the job's time within each period")
        return self


def zipf_probabilities(n: int, exponent: float) -> np.ndarray:
    """Exact Zipf probabilities of ranks 1..n (for tests and analytic checks; costs memory per concept)."""
    w = np.arange(1, n + 1, dtype=float) ** -exponent
    return w / w.sum()


class ZipfSampler:
    """Zipf ranks 1..n by inverse CDF: an exact table over the first ZIPF_TABLE_RANKS ranks, and beyond them the
    continuous approximation sum_{i=K+1}^{m} i^-s ~ integral from K+1/2 to m+1/2 of x^-s dx, inverted in closed
    form. Memory is the table's, whatever n is."""

    def __init__(self, n: int, exponent: float) -> None:
        self.n, self.s = n, exponent
        k = min(n, ZIPF_TABLE_RANKS)
        head = np.cumsum(np.arange(1, k + 1, dtype=float) ** -exponent)
        self.k = k
        tail = self._integral(k + 0.5, n + 0.5) if n > k else 0.0
        self.total = float(head[-1]) + tail
        self.head_cdf = head / self.total

    def _integral(self, a: float, b: float) -> float:
        s = self.s
        return math.log(b / a) if s == 1.0 else (b ** (1 - s) - a ** (1 - s)) / (1 - s)

    def ranks(self, u: np.ndarray) -> np.ndarray:
        """Ranks (1-based int64) of uniforms `u` in [0, 1)."""
        r = np.searchsorted(self.head_cdf, u, side="right") + 1
        tail = r > self.k
        if tail.any():
            s, a = self.s, self.k + 0.5
            rest = (u[tail] - self.head_cdf[-1]) * self.total  # mass past the table
            x = a * np.exp(rest) if s == 1.0 else (a ** (1 - s) + (1 - s) * rest) ** (1 / (1 - s))
            r[tail] = np.clip(np.floor(x + 0.5), self.k + 1, self.n)
        return r.astype(np.int64)


class ConceptDrawer:
    """The concepts of one mix entry's requests, a batch at a time. The concept of rank r at time t has id
    k(t) + num_concepts - r, k(t) = floor(novelty_per_s * t) (ids are never reused: a concept leaves the universe
    and is not asked again). With locality, each request repeats its user's last concept with probability
    `user_locality` if the user is among the USER_MEMORY_CAP users seen most recently."""

    def __init__(self, spec: ConceptSpec) -> None:
        self.spec = spec
        self.zipf = ZipfSampler(spec.num_concepts, spec.zipf_exponent)
        self.last: OrderedDict[int, int] = OrderedDict()  # user -> last concept, LRU over users

    def draw(self, rng: np.random.Generator, times_s: np.ndarray, users: np.ndarray) -> np.ndarray:
        """Concept ids of a batch of requests (arrival times, users); two uniforms per request from `rng`."""
        n = len(times_s)
        u = rng.random((2, n))
        spec = self.spec
        shift = np.floor(spec.novelty_per_s * times_s).astype(np.int64)
        ids = shift + spec.num_concepts - self.zipf.ranks(u[0])
        if spec.user_locality <= 0.0:
            return ids
        repeat = u[1] < spec.user_locality
        last = self.last
        for i in range(n):
            user = int(users[i])
            old = last.get(user)
            if old is not None and repeat[i] and old >= shift[i]:  # still in the universe
                ids[i] = old
            last[user] = int(ids[i])
            last.move_to_end(user)
            if len(last) > USER_MEMORY_CAP:
                last.popitem(last=False)
        return ids


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele, Lea and Flood 2014) on a uint64 array: a bijective 64-bit mix whose
    outputs of consecutive inputs pass BigCrush. Arithmetic wraps modulo 2**64 (numpy arrays wrap silently)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


class ConceptSteps:
    """The steps of a concept's reasoning, a deterministic function of (concept id, position) computed on demand
    with no memory per concept: position j of concept c is the step of rank r = Zipf(u) over the vocabulary, u =
    splitmix64(splitmix64(c) + j) / 2**64 (its top 53 bits), so two concepts share a step at a position with
    probability sum_r p_r ** 2. Step ids are rank - 1 (0: the most popular). Without a steps spec a concept is its
    own single step: its step id is its concept id. Memory: one ZipfSampler table."""

    def __init__(self, spec: StepsSpec | None) -> None:
        self.spec = spec
        self.per_query = spec.per_query if spec is not None else 1
        self.zipf = ZipfSampler(spec.vocabulary, spec.zipf_exponent) if spec is not None else None
        self._positions = np.arange(self.per_query, dtype=np.uint64)

    def uniforms(self, concept: int) -> np.ndarray:
        """The per_query uniforms in [0, 1) of a concept's positions (the hash, before the Zipf map)."""
        h = splitmix64(splitmix64(np.array([concept], dtype=np.uint64)) + self._positions)
        return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53

    def of(self, concept: int) -> list[int]:
        """Step ids of `concept` at positions 0..per_query-1 (a step may recur within one concept)."""
        if self.zipf is None:
            return [concept]
        return (self.zipf.ranks(self.uniforms(concept)) - 1).tolist()
