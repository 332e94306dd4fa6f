"""Trace reuse across concepts (issue 18): a concept's reasoning as steps of a shared Zipf vocabulary (ids hashed
from (concept, position), Zipf-distributed, shared between concepts at the rate the Zipf implies), the step cache's
found share f, the step fallback of whole-trace caches, minting per step pattern against a reference model, the
Misra-Gries counter's bound, and per-replica caches (the `routed` hook stage). Runs without `steps` are covered by
tests/test_reuse.py, unchanged: there every rule reduces to the first step's."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import assert_equal_figures, by_id, scenario, tiny

from simserve import Simulation
from simserve.engine import Hooks
from simserve.request import Request
from simserve.reuse import FrequentCounter
from simserve.workload import (
    ConceptSteps,
    StepsSpec,
    TraceCacheSpec,
    generate_requests,
    rng_streams,
    zipf_probabilities,
)

# ------------------------------------------------------------------------------------------ step ids


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Vigna's reference C code) on a Python int modulo 2**64."""
    m = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def test_step_ids_are_a_deterministic_function_of_concept_and_position():
    spec = StepsSpec(vocabulary=1000, per_query=8)
    a, b = ConceptSteps(spec), ConceptSteps(spec)
    assert [a.of(c) for c in range(50)] == [b.of(c) for c in range(50)] == [a.of(c) for c in range(50)]
    assert all(len(a.of(c)) == 8 and all(0 <= s < 1000 for s in a.of(c)) for c in range(50))
    assert a.of(3) != a.of(4)
    assert ConceptSteps(None).of(12345) == [12345]  # no steps: a concept is its own single step
    small = ConceptSteps(StepsSpec(vocabulary=10, per_query=3))
    cdf = np.cumsum(zipf_probabilities(10, 1.0))
    for c in (0, 1, 99, 2**39):  # against SplitMix64 in plain Python integers and the exact Zipf CDF
        u = [(_splitmix64((_splitmix64(c) + j) % 2**64) >> 11) * 2.0**-53 for j in range(3)]
        assert small.of(c) == [int(np.searchsorted(cdf, x, side="right")) for x in u]
    assert small.of(0) == [3, 0, 1]  # fixed by the hash: a change of it shows here
    assert StepsSpec() == StepsSpec(vocabulary=100_000, per_query=8, zipf_exponent=1.0)


@pytest.mark.parametrize(("vocabulary", "s"), [(50, 1.0), (2000, 0.8)])
def test_step_ids_follow_the_step_zipf_over_the_vocabulary(vocabulary, s):
    steps = ConceptSteps(StepsSpec(vocabulary=vocabulary, per_query=8, zipf_exponent=s))
    ids = np.array([steps.of(c) for c in range(25_000)]).ravel()
    n = len(ids)
    freq = np.bincount(ids, minlength=vocabulary) / n
    p = zipf_probabilities(vocabulary, s)
    top = slice(0, 50)
    assert np.all(np.abs(freq[top] - p[top]) <= 5 * np.sqrt(p[top] * (1 - p[top]) / n))
    for j in range(8):  # every position on its own, too
        col = np.array([steps.of(c)[j] for c in range(5000)])
        assert abs(np.mean(col == 0) - p[0]) <= 5 * math.sqrt(p[0] * (1 - p[0]) / 5000)


def test_two_concepts_share_steps_at_the_rate_the_step_zipf_implies():
    # Position j of concept c and position j' of another concept are independent draws of the step Zipf: they are
    # the same step with probability sum_r p_r^2 (and the steps of 10^6 concepts cost no memory).
    vocabulary, s, pairs = 200, 1.0, 20_000
    steps = ConceptSteps(StepsSpec(vocabulary=vocabulary, per_query=4, zipf_exponent=s))
    p = zipf_probabilities(vocabulary, s)
    q = float(np.sum(p**2))
    same = sum(steps.of(c)[c % 4] == steps.of(10**6 + c)[(c + 1) % 4] for c in range(pairs))
    assert abs(same / pairs - q) <= 4 * math.sqrt(q * (1 - q) / pairs), (same / pairs, q)
    shared = [len(set(steps.of(c)) & set(steps.of(10**6 + c))) > 0 for c in range(2000)]
    assert 0.3 < np.mean(shared) < 0.9  # a query often shares a step with another: the point of the model


# ------------------------------------------------------------------------------------------ the step cache


def _run(tmp_path: Path, concepts: dict, cache: dict | None = None, minting: dict | None = None,
         n: int = 300, reasoning: int = 100, quality: bool = False, requests: list[Request] | None = None,
         replicas: int = 1, rate: float = 0.05, router: str | None = None, **engine: Any):
    data = tiny()
    data["cluster"]["pools"][0]["replicas"] = replicas
    data["workload"]["num_requests"] = n
    data["workload"]["arrival"]["rate_per_s"] = rate
    entry = data["workload"]["mix"][0]
    entry["reasoning_tokens"]["value"] = reasoning
    entry["concepts"] = concepts
    if quality:
        entry["quality"] = {}
    if cache is not None:
        data["workload"]["trace_cache"] = cache
    if minting is not None:
        data["workload"]["minting"] = minting
    if router is not None:
        data["router"] = {"kind": router}
    sc = scenario(data, check_invariants=True, **engine)
    sim = Simulation(sc, records_dir=tmp_path)
    return sc, sim, sim.run(requests)


def test_the_found_share_on_a_tiny_deterministic_case(tmp_path):
    # Requests 100 s apart, each done in well under a second: the unbounded step cache holds every step of every
    # earlier request, so request i finds f_i = (its positions whose step an earlier request had) / 4.
    spec = StepsSpec(vocabulary=12, per_query=4)
    steps = ConceptSteps(spec)
    concepts = [0, 1, 2, 0, 7, 3]

    def requests() -> list[Request]:
        reqs = [Request(i, 0, "t", 100.0 * i, 10, 100, 1) for i in range(len(concepts))]
        for r, c in zip(reqs, concepts, strict=True):
            r.concept = c
        return reqs

    cache = {"kind": "step", "step_reuse_share": 0.5, "lookup_latency_s": 0.0}
    _, _, res = _run(tmp_path, {"num_concepts": 10, "steps": spec.model_dump()}, cache, requests=requests())
    held: set[int] = set()
    fs = []
    for c in concepts:
        fs.append(sum(s in held for s in steps.of(c)) / 4)
        held.update(steps.of(c))
    assert [steps.of(c) for c in (0, 1, 3)] == [[3, 0, 2, 11], [1, 2, 5, 4], [5, 5, 0, 0]]  # 3 repeats steps
    assert fs == [0.0, 0.25, 0.75, 1.0, 0.5, 1.0]  # the reference above, written out
    df = by_id(res.requests)
    moved = [round(0.5 * f * 100) for f in fs]
    assert list(df["reused_reasoning_tokens"]) == moved == [0, 12, 38, 50, 25, 50]
    assert list(df["reasoning_tokens"]) == [100 - m for m in moved]
    assert list(df["prompt_tokens"]) == [10 + m for m in moved]
    assert list(df["reuse"]) == ["none", "step", "step", "step", "step", "step"]
    s = res.summary
    assert s["trace_cache_hits"] == 5 and s["trace_cache_hit_ratio"] == 5 / 6
    assert s["step_lookups"] == 6 and math.isclose(s["step_found_share_mean"], sum(fs) / 6)
    # Capacity counts steps: a cache of 2 holds only the last two steps stored.
    _, sim, _ = _run(tmp_path / "cap", {"num_concepts": 10, "steps": spec.model_dump()},
                     cache | {"capacity_entries": 2}, requests=requests())
    assert sim.reuse is not None and len(sim.reuse.cache) == 2


def _reference(sc, minting: dict | None, step_cache: bool, per_query: int) -> list[tuple[int, int]]:
    """(minted positions m, found non-minted positions F) of each request, requests done before the next arrives:
    jobs at each multiple of job_every_s mint the steps seen in at least min_count earlier queries (a step once per
    query), most frequent first (ties: the smaller step), to the store limit; the unbounded step cache holds every
    step of every earlier request."""
    spec = sc.workload.mix[0].concepts
    steps = ConceptSteps(spec.steps)
    counts: collections.Counter[int] = collections.Counter()
    minted: set[int] = set()
    held: set[int] = set()
    jobs, out = 0, []
    for r in generate_requests(sc.workload, rng_streams(sc.seed)):
        mine = steps.of(r.concept)
        while minting is not None and (jobs + 1) * minting["job_every_s"] <= r.arrival_s:
            jobs += 1
            ready = sorted((-c, k) for k, c in counts.items() if c >= minting["min_count"] and k not in minted)
            minted.update(k for _, k in ready[:max(minting["store_limit_patterns"] - len(minted), 0)])
        m = sum(k in minted for k in mine)
        found = sum(k in held and k not in minted for k in mine) if step_cache else 0
        out.append((m, found))
        counts.update(set(mine))
        held.update(mine)
    assert all(len(steps.of(c)) == per_query for c in range(3))
    return out


def test_minting_per_step_against_a_reference_model_with_step_reuse(tmp_path):
    concepts = {"num_concepts": 200, "steps": {"vocabulary": 40, "per_query": 4, "zipf_exponent": 1.0}}
    minting = {"min_count": 3, "job_every_s": 1000.0, "compression": 0.3, "store_limit_patterns": 6}
    cache = {"kind": "step", "step_reuse_share": 0.4, "lookup_latency_s": 0.0}
    sc, sim, res = _run(tmp_path, concepts, cache, minting)
    ref = _reference(sc, minting, step_cache=True, per_query=4)
    df = by_id(res.requests)
    assert (df["status"] == "completed").all() and len(df) == len(ref)
    x = 100
    for (m, found), row in zip(ref, df.itertuples(), strict=True):
        y = round(m / 4 * x)
        saved = y - round(0.3 * y)
        moved = min(round(0.4 * (found / 4) * x), x - saved)
        assert (row.reasoning_tokens, row.prompt_tokens) == (x - saved - moved, 10 + moved)
        assert row.reuse == ("minted" if m else "step" if found else "none")
    ms = np.array([m for m, _ in ref])
    found = np.array([f for _, f in ref])
    assert ((ms > 0) & (ms < 4)).sum() > 50 and ((ms > 0) & (found > 0)).sum() > 20  # the mixed cases occur
    s = res.summary
    assert s["minted_patterns"] == 6 and s["minted_requests"] == (ms > 0).sum()
    assert s["trace_cache_hits"] == (found > 0).sum() and math.isclose(s["step_found_share_mean"], found.mean() / 4)
    assert s["minting_count_error_max"] == 0  # 40 steps < the counter's 262144 entries: exact
    assert sim.reuse is not None and sim.reuse.minting is not None
    assert all(isinstance(k, int) for k in sim.reuse.minting.counts)  # compact int keys


def test_minting_penalty_applies_in_proportion_to_the_minted_share(tmp_path):
    concepts = {"num_concepts": 200, "steps": {"vocabulary": 40, "per_query": 4}}
    minting = {"min_count": 2, "job_every_s": 500.0, "store_limit_patterns": 10}
    sc, _, off = _run(tmp_path / "off", concepts, n=600, quality=True)
    _, _, free = _run(tmp_path / "free", concepts, minting=minting, n=600, quality=True)
    _, _, pen = _run(tmp_path / "pen", concepts, minting=minting | {"accuracy_penalty": 0.4}, n=600, quality=True)
    a, b, c = by_id(off.requests), by_id(free.requests), by_id(pen.requests)
    ms = np.array([m for m, _ in _reference(sc, minting | {"store_limit_patterns": 10}, False, 4)])
    assert list(b["reuse"] == "minted") == list(ms > 0) and len(set(ms[ms > 0])) >= 3
    assert b["correct"].equals(a["correct"]) and b["p_correct"].equals(a["p_correct"])  # no penalty: no change
    assert np.allclose(c["p_correct"], np.maximum(a["p_correct"] - 0.4 * ms / 4, 0.0))
    assert not ((a["correct"] == 0) & (c["correct"] == 1)).any() and (c["correct"] < a["correct"]).sum() > 0


# ------------------------------------------------------------------------------------------ Misra-Gries


def test_frequent_counter_is_exact_below_capacity_and_within_its_bound_above():
    rng = np.random.default_rng(0)
    few = rng.integers(0, 50, size=5000).tolist()
    counter = FrequentCounter(64)
    for k in few:
        counter.add(k)
    assert counter.counts == dict(collections.Counter(few)) and counter.num_decrements == 0
    cap = 100
    stream = rng.zipf(1.3, size=50_000).tolist()
    assert len(set(stream)) > 10 * cap
    counter = FrequentCounter(cap)
    for k in stream:
        counter.add(k)
    true = collections.Counter(stream)
    n = len(stream)
    assert 0 < counter.num_decrements <= n / (cap + 1) and len(counter.counts) <= cap
    for k, c in true.items():
        est = counter.counts.get(k, 0)
        assert c - counter.num_decrements <= est <= c
        if c > n / (cap + 1):
            assert k in counter.counts  # every heavy hitter is kept


def test_a_small_minting_counter_bounds_memory_and_reports_its_error(tmp_path):
    concepts = {"num_concepts": 10_000, "steps": {"vocabulary": 5000, "per_query": 4, "zipf_exponent": 0.8}}
    _, sim, res = _run(tmp_path, concepts, minting={"min_count": 3, "job_every_s": 1000.0, "counter_entries": 16})
    assert sim.reuse is not None and sim.reuse.minting is not None
    assert len(sim.reuse.minting.counts) <= 16 and res.summary["minting_count_error_max"] > 0


# ------------------------------------------------------------------------------------------ step fallback


def test_step_fallback_is_refused_with_a_step_cache():
    with pytest.raises(ValueError, match="needs kind 'exact' or 'semantic'"):
        TraceCacheSpec(kind="step", step_fallback=True)
    with pytest.raises(ValueError):
        TraceCacheSpec.model_validate({"scope": "node"})


def test_a_whole_trace_miss_falls_back_to_the_step_cache(tmp_path):
    concepts = {"num_concepts": 100, "steps": {"vocabulary": 60, "per_query": 4}}
    cache = {"kind": "exact", "lookup_latency_s": 0.0}
    sc, _, plain = _run(tmp_path / "p", concepts, cache)
    _, _, fb = _run(tmp_path / "f", concepts, cache | {"step_fallback": True, "step_reuse_share": 0.5})
    a, b = by_id(plain.requests), by_id(fb.requests)
    assert list(a["reuse"] == "exact") == list(b["reuse"] == "exact")  # whole-trace hits are unchanged
    ref = _reference(sc, None, step_cache=True, per_query=4)  # every concept seen has its steps cached
    for (_, found), row in zip(ref, b.itertuples(), strict=True):
        if row.reuse != "exact":
            moved = round(0.5 * found / 4 * 100)
            assert (row.reuse, row.reasoning_tokens, row.prompt_tokens) == (
                "step" if found else "none", 100 - moved, 10 + moved)
    s = fb.summary
    assert s["step_fallback_hits"] == (b["reuse"] == "step").sum() > 50
    assert s["trace_cache_hits"] == plain.summary["trace_cache_hits"] == (b["reuse"] == "exact").sum()
    assert s["step_lookups"] == (b["reuse"] != "exact").sum()
    # Semantic: a false hit never falls back, and the false hits are the same as without the fallback.
    sem = {"kind": "semantic", "false_hit_rate": 0.2, "lookup_latency_s": 0.0}
    _, _, s0 = _run(tmp_path / "s0", concepts, sem)
    _, _, s1 = _run(tmp_path / "s1", concepts, sem | {"step_fallback": True})
    assert list(by_id(s1.requests)["reuse"].replace("step", "none")) == list(by_id(s0.requests)["reuse"])
    assert (by_id(s1.requests)["reuse"] == "semantic_false").sum() > 10


# ------------------------------------------------------------------------------------------ per-replica caches


class _Routed(Hooks):
    def __init__(self) -> None:
        self.log: list[tuple[int, int]] = []

    def routed(self, req: Request, replica: Any) -> None:
        self.log.append((req.request_id, replica.index))


def test_routed_hook_sees_each_request_once_on_its_replica(tmp_path):
    data = tiny()
    data["cluster"]["pools"][0]["replicas"] = 3
    data["workload"]["num_requests"] = 30
    hook = _Routed()
    sim = Simulation(scenario(data), records_dir=tmp_path, hooks=[hook])
    df = by_id(sim.run().requests)
    assert hook.log == list(zip(df["request_id"], df["replica"], strict=True))
    assert not Simulation(scenario(data), records_dir=tmp_path / "b")._hook_routed  # no override: no call


def test_one_replica_caches_per_replica_as_one_cache_per_cluster(tmp_path):
    concepts = {"num_concepts": 80, "steps": {"vocabulary": 60, "per_query": 4}}
    cache = {"kind": "semantic", "false_hit_rate": 0.1, "step_fallback": True, "capacity_entries": 30}
    minting = {"min_count": 3, "job_every_s": 500.0, "accuracy_penalty": 0.2}
    runs = [_run(tmp_path / scope, concepts, cache | {"scope": scope}, minting, n=400, quality=True, rate=0.5)[2]
            for scope in ("cluster", "replica")]
    a, b = (by_id(r.requests) for r in runs)
    assert a.equals(b) and set(a["reuse"]) >= {"semantic", "semantic_false", "step", "minted"}
    sa, sb = ({k: v for k, v in r.summary.items() if k != "wall_time_s"} for r in runs)
    assert_equal_figures(sa, sb)


def test_per_replica_caches_hit_only_traces_completed_on_their_replica(tmp_path):
    concepts = {"num_concepts": 100}
    cache = {"kind": "exact", "lookup_latency_s": 0.0}
    runs = {scope: _run(tmp_path / scope, concepts, cache | {"scope": scope}, n=600, replicas=3, rate=2.0,
                        router="round_robin") for scope in ("cluster", "replica")}
    cluster, replica = runs["cluster"][2].summary, runs["replica"][2].summary
    assert replica["trace_cache_hit_ratio"] < cluster["trace_cache_hit_ratio"] - 0.1
    sc = runs["replica"][0]
    df = by_id(runs["replica"][2].requests)
    df["concept"] = [r.concept for r in generate_requests(sc.workload, rng_streams(sc.seed))]
    assert (df["status"] == "completed").all()
    stored = df[df["reuse"] == "none"]  # the requests that stored a trace on their replica
    for row in df.itertuples():  # unbounded: a hit iff its replica completed a miss of its concept before it came
        earlier = stored[(stored["concept"] == row.concept) & (stored["replica"] == row.replica)
                         & (stored["finish_s"] < row.arrival_s)]
        assert (row.reuse == "exact") == (len(earlier) > 0), row
    assert replica["trace_cache_entries"] > cluster["trace_cache_entries"]  # a concept cached on several replicas
