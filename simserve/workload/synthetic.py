"""Synthetic workloads: query types (with shipped defaults), arrival processes, and the lazy request generator.

Workloads are generators: requests are drawn lazily in batches, so a run never holds the whole workload in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simserve.quality import Draws, EarlyExitSpec, KvCompressionSpec, ParallelSpec, QualityModel, QualitySpec
from simserve.request import Request
from simserve.workload.concepts import ConceptDrawer, ConceptSpec, MintingSpec, TraceCacheSpec
from simserve.workload.distributions import Distribution, Lognormal, lognormal_from_range
from simserve.workload.sessions import Sessions
from simserve.workload.traces import TraceSpec, replay

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------------- query types


class QueryType(BaseModel):
    """One entry of the workload mix: a query type, its weight and its length distributions.

    Output lengths are given either as `reasoning_tokens` + `answer_tokens`, or as `output_tokens` +
    `reasoning_share` (the fraction of output that is reasoning). Fields left out are taken from the shipped
    defaults of a known query type (QUERY_TYPES).
    """

    model_config = _FROZEN
    query_type: str = Field(min_length=1, description="its name; a shipped one (factual, coding, math_word, "
                            "competition_math, proof, deepseek-r1-production) fills in the lengths left out")
    weight: float = Field(default=1.0, gt=0, description="relative share of arrivals")
    prompt_tokens: Distribution | None = Field(default=None, description="prompt length (after any system "
                                               "prompt)")
    reasoning_tokens: Distribution | None = Field(default=None, description="reasoning length (with "
                                                  "answer_tokens)")
    answer_tokens: Distribution | None = Field(default=None, description="visible answer length (with "
                                               "reasoning_tokens)")
    output_tokens: Distribution | None = Field(default=None, description="whole output length (with "
                                               "reasoning_share)")
    reasoning_share: Distribution | None = Field(default=None, description="share of the output that is "
                                                 "reasoning, 0..1 (with output_tokens)")
    system_prompt_tokens: int = Field(default=0, ge=0, description="shared by every request of this type; "
                                      "prompt_tokens is the user message after it")
    quality: QualitySpec | None = Field(default=None, description="answer quality: accuracy against reasoning "
                                        "tokens, per-question spread, wrong answers (docs/quality.md); {} for the "
                                        "shipped defaults")
    max_reasoning_tokens: int | None = Field(default=None, gt=0, description="token budget: reasoning is cut "
                                             "here")
    early_exit: EarlyExitSpec | None = Field(default=None, description="stop reasoning once probes find the "
                                             "answer has settled")
    parallel: ParallelSpec | None = Field(default=None, description="n samples per request and their "
                                          "aggregation")
    priority: int = Field(default=0, description="its class for the priority scheduler: lower is more urgent "
                          "(vLLM's priority); every request of this type carries it")
    concepts: ConceptSpec | None = Field(default=None, description="each request asks about a concept of a "
                                         "Zipf-popular universe (trace reuse, docs/model.md)")

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: object) -> object:
        if not isinstance(data, dict) or data.get("query_type") not in QUERY_TYPES:
            return data
        own = {k for k in ("reasoning_tokens", "answer_tokens", "output_tokens", "reasoning_share") if k in data}
        merged = dict(data)
        for key, value in QUERY_TYPES[data["query_type"]].items():
            split_key = key != "prompt_tokens"
            if key not in merged and not (split_key and own):
                merged[key] = value
        return merged

    @model_validator(mode="after")
    def _complete(self) -> QueryType:
        if self.prompt_tokens is None:
            raise ValueError(f"query type {self.query_type!r} needs 'prompt_tokens' (no shipped default)")
        split = self.reasoning_tokens is not None or self.answer_tokens is not None
        share = self.output_tokens is not None or self.reasoning_share is not None
        if split == share or (split and (self.reasoning_tokens is None or self.answer_tokens is None)) or (
            share and (self.output_tokens is None or self.reasoning_share is None)
        ):
            raise ValueError(
                f"query type {self.query_type!r} needs either 'reasoning_tokens' and 'answer_tokens', "
                "or 'output_tokens' and 'reasoning_share'"
            )
        return self

    @property
    def quality_on(self) -> bool:
        """Whether answers of this type are modelled (any of quality, a budget, early exit, parallel sampling)."""
        return (self.quality is not None or self.max_reasoning_tokens is not None or self.early_exit is not None
                or self.parallel is not None)

    def quality_model(self, model: str, budget_tokens: int | None = None,
                      kv_compression: KvCompressionSpec | None = None) -> QualityModel | None:
        """The entry's quality model on `model`; `budget_tokens` replaces its own budget (0: no thinking); under
        `kv_compression`, accuracy retention and lengthening follow it."""
        if not self.quality_on:
            return None
        budget = self.max_reasoning_tokens if budget_tokens is None else budget_tokens
        return QualityModel.build(self.quality, model, self.query_type, budget, self.early_exit, self.parallel,
                                  kv_compression)


def _q(prompt: Lognormal, reasoning: Lognormal, answer: Lognormal) -> dict[str, dict]:
    return {k: v.model_dump(by_alias=True, exclude_none=True)
            for k, v in (("prompt_tokens", prompt), ("reasoning_tokens", reasoning), ("answer_tokens", answer))}


# Seed article 002, section 7 ("Token Generation by Query Type"): reasoning tokens are the reasoning model's
# range, answer tokens the standard model's (what the visible answer costs); each range read as p5..p95 of a
# lognormal. Prompt lengths are not in the table: our assumption, stated in docs/model.md.
QUERY_TYPES: dict[str, dict[str, dict]] = {
    "factual": _q(Lognormal(mean=120, cv=0.6), lognormal_from_range(200, 500), lognormal_from_range(50, 100)),
    "coding": _q(Lognormal(mean=800, cv=0.8), lognormal_from_range(2000, 8000), lognormal_from_range(200, 500)),
    "math_word": _q(Lognormal(mean=150, cv=0.4), lognormal_from_range(3000, 15000), lognormal_from_range(100, 200)),
    "competition_math": _q(Lognormal(mean=250, cv=0.4), lognormal_from_range(10000, 50000, 100000),
                           lognormal_from_range(200, 500)),
    "proof": _q(Lognormal(mean=300, cv=0.5), lognormal_from_range(20000, 100000, 120000),
                lognormal_from_range(500, 1000)),
    # Alibaba ServeGen DeepSeek-R1 production mixture (simserve/data/servegen-deepseek-r1/README.md).
    "deepseek-r1-production": {
        "prompt_tokens": {"dist": "empirical", "file": "builtin:servegen-deepseek-r1/prompt_tokens_pmf.csv.gz"},
        "output_tokens": {"dist": "empirical", "file": "builtin:servegen-deepseek-r1/output_tokens_pmf.csv.gz"},
        "reasoning_share": {"dist": "empirical",
                            "file": "builtin:servegen-deepseek-r1/reasoning_share_pmf.csv.gz"},
    },
}


class LengthSampler:
    """Draws (prompt, reasoning, answer) token counts for one query type. Prompt >= 1, answer >= 1,
    reasoning >= 0; values are rounded to the nearest integer."""

    def __init__(self, spec: QueryType, base_dir: Path | None) -> None:
        assert spec.prompt_tokens is not None
        self.prompt = spec.prompt_tokens.build(base_dir)
        self.split = spec.reasoning_tokens is not None
        if self.split:
            assert spec.reasoning_tokens is not None and spec.answer_tokens is not None
            self.first = spec.reasoning_tokens.build(base_dir)
            self.second = spec.answer_tokens.build(base_dir)
        else:
            assert spec.output_tokens is not None and spec.reasoning_share is not None
            self.first = spec.output_tokens.build(base_dir)
            self.second = spec.reasoning_share.build(base_dir)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        prompt = np.maximum(np.rint(self.prompt.sample(rng, n)), 1).astype(np.int64)
        if self.split:
            reasoning = np.maximum(np.rint(self.first.sample(rng, n)), 0).astype(np.int64)
            answer = np.maximum(np.rint(self.second.sample(rng, n)), 1).astype(np.int64)
        else:
            output = np.maximum(np.rint(self.first.sample(rng, n)), 1).astype(np.int64)
            share = np.clip(self.second.sample(rng, n), 0.0, 1.0)
            answer = np.maximum(output - np.floor(output * share).astype(np.int64), 1)
            reasoning = output - answer
        return prompt, reasoning, answer

    @property
    def mean_output_tokens(self) -> float:
        """Analytic mean of output tokens before rounding (split: reasoning + answer means)."""
        return self.first.mean + (self.second.mean if self.split else 0.0)


# ----------------------------------------------------------------------------------------------- arrivals

_RATE = "mean arrivals per second (omit it when workload.rate_per_user_per_s sets the rate)"


def _rate(rate_per_s: float | None) -> float:
    if rate_per_s is None:
        raise ValueError("the arrival process has no rate_per_s (WorkloadSpec.arrival_process fills it from "
                         "rate_per_user_per_s)")
    return rate_per_s


class PoissonArrivals(BaseModel):
    """Poisson process: exponential inter-arrival gaps with mean 1 / rate_per_s."""

    model_config = _FROZEN
    process: Literal["poisson"] = Field(default="poisson", description="exponential gaps")
    rate_per_s: float | None = Field(default=None, gt=0, description=_RATE)

    @property
    def mean_gap_s(self) -> float:
        return 1.0 / _rate(self.rate_per_s)

    def gaps_s(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(1.0 / _rate(self.rate_per_s), size=n)

    def times_s(self, rng: np.random.Generator, t0_s: float, n: int) -> np.ndarray:
        """The next n arrival times after an arrival at t0_s."""
        return t0_s + np.cumsum(self.gaps_s(rng, n))


class GammaArrivals(BaseModel):
    """Renewal process with gamma inter-arrival gaps: mean 1 / rate_per_s, coefficient of variation `cv`
    (cv > 1 is burstier than Poisson; ServeGen fits most DeepSeek-R1 client windows with a gamma)."""

    model_config = _FROZEN
    process: Literal["gamma"] = Field(default="gamma", description="gamma gaps (bursty when cv > 1)")
    rate_per_s: float | None = Field(default=None, gt=0, description=_RATE)
    cv: float = Field(gt=0, description="coefficient of variation of the gaps (1: Poisson)")

    @property
    def mean_gap_s(self) -> float:
        return 1.0 / _rate(self.rate_per_s)

    def gaps_s(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, 1.0 / (_rate(self.rate_per_s) * shape), size=n)

    def times_s(self, rng: np.random.Generator, t0_s: float, n: int) -> np.ndarray:
        """The next n arrival times after an arrival at t0_s."""
        return t0_s + np.cumsum(self.gaps_s(rng, n))


class DiurnalArrivals(BaseModel):
    """Non-homogeneous Poisson process with a daily cycle: rate(t) = rate_per_s (1 + amplitude cos(2 pi (t -
    peak_s) / period_s)), drawn exactly by thinning (Lewis and Shedler): candidates of a Poisson process at the
    peak rate, each kept with probability rate(t) / peak rate. `rate_per_s` is the mean over a period, so a whole
    number of periods holds rate_per_s x their length arrivals in expectation."""

    model_config = _FROZEN
    process: Literal["diurnal"] = Field(default="diurnal", description="Poisson with a cosine daily cycle")
    rate_per_s: float | None = Field(default=None, gt=0, description=_RATE + " (the mean over a period)")
    amplitude: float = Field(ge=0, lt=1, description="relative swing: the peak rate is rate_per_s (1 + amplitude), "
                             "the trough rate_per_s (1 - amplitude)")
    period_s: float = Field(default=86_400.0, gt=0, description="length of one cycle (a day)")
    peak_s: float = Field(default=50_400.0, ge=0, description="time of a peak within the cycle (14:00 if t = 0 "
                          "is midnight: an assumption); the trough is half a period later")

    @property
    def mean_gap_s(self) -> float:
        return 1.0 / _rate(self.rate_per_s)

    def rate_at(self, t_s: np.ndarray) -> np.ndarray:
        """The arrival rate at times t_s (per second)."""
        phase = 2.0 * math.pi * (np.asarray(t_s, float) - self.peak_s) / self.period_s
        return _rate(self.rate_per_s) * (1.0 + self.amplitude * np.cos(phase))

    def times_s(self, rng: np.random.Generator, t0_s: float, n: int) -> np.ndarray:
        """The next n arrival times after t0_s (an arrival, or the start): by thinning, in chunks of candidates
        (exponential gaps at the peak rate, then one uniform each). Candidates left over after the n-th arrival
        are dropped: the next call restarts from that arrival, exact for a Poisson process (memoryless)."""
        peak = 1.0 + self.amplitude
        lam_max = _rate(self.rate_per_s) * peak
        out = np.empty(n)
        k, t = 0, t0_s
        while k < n:
            m = int((n - k) * peak * 1.1) + 16
            cand = t + np.cumsum(rng.exponential(1.0 / lam_max, size=m))
            keep = cand[rng.random(m) * lam_max < self.rate_at(cand)][: n - k]
            out[k:k + len(keep)] = keep
            k += len(keep)
            t = float(cand[-1])
        return out


Arrival = Annotated[PoissonArrivals | GammaArrivals | DiurnalArrivals, Field(discriminator="process")]


class SessionSpec(BaseModel):
    """Multi-turn sessions: each arrival opens a session of `turns` turns; a turn arrives `think_time_s` after
    the previous one finishes, its prompt the previous prompt and answer plus a new message (`prompt_tokens`)."""

    model_config = _FROZEN
    turns: Distribution = Field(description="turns per session")
    think_time_s: Distribution = Field(description="seconds from a turn's end to the next turn")


class WorkloadSpec(BaseModel):
    """Synthetic workload: an arrival process and a weighted mix of query types, stopped after
    `num_requests` arrivals or at `duration_s`, whichever comes first."""

    model_config = _FROZEN
    num_requests: int | None = Field(default=None, gt=0, description="stop after this many arrivals")
    duration_s: float | None = Field(default=None, gt=0, description="stop arrivals at this time (seconds)")
    arrival: Arrival | None = Field(default=None, description="the arrival process (synthetic workloads)")
    mix: list[QueryType] | None = Field(default=None, min_length=1, description="the query types and their "
                                        "weights (synthetic workloads)")
    num_users: int = Field(default=1000, gt=0, description="users drawn uniformly per request")
    rate_per_user_per_s: float | None = Field(default=None, gt=0, description="queries per user per second: the "
                                              "arrival rate is num_users times it (then omit arrival.rate_per_s)")
    trace: TraceSpec | None = Field(default=None, description="replay a trace instead of arrival and mix")
    sessions: SessionSpec | None = Field(default=None, description="multi-turn sessions: each arrival opens "
                                         "one")
    prefix_unit_tokens: int = Field(default=64, gt=0, description="granularity of synthetic prefix keys; a "
                                    "multiple of the pools' kv_block_tokens for the prefix cache to use them")
    trace_cache: TraceCacheSpec | None = Field(default=None, description="a cluster-wide cache of reasoning "
                                               "traces reused by requests of the same concept (docs/model.md)")
    minting: MintingSpec | None = Field(default=None, description="minted reasoning tokens for frequent concepts "
                                        "(docs/model.md)")
    reuse_history_s: float | None = Field(default=None, gt=0, description="the provider's history before the run: "
                                          "this many seconds of the same traffic pass through the trace cache and "
                                          "the minting counts (stored as answered on arrival) before time 0, "
                                          "unserved and unpriced; duration_s and num_requests count the run after "
                                          "it (a multiple of a diurnal period keeps the phase)")

    @model_validator(mode="after")
    def _stops(self) -> WorkloadSpec:
        if self.reuse_history_s is not None:
            if self.trace_cache is None and self.minting is None:
                raise ValueError("'reuse_history_s' needs a 'trace_cache' or 'minting' to replay the history into")
            if self.sessions is not None:
                raise ValueError("'reuse_history_s' with 'sessions' is not supported: a history replays single "
                                 "queries")
        if self.trace is not None:
            if (self.arrival is not None or self.mix is not None or self.sessions is not None
                    or self.rate_per_user_per_s is not None):
                raise ValueError("give either 'trace' or 'arrival' and 'mix' (and 'sessions', "
                                 "'rate_per_user_per_s'), not both")
            return self
        if self.arrival is None or self.mix is None:
            raise ValueError("give 'arrival' and 'mix' (a synthetic workload) or 'trace' (a replay)")
        if self.arrival.rate_per_s is None and self.rate_per_user_per_s is None:
            raise ValueError("arrival.rate_per_s: required field is missing (or give rate_per_user_per_s: the rate "
                             "is then num_users x rate_per_user_per_s)")
        if self.arrival.rate_per_s is not None and self.rate_per_user_per_s is not None:
            raise ValueError("arrival.rate_per_s and rate_per_user_per_s both set the arrival rate: give one of "
                             "them, not both")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give 'num_requests' or 'duration_s' (or both)")
        names = [q.query_type for q in self.mix]
        if len(set(names)) != len(names):
            raise ValueError(f"query types in 'mix' must be unique, got {names}")
        return self

    @property
    def arrival_process(self) -> Arrival:
        """The arrival process with its rate: `arrival` as given, or with rate_per_s = num_users x
        rate_per_user_per_s."""
        assert self.arrival is not None
        if self.rate_per_user_per_s is None:
            return self.arrival
        return self.arrival.model_copy(update={"rate_per_s": self.num_users * self.rate_per_user_per_s})

    @property
    def expected_span_s(self) -> float:
        """Expected time of the last arrival. A trace's is its window (`end_s`) or `duration_s`; an open-ended
        trace's is not known before it is read (math.inf: the run follows its last arrival)."""
        if self.trace is not None:
            t = self.trace
            window = (t.end_s - t.start_s) if t.end_s is not None else math.inf
            return min(window / t.rate_scale, self.duration_s or math.inf)
        assert self.arrival is not None
        span = math.inf if self.num_requests is None else self.num_requests * self.arrival_process.mean_gap_s
        return min(span, self.duration_s or math.inf)


def build_sessions(spec: WorkloadSpec, rngs: dict[str, np.random.Generator],
                   base_dir: Path | None = None) -> Sessions | None:
    """The session source of a synthetic workload, or None if its requests share no prefixes."""
    if spec.mix is None:
        return None
    sessions = Sessions(
        [LengthSampler(q, base_dir) for q in spec.mix], [q.system_prompt_tokens for q in spec.mix],
        spec.prefix_unit_tokens, spec.sessions.turns.build(base_dir) if spec.sessions else None,
        spec.sessions.think_time_s.build(base_dir) if spec.sessions else None, rngs["sessions"])
    return sessions if sessions.active else None


# One named child stream per source of randomness, in a fixed order: adding a stream at the end never changes
# the draws of the others.
STREAMS = ("arrivals", "mix", "lengths", "users", "routing", "sessions", "quality", "scheduling", "concepts",
           "trace_cache", "minting", "speculative")


def rng_streams(seed: int) -> dict[str, np.random.Generator]:
    """A run's named random streams (STREAMS), split from one seed."""
    seeds = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, seeds, strict=True)}


def generate_requests(spec: WorkloadSpec, rngs: dict[str, np.random.Generator],
                      base_dir: Path | None = None, batch: int = 4096,
                      sessions: Sessions | None = None, model: str = "",
                      variants: Sequence[tuple[str, int | None]] = (),
                      kv_compression: KvCompressionSpec | None = None) -> Iterator[Request]:
    """Yield requests in arrival order, drawn lazily `batch` at a time from separate RNG streams
    (`arrivals`, `mix`, `lengths`, `users`), so changing one part of the workload leaves the others' draws alone.
    A trace workload replays the trace instead, cut at `num_requests` and `duration_s` too. Query types with answer
    quality draw their questions from the `quality` stream (for `model`: the shipped defaults are per model) and
    carry them in `req.answer`; with `variants` ((model, budget) pairs, the first the default; budget None: the
    entry's own, 0: no thinking), each question is drawn for every variant from the same random numbers and the
    request's pool picks one when it is routed (difficulty routing). Under `kv_compression` (the serving pools'),
    answers follow its accuracy retention and reasoning lengthens at low kept shares (query types without quality:
    their drawn reasoning lengthens; trace rows are replayed as they are)."""
    if spec.trace is not None:
        yield from _cut(replay(spec.trace, base_dir), spec.num_requests, spec.duration_s)
        return
    assert spec.arrival is not None and spec.mix is not None
    samplers = [LengthSampler(q, base_dir) for q in spec.mix]
    system = [q.system_prompt_tokens for q in spec.mix]
    weights = np.array([q.weight for q in spec.mix], float)
    weights /= weights.sum()
    names = [q.query_type for q in spec.mix]
    keys = list(dict.fromkeys(variants)) if len(set(variants)) > 1 else []
    priorities = [q.priority for q in spec.mix]
    quality = [q.quality_model(model, None, kv_compression) for q in spec.mix]
    alternatives = [[q.quality_model(m, b, kv_compression) for m, b in keys] if q.quality_on else []
                    for q in spec.mix]
    drawers = [None if q.concepts is None else ConceptDrawer(q.concepts) for q in spec.mix]
    limit = spec.num_requests if spec.num_requests is not None else math.inf
    horizon = spec.duration_s if spec.duration_s is not None else math.inf
    process = spec.arrival_process
    t, count = 0.0, 0
    while count < limit:
        n = int(min(batch, limit - count))
        times = process.times_s(rngs["arrivals"], t, n)
        kinds = rngs["mix"].choice(len(samplers), size=n, p=weights)
        users = rngs["users"].integers(0, spec.num_users, size=n)
        lengths = [s.sample(rngs["lengths"], n) for s in samplers]
        draws = [None if qm is None else _draw(qm, rngs["quality"], kinds == k, lengths[k][1], alternatives[k])
                 for k, qm in enumerate(quality)]
        concepts = _concepts(drawers, rngs["concepts"], kinds, times, users)
        for i in range(n):
            if times[i] >= horizon:
                return
            k = int(kinds[i])
            prompt, reasoning, answer = lengths[k]
            req = Request(count, int(users[i]), names[k], float(times[i]),
                          system[k] + int(prompt[i]), int(reasoning[i]), int(answer[i]))
            req.priority = priorities[k]
            if concepts is not None:
                req.concept = int(concepts[i])
            drawn, qm = draws[k], quality[k]
            if drawn is not None and qm is not None:
                row = int(drawn[0][i])
                req.answer = drawn[1].answer(row, qm)
                if drawn[2]:
                    req.answer.variants = {key: d.answer(row, alt)  # type: ignore[arg-type]
                                           for key, d, alt in zip(keys, drawn[2], alternatives[k], strict=True)}
                req.reasoning_tokens = req.answer.engine_reasoning_tokens
            elif kv_compression is not None and req.reasoning_tokens:
                factor = kv_compression.lengthening(kv_compression.kept_share(np.array([req.reasoning_tokens])))
                req.reasoning_tokens = int(np.rint(req.reasoning_tokens * float(factor[0])))
            if sessions is not None:
                sessions.start(req, k)
            yield req
            count += 1
        t = float(times[-1])


def _concepts(drawers: Sequence[ConceptDrawer | None], rng: np.random.Generator, kinds: np.ndarray,
              times: np.ndarray, users: np.ndarray) -> np.ndarray | None:
    """The batch's concept ids (-1: a query type without concepts), or None if no query type has concepts (the
    `concepts` stream is then never drawn from)."""
    if all(d is None for d in drawers):
        return None
    out = np.full(len(kinds), -1, dtype=np.int64)
    for k, d in enumerate(drawers):
        if d is not None:
            mine = kinds == k
            out[mine] = d.draw(rng, times[mine], users[mine])
    return out


def _draw(qm: QualityModel, rng: np.random.Generator, mine: np.ndarray, reasoning: np.ndarray,
          alternatives: Sequence[QualityModel | None] = ()) -> tuple[np.ndarray, Draws, list[Draws]]:
    """The batch's questions of one query type: (row of each request of the batch in the draws, the draws, the
    same questions drawn for each alternative model and budget from the same random numbers)."""
    rows = np.cumsum(mine) - 1
    state = rng.bit_generator.state
    others = []
    for alt in alternatives:
        assert alt is not None
        rng.bit_generator.state = state
        others.append(alt.draw(rng, reasoning[mine]))
    rng.bit_generator.state = state
    return rows, qm.draw(rng, reasoning[mine]), others


def _cut(requests: Iterator[Request], num_requests: int | None, duration_s: float | None) -> Iterator[Request]:
    for i, req in enumerate(requests):
        if (num_requests is not None and i >= num_requests) or (duration_s is not None and req.arrival_s >= duration_s):
            return
        yield req
