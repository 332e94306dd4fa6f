"""Trace reuse, first step (issue 18): the concept workload, the exact trace cache against theory (an unbounded
cache's expected hits on a stationary Zipf stream; an LRU cache against Che's approximation), the hook in a run, and
runs without a trace cache unchanged byte for byte (tests/fixtures/pre_reuse: written by commit 4b09a21, before
trace reuse, running each scenario cut to 200 requests as below)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import assert_same_records, assert_same_summary, by_id, scenario, tiny
from scipy.optimize import brentq

from simserve import Simulation, parse_scenario
from simserve.reuse import TraceCache
from simserve.workload import (
    ConceptDrawer,
    ConceptSpec,
    MintingSpec,
    TraceCacheSpec,
    WorkloadSpec,
    ZipfSampler,
    generate_requests,
    rng_streams,
    zipf_probabilities,
)
from simserve.workload.concepts import ZIPF_TABLE_RANKS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_reuse"


# ------------------------------------------------------------------------------------------ reuse off: unchanged


@pytest.mark.parametrize("rel", ["reasoning-mix.yaml", "test-time-compute/parallel-majority.yaml"])
def test_no_trace_cache_gives_the_same_records_and_summary_as_before(tmp_path, rel):
    path = ROOT / "scenarios" / rel
    data = yaml.safe_load(path.read_text())
    data["workload"]["num_requests"] = 200
    results = Simulation(parse_scenario(data, path.stem, path.parent), records_dir=tmp_path).run()
    summary = json.loads(json.dumps({k: v for k, v in results.summary.items() if k != "wall_time_s"},
                                    sort_keys=True, default=str))
    assert_same_summary(summary, json.loads((FIXTURES / path.stem / "summary.json").read_text()))
    for table in ("requests.parquet", "replicas.parquet"):
        before, now = FIXTURES / path.stem / table, tmp_path / table
        assert_same_records(now, before)


# ------------------------------------------------------------------------------------------ the concept workload


def _workload(concepts: dict | None, n: int = 2000, num_users: int = 1000, rate: float = 1.0) -> WorkloadSpec:
    entry = {"query_type": "factual"} | ({"concepts": concepts} if concepts is not None else {})
    return WorkloadSpec.model_validate({"num_requests": n, "num_users": num_users,
                                        "mix": [entry, {"query_type": "coding"}],
                                        "arrival": {"process": "poisson", "rate_per_s": rate}})


def _requests(spec: WorkloadSpec, seed: int = 3) -> list:
    return list(generate_requests(spec, rng_streams(seed)))


def test_concepts_leave_every_other_draw_unchanged():
    plain = _requests(_workload(None))
    with_concepts = _requests(_workload({"num_concepts": 100, "user_locality": 0.3, "novelty_per_s": 0.1}))
    fields = ("arrival_s", "user_id", "query_type", "prompt_tokens", "reasoning_tokens", "answer_tokens")
    assert [[getattr(r, f) for f in fields] for r in plain] == [[getattr(r, f) for f in fields] for r in with_concepts]
    assert all(r.concept == -1 for r in plain)
    assert all((r.concept >= 0) == (r.query_type == "factual") for r in with_concepts)


def test_zipf_ranks_follow_the_exact_probabilities_in_the_table():
    n, s = 50, 0.8
    ranks = ZipfSampler(n, s).ranks(np.random.default_rng(0).random(200_000))
    freq = np.bincount(ranks, minlength=n + 1)[1:] / len(ranks)
    p = zipf_probabilities(n, s)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / len(ranks)))


def test_zipf_tail_past_the_table_has_the_right_mass_and_bounded_memory():
    n, s = 4 * ZIPF_TABLE_RANKS, 0.8
    sampler = ZipfSampler(n, s)
    ranks = sampler.ranks(np.random.default_rng(1).random(400_000))
    p = zipf_probabilities(n, s)
    assert ranks.min() >= 1 and ranks.max() <= n
    for lo, hi in [(ZIPF_TABLE_RANKS + 1, 2 * ZIPF_TABLE_RANKS), (2 * ZIPF_TABLE_RANKS + 1, n)]:
        mass = p[lo - 1:hi].sum()
        seen = np.mean((ranks >= lo) & (ranks <= hi))
        assert abs(seen - mass) <= 5 * math.sqrt(mass * (1 - mass) / len(ranks)), (lo, hi, seen, mass)
    assert ZipfSampler(10**9, s).head_cdf.nbytes == 8 * ZIPF_TABLE_RANKS  # a billion concepts: the same table


def test_user_locality_repeats_the_users_last_concept_at_its_rate():
    drawer = ConceptDrawer(ConceptSpec(num_concepts=10**6, zipf_exponent=0.0, user_locality=0.4))
    users = np.random.default_rng(2).integers(0, 50, size=20_000)
    ids = drawer.draw(np.random.default_rng(3), np.zeros(len(users)), users)
    last: dict[int, int] = {}
    repeats = seen = 0
    for u, c in zip(users.tolist(), ids.tolist(), strict=True):
        if u in last:
            seen += 1
            repeats += last[u] == c
        last[u] = c
    assert abs(repeats / seen - 0.4) < 0.02  # uniform over a million: repeats by chance are negligible
    assert ConceptDrawer(ConceptSpec(num_concepts=100, user_locality=0.0)).last == {}


def test_novelty_shifts_the_universe_and_locality_never_returns_a_departed_concept():
    spec = ConceptSpec(num_concepts=10, zipf_exponent=3.0, user_locality=1.0, novelty_per_s=1.0)
    times = np.arange(0.0, 100.0, 0.5)
    ids = ConceptDrawer(spec).draw(np.random.default_rng(4), times, np.zeros(len(times), dtype=np.int64))
    shift = np.floor(times).astype(int)
    assert np.all((ids >= shift) & (ids < shift + 10))  # always one of the 10 concepts alive at its time
    assert ids[-1] > 80


# ------------------------------------------------------------------------------------------ the cache against theory


def _stream(num_concepts: int, s: float, n: int, seed: int) -> list[int]:
    spec = _workload({"num_concepts": num_concepts, "zipf_exponent": s}, n=3 * n)  # about half are factual
    out = [r.concept for r in _requests(spec, seed) if r.concept >= 0][:n]
    assert len(out) == n
    return out


def _hits(cache: TraceCache, concepts: list[int]) -> int:
    hits = 0
    for t, c in enumerate(concepts):
        if cache.lookup(("factual", c), float(t)):
            hits += 1
        else:
            cache.insert(("factual", c), float(t))
    return hits


def test_unbounded_cache_hits_match_the_expected_distinct_concepts():
    num_concepts, s, m = 2000, 0.8, 5000
    p = zipf_probabilities(num_concepts, s)
    seen = 1 - (1 - p) ** m  # chance each concept was asked at least once
    expected_hits = m - seen.sum()  # E[hits] = m - E[distinct]
    sd = math.sqrt((seen * (1 - seen)).sum())  # occupancy indicators are negatively correlated: an upper bound
    for seed in range(3):
        hits = _hits(TraceCache(TraceCacheSpec()), _stream(num_concepts, s, m, seed))
        assert abs(hits - expected_hits) <= 4 * sd, (hits, expected_hits, sd)


def che_hit_ratio(p: np.ndarray, capacity: int) -> float:
    """Che's approximation of an LRU cache under the independent reference model: the characteristic time T
    solves sum_i (1 - exp(-p_i T)) = capacity, and the hit ratio is sum_i p_i (1 - exp(-p_i T))."""
    t = brentq(lambda x: np.sum(1 - np.exp(-p * x)) - capacity, 1e-9, 1e12)
    return float(np.sum(p * (1 - np.exp(-p * t))))


@pytest.mark.parametrize(("capacity", "s"), [(100, 0.8), (300, 1.0)])
def test_lru_hit_ratio_matches_ches_approximation(capacity, s):
    num_concepts, m, warm = 2000, 60_000, 10_000
    concepts = _stream(num_concepts, s, m, seed=5)
    cache = TraceCache(TraceCacheSpec(capacity_entries=capacity))
    _hits(cache, concepts[:warm])
    ratio = _hits(cache, concepts[warm:]) / (m - warm)
    che = che_hit_ratio(zipf_probabilities(num_concepts, s), capacity)
    assert len(cache) == capacity
    assert abs(ratio - che) / che < 0.03, (ratio, che)


def test_lfu_keeps_the_most_used_and_lru_the_most_recent():
    lfu = TraceCache(TraceCacheSpec(capacity_entries=2, eviction="lfu"))
    lru = TraceCache(TraceCacheSpec(capacity_entries=2, eviction="lru"))
    for cache in (lfu, lru):
        cache.insert(("q", 1), 0.0)
        for _ in range(3):
            assert cache.lookup(("q", 1), 1.0)
        cache.insert(("q", 2), 2.0)
        cache.insert(("q", 3), 3.0)  # full: LFU drops 2 (one use), LRU drops 1 (used longest ago)
    assert lfu.lookup(("q", 1), 4.0) and not lfu.lookup(("q", 2), 4.0) and lfu.lookup(("q", 3), 4.0)
    assert not lru.lookup(("q", 1), 4.0) and lru.lookup(("q", 2), 4.0) and lru.lookup(("q", 3), 4.0)
    assert lfu.num_evictions == lru.num_evictions == 1


def test_ttl_expires_a_trace():
    cache = TraceCache(TraceCacheSpec(ttl_s=10.0))
    cache.insert(("q", 1), 0.0)
    assert cache.lookup(("q", 1), 9.9)
    assert not cache.lookup(("q", 1), 10.0)
    assert len(cache) == 0


# ------------------------------------------------------------------------------------------ the hook in a run


def _reuse_run(tmp_path: Path, cache: dict, n: int = 400, rate: float = 0.05, concepts: dict | None = None,
               **engine):
    data = tiny()
    data["workload"]["num_requests"] = n
    data["workload"]["arrival"]["rate_per_s"] = rate
    data["workload"]["mix"][0]["concepts"] = concepts or {"num_concepts": 50}
    data["workload"]["trace_cache"] = cache
    return Simulation(scenario(data, **engine), records_dir=tmp_path).run()


def test_exact_hits_skip_reasoning_and_match_the_analytic_hit_ratio(tmp_path):
    # Arrivals 20 s apart on average, requests done in well under a second: every trace is stored before the next
    # request of its concept arrives, so the stream sees the cache of the analytic count.
    results = _reuse_run(tmp_path, {"kind": "exact"}, check_invariants=True)
    df = by_id(results.requests)
    assert (df["status"] == "completed").all()
    hit = df["reuse"] == "exact"
    assert set(df["reuse"]) == {"none", "exact"}
    assert (df.loc[hit, "reasoning_tokens"] == 0).all() and (df.loc[hit, "reused_reasoning_tokens"] == 5).all()
    assert (df.loc[hit, "generated_tokens"] == 1).all()  # the answer is still generated
    assert (df.loc[~hit, "reused_reasoning_tokens"] == 0).all() and (df.loc[~hit, "generated_tokens"] == 6).all()
    s = results.summary
    assert s["trace_cache_lookups"] == 400 and s["trace_cache_hits"] == hit.sum()
    assert s["trace_cache_hit_ratio"] == hit.mean() and s["reused_reasoning_tokens"] == 5 * hit.sum()
    p = zipf_probabilities(50, 0.8)
    expected = (400 - (1 - (1 - p) ** 400).sum()) / 400
    assert abs(s["trace_cache_hit_ratio"] - expected) < 0.03


def test_lookup_latency_delays_entry_but_not_the_users_arrival(tmp_path):
    results = _reuse_run(tmp_path, {"lookup_latency_s": 0.5}, n=50)
    df = by_id(results.requests)
    assert (df["first_token_s"] - df["arrival_s"] >= 0.5).all()
    plain = _reuse_run(tmp_path / "b", {"lookup_latency_s": 0.0}, n=50)
    ttft = (df["first_token_s"] - df["arrival_s"]).to_numpy()
    ttft0 = by_id(plain.requests).eval("first_token_s - arrival_s").to_numpy()
    assert np.allclose(ttft, ttft0 + 0.5)  # sparse arrivals: no queueing, the lookup adds exactly its latency


def test_a_trace_cache_without_concepts_changes_nothing_but_adds_its_columns(tmp_path):
    data = tiny()
    off = Simulation(scenario(data), records_dir=tmp_path / "off").run()
    on_data = copy.deepcopy(data)
    on_data["workload"]["trace_cache"] = {"kind": "exact"}
    on = Simulation(scenario(on_data), records_dir=tmp_path / "on").run()
    a, b = by_id(off.requests), by_id(on.requests)
    assert list(b.columns) == [*a.columns, "reuse", "reused_reasoning_tokens"]
    assert b[a.columns].equals(a) and set(b["reuse"]) == {"none"}
    assert math.isnan(on.summary["trace_cache_hit_ratio"]) and "trace_cache_hit_ratio" not in off.summary


def test_trace_cache_specs_refuse_bad_input():
    WorkloadSpec.model_validate({"num_requests": 1, "arrival": {"process": "poisson", "rate_per_s": 1.0},
                                 "mix": [{"query_type": "factual", "quality": {}, "parallel": {"n": 4},
                                          "concepts": {"num_concepts": 10}}]})  # with parallel samples: tests/
    # test_reuse_econ.py
    WorkloadSpec.model_validate({"num_requests": 1, "arrival": {"process": "poisson", "rate_per_s": 1.0},
                                 "mix": [{"query_type": "factual", "quality": {}, "concepts": {"num_concepts": 10}}]})
    with pytest.raises(ValueError):
        TraceCacheSpec.model_validate({"capacity": 10})  # misspelt: extra keys are errors
    with pytest.raises(ValueError):
        TraceCacheSpec.model_validate({"kind": "semantic", "false_hit_rate": 1.5})


# ------------------------------------------------------------------------------------------ semantic and step reuse


def _quality_run(tmp_path: Path, cache: dict | None, n: int, concepts: dict, reasoning: int = 5):
    data = tiny()
    data["workload"]["num_requests"] = n
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    entry = data["workload"]["mix"][0]
    entry["reasoning_tokens"]["value"] = reasoning
    entry["concepts"] = concepts
    entry["quality"] = {}
    if cache is not None:
        data["workload"]["trace_cache"] = cache
    return Simulation(scenario(data), records_dir=tmp_path).run()


def test_semantic_true_hits_are_the_exact_hits_and_keep_the_answer(tmp_path):
    exact = by_id(_reuse_run(tmp_path / "e", {"kind": "exact"}).requests)
    semantic = _reuse_run(tmp_path / "s", {"kind": "semantic", "false_hit_rate": 0.0})
    df = by_id(semantic.requests)
    assert list(df["reuse"].replace("semantic", "exact")) == list(exact["reuse"])
    assert df["reasoning_tokens"].equals(exact["reasoning_tokens"]) and semantic.summary["trace_cache_false_hits"] == 0
    # With answer quality, a true hit keeps the request's own answer: correctness as with no cache at all.
    off = by_id(_quality_run(tmp_path / "qo", None, 400, {"num_concepts": 50}).requests)
    on = by_id(_quality_run(tmp_path / "qs", {"kind": "semantic", "false_hit_rate": 0.0}, 400,
                            {"num_concepts": 50}).requests)
    hit = on["reuse"] == "semantic"
    assert hit.sum() > 100 and (on.loc[hit, "reasoning_tokens_spent"] == 0).all()
    assert on["correct"].equals(off["correct"])


def test_false_hits_lower_accuracy_by_their_rate_times_the_accuracy_gap(tmp_path):
    # A billion equally popular concepts: every lookup misses, so once a trace is cached each request is a false
    # hit with probability f, and a false hit is wrong (accuracy 0): accuracy falls by f * (accuracy - 0) in
    # expectation. Same seed: the questions are the same, and a request that is not a false hit keeps its answer.
    n, f = 3000, 0.2
    concepts = {"num_concepts": 10**9, "zipf_exponent": 0.0}
    off = _quality_run(tmp_path / "off", {"kind": "semantic", "false_hit_rate": 0.0}, n, concepts)
    on = _quality_run(tmp_path / "on", {"kind": "semantic", "false_hit_rate": f}, n, concepts)
    a, b = by_id(off.requests), by_id(on.requests)
    assert set(a["reuse"]) == {"none"} and set(b["reuse"]) == {"none", "semantic_false"}
    false = b["reuse"] == "semantic_false"
    assert (b.loc[false, "correct"] == 0).all() and (b.loc[false, "reasoning_tokens"] == 0).all()
    assert (b.loc[false, "p_correct"] == 0).all()
    assert (b.loc[false, "reused_reasoning_tokens"] == a.loc[false, "reasoning_tokens"]).all()
    assert b.loc[~false, "correct"].equals(a.loc[~false, "correct"])
    assert on.summary["trace_cache_false_hits"] == false.sum() == on.summary["trace_cache_hits"]
    eligible = n - 1  # the first lookup finds an empty cache; arrivals 20 s apart: every later one finds a trace
    assert abs(false.sum() - f * eligible) <= 4 * math.sqrt(eligible * f * (1 - f))
    acc = off.summary["accuracy"]
    lost = ((a["correct"] == 1) & false).sum()
    assert on.summary["num_correct"] == off.summary["num_correct"] - lost  # exactly the right answers turned wrong
    drop = lost / n
    sd = math.sqrt(acc * eligible * f * (1 - f)) / n  # the right answers among the eligible, each lost w.p. f
    assert abs(drop - f * acc) <= 4 * sd + 1 / n, (drop, f * acc, sd)


def test_step_reuse_prefills_a_share_of_the_reasoning(tmp_path):
    data = tiny()
    data["workload"]["num_requests"] = 300
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    data["workload"]["mix"][0]["reasoning_tokens"]["value"] = 100
    data["workload"]["mix"][0]["concepts"] = {"num_concepts": 50}
    data["workload"]["trace_cache"] = {"kind": "step", "step_reuse_share": 0.35}
    results = Simulation(scenario(data, check_invariants=True), records_dir=tmp_path).run()
    df = by_id(results.requests)
    hit = df["reuse"] == "step"
    assert set(df["reuse"]) == {"none", "step"} and hit.sum() > 100
    assert (df.loc[hit, "reasoning_tokens"] == 65).all() and (df.loc[hit, "reused_reasoning_tokens"] == 35).all()
    assert (df.loc[hit, "prompt_tokens"] == 45).all() and (df.loc[hit, "generated_tokens"] == 66).all()
    assert (df.loc[~hit, "prompt_tokens"] == 10).all() and (df.loc[~hit, "generated_tokens"] == 101).all()
    assert results.summary["reused_reasoning_tokens"] == 35 * hit.sum()
    # With answer quality, step reuse keeps correctness (Retrieval-of-Thought: equal accuracy) and cuts the
    # reasoning spent by the share.
    off = by_id(_quality_run(tmp_path / "qo", None, 300, {"num_concepts": 50}, reasoning=100).requests)
    on = by_id(_quality_run(tmp_path / "qs", {"kind": "step"}, 300, {"num_concepts": 50}, reasoning=100).requests)
    hit = on["reuse"] == "step"
    assert hit.sum() > 100 and on["correct"].equals(off["correct"])
    cut = (0.35 * off.loc[hit, "reasoning_tokens"]).round().astype(int)
    assert (on.loc[hit, "reasoning_tokens"] == off.loc[hit, "reasoning_tokens"] - cut).all()
    assert (on.loc[hit, "reasoning_tokens_spent"] == off.loc[hit, "reasoning_tokens_spent"] - cut).all()


# ------------------------------------------------------------------------------------------ minted tokens


def _mint_run(tmp_path: Path, minting: dict | None, n: int = 400, reasoning: int = 100, quality: bool = False,
              cache: dict | None = None, concepts: dict | None = None):
    data = tiny()
    data["workload"]["num_requests"] = n
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    entry = data["workload"]["mix"][0]
    entry["reasoning_tokens"]["value"] = reasoning
    entry["concepts"] = concepts or {"num_concepts": 50}
    if quality:
        entry["quality"] = {}
    if minting is not None:
        data["workload"]["minting"] = minting
    if cache is not None:
        data["workload"]["trace_cache"] = cache
    sc = scenario(data, check_invariants=True)
    return sc, Simulation(sc, records_dir=tmp_path).run()


def _expected_minted(sc, min_count: int, every_s: float, limit: int | None, offset_s: float = 0.0) -> list[bool]:
    """Which requests (in id order) find their concept minted: a job at each offset_s + k every_s after t = 0 mints
    the concepts seen at least min_count times before it, most frequent first (ties: smallest concept), to the
    limit."""
    reqs = list(generate_requests(sc.workload, rng_streams(sc.seed)))
    counts: dict[int, int] = {}
    minted: set[int] = set()
    jobs = 0 if offset_s > 0 else 1  # the index k of the next job
    out = []
    for r in reqs:
        while offset_s + jobs * every_s <= r.arrival_s:
            jobs += 1
            ready = sorted((-c, k) for k, c in counts.items() if c >= min_count and k not in minted)
            room = len(ready) if limit is None else limit - len(minted)
            minted.update(k for _, k in ready[:max(room, 0)])
        out.append(r.concept in minted)
        counts[r.concept] = counts.get(r.concept, 0) + 1
    return out


def test_minted_requests_decode_the_compressed_share_of_their_reasoning(tmp_path):
    spec = {"min_count": 3, "job_every_s": 1000.0, "compression": 0.3, "store_limit_patterns": 20,
            "job_gpu_hours": 2.0, "usd_per_gpu_hour": 4.0}
    sc, on = _mint_run(tmp_path / "on", spec)
    _, off = _mint_run(tmp_path / "off", None)
    a, b = by_id(off.requests), by_id(on.requests)
    minted = b["reuse"] == "minted"
    assert list(minted) == _expected_minted(sc, 3, 1000.0, 20) and minted.sum() > 100
    assert set(b["reuse"]) == {"none", "minted"}
    assert (b.loc[minted, "reasoning_tokens"] == 30).all() and (b.loc[minted, "reused_reasoning_tokens"] == 70).all()
    assert b.loc[~minted, "reasoning_tokens"].equals(a.loc[~minted, "reasoning_tokens"])
    assert (b.loc[~minted, "reused_reasoning_tokens"] == 0).all()
    s = on.summary
    assert s["minted_patterns"] == 20 and s["minted_requests"] == minted.sum()
    assert s["reused_reasoning_tokens"] == 70 * minted.sum()
    # Jobs that minted something are paid; their GPU-hours and cost are counted into the run's.
    assert s["minting_jobs_paid"] >= 1 and s["minting_gpu_hours"] == 2.0 * s["minting_jobs_paid"]
    assert s["minting_cost_usd"] == 4.0 * s["minting_gpu_hours"]
    serving = s["makespan_s"] / 3600.0  # one replica, one GPU
    assert math.isclose(s["gpu_hours"], serving + s["minting_gpu_hours"])
    assert math.isclose(s["cost_usd"], serving * 2.90 + s["minting_cost_usd"])  # h100-sxm: 2.90 USD per hour
    assert "minted_patterns" not in off.summary and "reuse" not in a.columns


def test_minting_job_offset_moves_the_jobs_within_the_period(tmp_path):
    # Jobs at 700 + k x 1000 s (the trough of a day, scaled down): the requests that find their concept minted are
    # those the job schedule at that offset implies, not those of jobs at multiples of 1000 s.
    spec = {"min_count": 3, "job_every_s": 1000.0, "job_offset_s": 700.0, "store_limit_patterns": 20}
    sc, on = _mint_run(tmp_path / "on", spec)
    minted = list(by_id(on.requests)["reuse"] == "minted")
    assert minted == _expected_minted(sc, 3, 1000.0, 20, 700.0) != _expected_minted(sc, 3, 1000.0, 20)
    last = on.summary["makespan_s"]
    assert on.summary["minting_jobs"] == int((last - 700.0) // 1000.0) + 1
    with pytest.raises(ValueError, match="job_offset_s"):
        MintingSpec.model_validate({"job_every_s": 100.0, "job_offset_s": 100.0})


def test_minting_with_no_penalty_never_changes_correctness_and_a_penalty_lowers_it(tmp_path):
    spec = {"min_count": 2, "job_every_s": 500.0}
    _, off = _mint_run(tmp_path / "off", None, n=1000, quality=True)
    _, on = _mint_run(tmp_path / "on", spec, n=1000, quality=True)
    a, b = by_id(off.requests), by_id(on.requests)
    minted = b["reuse"] == "minted"
    assert minted.sum() > 500 and b["correct"].equals(a["correct"]) and b["p_correct"].equals(a["p_correct"])
    cut = (a.loc[minted, "reasoning_tokens"] - (0.5 * a.loc[minted, "reasoning_tokens"]).round()).astype(int)
    assert (b.loc[minted, "reasoning_tokens_spent"] == a.loc[minted, "reasoning_tokens_spent"] - cut).all()
    # A penalty of 0.3: a minted request's success probability falls by 0.3 (floored at 0), a wrong answer stays
    # wrong, and right answers turn wrong at the rate the penalty implies.
    pen = 0.3
    _, hit = _mint_run(tmp_path / "pen", spec | {"accuracy_penalty": pen}, n=1000, quality=True)
    c = by_id(hit.requests)
    assert list(c["reuse"]) == list(b["reuse"])
    assert np.allclose(c.loc[minted, "p_correct"], np.maximum(a.loc[minted, "p_correct"] - pen, 0.0))
    assert c.loc[~minted, "correct"].equals(a.loc[~minted, "correct"])
    assert not ((a["correct"] == 0) & (c["correct"] == 1)).any()
    right = minted & (a["correct"] == 1)
    expected_lost = np.minimum(pen / a.loc[right, "p_correct"], 1.0)
    lost = ((c["correct"] == 0) & right).sum()
    assert lost > 0 and hit.summary["accuracy"] < off.summary["accuracy"]
    sd = math.sqrt((expected_lost * (1 - expected_lost)).sum())
    assert abs(lost - expected_lost.sum()) <= 4 * sd + 1, (lost, expected_lost.sum(), sd)


def test_minting_with_a_trace_cache_leaves_whole_hits_alone(tmp_path):
    spec = {"min_count": 2, "job_every_s": 500.0}
    cache = {"kind": "exact", "ttl_s": 1000.0}  # expired traces miss: some misses are of minted concepts
    _, exact = _mint_run(tmp_path / "e", None, cache=cache)
    _, both = _mint_run(tmp_path / "b", spec, cache=cache)
    a, b = by_id(exact.requests), by_id(both.requests)
    assert list(a["reuse"] == "exact") == list(b["reuse"] == "exact")  # minting never takes a whole hit
    assert 0 < (b["reuse"] == "minted").sum() == both.summary["minted_requests"]
    assert "trace_cache_hit_ratio" in both.summary and "minted_patterns" in both.summary
    with pytest.raises(ValueError):
        MintingSpec.model_validate({"compression": 1.5})


# ------------------------------------------------------------------------------------------ a provider's history


def _stream_with_history(sc, history_s: float, served: int) -> tuple[list, list]:
    """The workload's requests split as the run splits them: those before history_s, then `served` more."""
    spec = sc.workload.model_copy(update={"num_requests": None, "duration_s": None, "reuse_history_s": None})
    gen = generate_requests(spec, rng_streams(sc.seed))
    before, after = [], []
    for r in gen:
        (before if r.arrival_s < history_s else after).append(r)
        if len(after) == served:
            return before, after
    raise AssertionError("the stream ended")


def test_history_fills_the_cache_before_the_run_and_serves_only_the_window(tmp_path):
    data = tiny()
    data["workload"].update(num_requests=300, reuse_history_s=4000.0, trace_cache={"kind": "exact"})
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    data["workload"]["mix"][0]["concepts"] = {"num_concepts": 200}
    sc = scenario(data, check_invariants=True)
    results = Simulation(sc, records_dir=tmp_path).run()
    df = by_id(results.requests)
    before, after = _stream_with_history(sc, 4000.0, 300)
    assert len(df) == 300 and list(df["request_id"]) == list(range(300))
    assert np.allclose(df["arrival_s"].to_numpy(), [r.arrival_s - 4000.0 for r in after])
    # Sparse arrivals: a trace is stored before the next request of its concept arrives, so a served request hits
    # iff its concept was asked in the history or earlier in the run.
    seen = {r.concept for r in before}
    expected = []
    for r in after:
        expected.append(r.concept in seen)
        seen.add(r.concept)
    assert list(df["reuse"] == "exact") == expected
    s = results.summary
    assert s["reuse_history_requests"] == len(before) and s["trace_cache_lookups"] == 300
    assert s["trace_cache_hits"] == sum(expected)
    hist_hits = sum(r.concept in {q.concept for q in before[:i]} for i, r in enumerate(before))
    assert s["reuse_history_hit_ratio"] == hist_hits / len(before)
    cold = Simulation(scenario(data | {"workload": data["workload"] | {"reuse_history_s": None}}),
                      records_dir=tmp_path / "cold").run().summary
    assert s["trace_cache_hit_ratio"] > cold["trace_cache_hit_ratio"] + 0.1


def test_history_runs_the_minting_jobs_due_in_it_and_charges_only_the_runs(tmp_path):
    data = tiny()
    history_s, every_s = 5000.0, 1000.0
    data["workload"].update(num_requests=200, reuse_history_s=history_s,
                            minting={"min_count": 3, "job_every_s": every_s, "compression": 0.5,
                                     "job_gpu_hours": 2.0, "usd_per_gpu_hour": 4.0})
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    entry = data["workload"]["mix"][0]
    entry["reasoning_tokens"]["value"] = 100
    entry["concepts"] = {"num_concepts": 50}
    sc = scenario(data, check_invariants=True)
    results = Simulation(sc, records_dir=tmp_path).run()
    before, after = _stream_with_history(sc, history_s, 200)
    counts: dict[int, int] = {}
    minted: set[int] = set()
    job, paid, expected = int(-history_s // every_s), 0, []
    for r in [*before, *after]:
        t = r.arrival_s - history_s
        if (job + 1) * every_s <= t:  # the jobs due by t see the same counts: only the first can mint
            job = int(t // every_s)
            ready = sorted((-c, k) for k, c in counts.items() if c >= 3 and k not in minted)
            minted.update(k for _, k in ready)
            paid += bool(ready) and t >= 0
        if t >= 0:
            expected.append(r.concept in minted)
        counts[r.concept] = counts.get(r.concept, 0) + 1
    df = by_id(results.requests)
    assert list(df["reuse"] == "minted") == expected and expected[0]  # minted in the history, used at once
    assert (df.loc[df["reuse"] == "minted", "reasoning_tokens"] == 50).all()
    s = results.summary
    assert s["minted_requests"] == sum(expected) and s["minting_jobs_paid"] == paid
    assert s["minting_cost_usd"] == pytest.approx(paid * 2.0 * 4.0)


def test_history_needs_something_to_fill():
    data = tiny()
    data["workload"]["reuse_history_s"] = 100.0
    with pytest.raises(Exception, match="reuse_history_s' needs a 'trace_cache' or 'minting'"):
        scenario(data)


def test_history_leaves_the_runs_billing_and_counts_alone(tmp_path):
    # Step reuse moves cached steps into prompts, in the history too: the run bills its own users' prompts only.
    data = tiny()
    data["workload"].update(num_requests=200, reuse_history_s=3000.0,
                            trace_cache={"kind": "step", "capacity_entries": 20})
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    data["workload"]["mix"][0]["reasoning_tokens"]["value"] = 100
    data["workload"]["mix"][0]["concepts"] = {"num_concepts": 200, "steps": {"vocabulary": 50, "per_query": 4}}
    data["pricing"] = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}
    sc = scenario(data, check_invariants=True)
    results = Simulation(sc, records_dir=tmp_path).run()
    _, after = _stream_with_history(sc, 3000.0, 200)
    df = by_id(results.requests)
    assert (df["status"] == "completed").all() and (df["reuse"] == "step").any()
    s = results.summary
    assert s["billed_input_tokens"] == sum(r.prompt_tokens for r in after)
    assert s["billed_input_tokens"] == df["prompt_tokens"].sum() - (df["prompt_tokens"] - [
        r.prompt_tokens for r in after]).sum()
    cold = Simulation(scenario(data | {"workload": data["workload"] | {"reuse_history_s": None}}),
                      records_dir=tmp_path / "cold").run().summary
    assert s["trace_cache_evictions"] <= cold["trace_cache_evictions"] + s["trace_cache_lookups"] * 4
