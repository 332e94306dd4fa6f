"""The replicas' prefix cache: exact timelines with hits, LRU eviction under a small pool, fast-forward == exact
steps with sessions and system prompts, and the hit ratio of the full Mooncake trace against its ideal reuse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import by_id, req, scenario, tiny
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simserve import Simulation, parse_scenario
from simserve.hardware import GPUS

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOONCAKE = DATA / "mooncake-conversation" / "conversation_trace.jsonl"

C0, CP, CD = 0.01, 0.001, 0.002  # step overhead, per prefill token, per decoding sequence
LINEAR = {"kind": "linear", "step_overhead_s": C0, "per_prefill_token_s": CP, "per_decode_seq_s": CD}


def rows(results):
    return {int(r.request_id): r for r in results.requests.itertuples()}


def keyed(i, arrival_s, prompt, keys, answer=1, unit=16):
    r = req(i, arrival_s, prompt, 0, answer)
    r.prefix_keys = tuple(keys)
    r.prefix_unit_tokens = unit
    return r


# ----------------------------------------------------------------------------------------------- (a) timelines


@pytest.mark.parametrize("exact", [False, True])
def test_prefix_hit_timeline(exact):
    # A (48 tokens, keys 1 2 3) prefills alone: 0.01 + 48 x 0.001 = 0.058; its three full units are cached.
    # B (keys 1 2 9) at 1.0 finds 1 and 2: prefills 48 - 32 = 16 tokens, 0.01 + 0.016 -> first token 1.026, then
    # one decode step of 0.01 + 0.002 -> 1.038.
    # C (keys 1 2 3, all cached) at 2.0 still computes its last unit: hit 32, first token 2.026.
    # D (keys 1 2 3, 40 tokens: the last unit partial) at 3.0: hit 32, computes 8 tokens: 3.018.
    sc = scenario(tiny(perf=LINEAR), exact_steps=exact, check_invariants=True)
    res = Simulation(sc).run([keyed(0, 0.0, 48, (1, 2, 3)), keyed(1, 1.0, 48, (1, 2, 9), answer=2),
                              keyed(2, 2.0, 48, (1, 2, 3)), keyed(3, 3.0, 40, (1, 2, 3))])
    r = rows(res)
    assert [r[i].prefix_hit_tokens for i in range(4)] == [0, 32, 32, 32]
    assert r[0].first_token_s == pytest.approx(C0 + 48 * CP, abs=1e-12)
    assert r[0].finish_s == pytest.approx(C0 + 48 * CP, abs=1e-12)
    assert r[1].first_token_s == pytest.approx(1.0 + C0 + 16 * CP, abs=1e-12)
    assert r[1].finish_s == pytest.approx(1.0 + C0 + 16 * CP + C0 + CD, abs=1e-12)
    assert r[2].first_token_s == pytest.approx(2.0 + C0 + 16 * CP, abs=1e-12)
    assert r[3].first_token_s == pytest.approx(3.0 + C0 + 8 * CP, abs=1e-12)
    assert set(res.requests["status"]) == {"completed"}
    assert res.summary["prefix_cache_hit_ratio"] == pytest.approx(96 / (48 * 3 + 40), abs=1e-12)
    assert (res.replicas.groupby("replica")["kv_blocks_end"].last() == 0).all()


def test_blocks_are_cached_when_scheduled_so_a_request_admitted_later_in_the_same_step_hits():
    # vLLM caches a block's hash when the block is scheduled full, not when it is computed: E, admitted right
    # after A in the same step at 0, already hits A's units 1 and 2 (the batch computes them before attention
    # reads them); B, arriving mid-step at 0.03, hits them too.
    sc = scenario(tiny(perf=LINEAR), check_invariants=True)
    res = Simulation(sc).run([keyed(0, 0.0, 48, (1, 2, 3)), keyed(1, 0.0, 48, (1, 2, 4)),
                              keyed(2, 0.03, 48, (1, 2, 5))])
    r = rows(res)
    assert [r[i].prefix_hit_tokens for i in range(3)] == [0, 32, 32]


def test_without_prefix_caching_nothing_hits():
    sc = scenario(tiny(pool={"prefix_caching": False}, perf=LINEAR), check_invariants=True)
    res = Simulation(sc).run([keyed(0, 0.0, 48, (1, 2, 3)), keyed(1, 1.0, 48, (1, 2, 9), answer=2),
                              keyed(2, 2.0, 48, (1, 2, 3))])
    r = rows(res)
    assert [r[i].prefix_hit_tokens for i in range(3)] == [0, 0, 0]
    assert r[1].first_token_s == pytest.approx(1.0 + C0 + 48 * CP, abs=1e-12)
    assert r[2].first_token_s == pytest.approx(2.0 + C0 + 48 * CP, abs=1e-12)
    assert res.summary["prefix_cache_hit_ratio"] == 0.0


def test_units_not_a_multiple_of_the_block_are_not_cached():
    # 24-token units over 16-token blocks: the cache cannot share them, so nothing hits.
    sc = scenario(tiny(perf=LINEAR), check_invariants=True)
    res = Simulation(sc).run([keyed(0, 0.0, 48, (1, 2), unit=24), keyed(1, 1.0, 48, (1, 2), unit=24)])
    assert list(by_id(res.requests)["prefix_hit_tokens"]) == [0, 0]


def test_units_of_several_blocks_hit_whole_units():
    # 32-token units over 16-token blocks: 100 tokens = 3 full units; B shares the first two = 64 tokens.
    sc = scenario(tiny(perf=LINEAR), check_invariants=True)
    res = Simulation(sc).run([keyed(0, 0.0, 100, (1, 2, 3, 4), unit=32),
                              keyed(1, 1.0, 100, (1, 2, 7, 8), unit=32)])
    r = rows(res)
    assert r[1].prefix_hit_tokens == 64
    assert r[1].first_token_s == pytest.approx(1.0 + C0 + 36 * CP, abs=1e-12)


# ----------------------------------------------------------------------------------------------- (b) eviction

# Requests one after another (each done before the next arrives), 16-token units = blocks, answer 1 token.
# With 6 blocks: A caches 1 2 3 (evictable, tail first: 3, 2, 1); B takes the 3 free blocks and caches 4 5 6;
# C hits 1 2 and evicts 3 for its third block, then caches 7; D hits 4 5 6 and evicts 7; E finds 1 2 but not 3.
SEQUENCE = [(48, (1, 2, 3)), (48, (4, 5, 6)), (48, (1, 2, 7)), (64, (4, 5, 6, 10)), (64, (1, 2, 3, 11))]


@pytest.mark.parametrize("blocks, hits", [(6, [0, 0, 32, 48, 32]), (1000, [0, 0, 32, 48, 48]),
                                          (4, [0, 0, 16, 0, 0])])
@pytest.mark.parametrize("exact", [False, True])
def test_lru_eviction_changes_hits(blocks, hits, exact):
    # With 4 blocks (64 tokens), B's 3 blocks evict A's 3 and 2 (tail first) but not 1, so C hits 16 tokens; the
    # 64-token prompts plus one output token do not fit and are rejected.
    pool = {"num_kv_blocks": blocks}
    sc = scenario(tiny(pool=pool, perf=LINEAR), exact_steps=exact, check_invariants=True)
    res = Simulation(sc).run([keyed(i, float(i), p, k) for i, (p, k) in enumerate(SEQUENCE)])
    df = by_id(res.requests)
    assert list(df["prefix_hit_tokens"]) == hits
    expected = ["completed"] * 3 + (["rejected"] * 2 if blocks == 4 else ["completed"] * 2)
    assert list(df["status"]) == expected


# In a 12-block pool A caches units 1-4 and A2 units 20-23 (evictable in the order 4 3 2 1 23 22 21 20), leaving
# 4 free. B (prompt 16, 80 output tokens) decodes from 1.026, a step per 0.012 s (boundary s at 1.026 + 0.012 s),
# taking a block every 16 tokens: its 5th block (allocated at the start of step 48, 1.602) evicts unit 4 and its
# 6th (step 64, 1.794) unit 3; it finishes at 1.974. C (keys 1 2 3 4 5, 80 tokens, 5 blocks: it always fits) is
# admitted at the first step boundary at or after its arrival, after that step's decode blocks are allocated.
@pytest.mark.parametrize("c_arrival, hit", [(1.055, 64), (1.3, 64), (1.585, 64), (1.595, 48), (1.7, 48),
                                            (1.78, 48), (1.785, 32), (1.9, 32), (5.0, 32)])
@pytest.mark.parametrize("router", ["round_robin", "least_kv", "prefix_affinity"])
@pytest.mark.parametrize("exact", [False, True])
def test_decode_growth_evicts_cached_units_least_recent_first(c_arrival, hit, router, exact):
    # least_kv and prefix_affinity look at the replica mid-run (fast-forward must allocate up to now first).
    sc = scenario(tiny(pool={"num_kv_blocks": 12}, perf=LINEAR, router=router), exact_steps=exact,
                  check_invariants=True)
    reqs = [keyed(0, 0.0, 64, (1, 2, 3, 4)), keyed(1, 0.5, 64, (20, 21, 22, 23)),
            keyed(2, 1.0, 16, (9,), answer=80), keyed(3, c_arrival, 80, (1, 2, 3, 4, 5))]
    res = Simulation(sc).run(reqs)
    r = rows(res)
    assert [r[i].prefix_hit_tokens for i in range(4)] == [0, 0, 0, hit]
    assert r[2].first_token_s == pytest.approx(1.0 + C0 + 16 * CP, abs=1e-12)
    decode_start, b_finish = 1.0 + C0 + 16 * CP, 1.0 + C0 + 16 * CP + 79 * (C0 + CD)
    c_prefill = C0 + (80 - hit) * CP
    if c_arrival < b_finish:  # C's chunk joins one of B's steps, which takes (80 - hit) x CP longer
        boundary = decode_start + math.ceil((c_arrival - decode_start) / (C0 + CD)) * (C0 + CD)
        assert r[3].first_token_s == pytest.approx(boundary + c_prefill + CD, abs=1e-9)
        assert r[2].finish_s == pytest.approx(b_finish + (80 - hit) * CP, abs=1e-9)
    else:
        assert r[3].first_token_s == pytest.approx(c_arrival + c_prefill, abs=1e-9)
        assert r[2].finish_s == pytest.approx(b_finish, abs=1e-9)
    assert set(res.requests["status"]) == {"completed"}
    assert res.requests["num_preemptions"].sum() == 0


@pytest.mark.parametrize("exact", [False, True])
def test_prefix_affinity_sees_evictions_made_inside_a_fast_forwarded_run(exact):
    # Two replicas of 8 blocks. A (keys 1 2) and then B (no keys, 112 output tokens) go to replica 0 (ties go to
    # the lowest index). B's 7th block (step 80, 1.986) evicts unit 2 and its 8th (step 96, 2.178) unit 1; it
    # finishes at 2.358. C (keys 1 2 3) at 2.25 finds no prefix anywhere, so it goes to the less loaded replica 1;
    # a router reading replica 0's cache as of the start of B's fast-forwarded run would see a 32-token hit there.
    pool = {"num_kv_blocks": 8, "replicas": 2}
    sc = scenario(tiny(pool=pool, perf=LINEAR, router="prefix_affinity"), exact_steps=exact, check_invariants=True)
    res = Simulation(sc).run([keyed(0, 0.0, 32, (1, 2)), req(1, 1.0, 16, 0, 112), keyed(2, 2.25, 48, (1, 2, 3))])
    r = rows(res)
    assert [r[i].replica for i in range(3)] == [0, 0, 1]
    assert r[2].prefix_hit_tokens == 0
    assert r[2].first_token_s == pytest.approx(2.25 + C0 + 48 * CP, abs=1e-9)
    assert r[1].finish_s == pytest.approx(1.026 + 111 * (C0 + CD), abs=1e-9)


@pytest.mark.parametrize("exact", [False, True])
def test_recompute_after_preemption_hits_its_own_prefix_but_records_the_first_admission(exact):
    # 4 blocks of 4 tokens (units = blocks); R0 (keys 1) and R1 (keys 2), prompt 4, 8 output tokens, prefill
    # together: 0.01 + 8 x 0.001 = 0.018, caching units 1 and 2. Decode steps of 0.014 take a second block each
    # at 0.018; at 0.074 both need a third: R1 (newest, 5 tokens out) is preempted, its unit 2 kept evictable.
    # R0 finishes alone at 0.074 + 3 x 0.012 = 0.110; R1 then hits its unit 2 and recomputes 9 - 4 = 5 tokens
    # (0.015 -> 0.125), and decodes its last 2 tokens by 0.149. Its recorded hit is that of its first admission.
    pool = {"kv_block_tokens": 4, "num_kv_blocks": 4}
    sc = scenario(tiny(pool=pool, perf=LINEAR), exact_steps=exact, check_invariants=True)
    r0, r1 = req(0, 0.0, 4, 7, 1), req(1, 0.0, 4, 7, 1)
    for r, k in ((r0, 1), (r1, 2)):
        r.prefix_keys, r.prefix_unit_tokens = (k,), 4
    r = rows(Simulation(sc).run([r0, r1]))
    assert r[0].first_token_s == pytest.approx(0.018, abs=1e-12) and r[1].first_token_s == pytest.approx(0.018)
    assert r[0].finish_s == pytest.approx(0.110, abs=1e-12)
    assert (r[0].num_preemptions, r[1].num_preemptions) == (0, 1)
    assert r[1].finish_s == pytest.approx(0.110 + C0 + 5 * CP + 2 * (C0 + CD), abs=1e-12)
    assert (r[0].prefix_hit_tokens, r[1].prefix_hit_tokens) == (0, 0)


@pytest.mark.parametrize("exact", [False, True])
def test_cached_blocks_a_request_would_hit_count_against_free_blocks_and_a_partly_evicted_unit_hits_its_head(exact):
    # 12 blocks of 16 tokens, 32-token units, at most 16 tokens a step. A (96 tokens) caches units 1 2 3 (6
    # blocks); when it finishes they go to the back of the free queue, tail first, behind 6 never-used blocks.
    # B (prompt 16, 82 output tokens) decodes from 1.026, a step per 0.012 s, taking never-used blocks until its
    # 7th block (step 80, 1.986) pops the last block of unit 3. C (100 tokens, keys 1 2 3 4) arrives at 1.85:
    # vLLM admits a request only if its whole sequence fits in free blocks, counting the cached blocks it would
    # hit that nobody holds (they leave the free queue): 7 blocks > 12 - B's blocks, so C waits until B finishes
    # (1.998). Unit 3 kept its first block, so C hits 5 blocks (80 tokens) and computes 20 tokens in chunks of
    # 16 and 4: first token 1.998 + (0.01 + 0.016) + (0.01 + 0.004) = 2.038.
    pool = {"num_kv_blocks": 12, "max_num_batched_tokens": 16}
    sc = scenario(tiny(pool=pool, perf=LINEAR), exact_steps=exact, check_invariants=True)
    b = req(1, 1.0, 16, 0, 82)
    res = Simulation(sc).run([keyed(0, 0.0, 96, (1, 2, 3), unit=32), b, keyed(2, 1.85, 100, (1, 2, 3, 4), unit=32)])
    r = rows(res)
    assert [r[i].prefix_hit_tokens for i in range(3)] == [0, 0, 80]
    assert r[0].finish_s == pytest.approx(6 * (C0 + 16 * CP), abs=1e-9)
    assert r[1].finish_s == pytest.approx(1.026 + 81 * (C0 + CD), abs=1e-9)
    assert r[2].first_token_s == pytest.approx(r[1].finish_s + (C0 + 16 * CP) + (C0 + 4 * CP), abs=1e-9)
    assert res.requests["num_preemptions"].sum() == 0


# ----------------------------------------------------------------------------------------------- (c) properties


@st.composite
def session_scenarios(draw):
    block = draw(st.sampled_from([4, 8, 16]))
    unit = draw(st.sampled_from([u for u in (16, 32) if u % block == 0]))
    max_seqs = draw(st.integers(1, 6))
    # Small KV pools (evictions, preemptions, rejections) and chunked prefill, alone and together.
    budget = 8192 if draw(st.booleans()) else draw(st.integers(max(max_seqs, 8), 64))
    blocks = draw(st.integers(64 // block, 256 // block)) if draw(st.booleans()) else 4096 // block
    pool = {
        "name": "p", "gpu": "h100-sxm", "replicas": draw(st.integers(1, 3)), "max_num_seqs": max_seqs,
        "max_num_batched_tokens": budget, "kv_block_tokens": block, "num_kv_blocks": blocks,
        "prefix_caching": draw(st.booleans()) or draw(st.booleans()),
    }
    if draw(st.booleans()):
        perf = {"kind": "linear", "step_overhead_s": draw(st.floats(1e-3, 0.05)),
                "per_prefill_token_s": draw(st.floats(0, 1e-3)), "per_decode_seq_s": draw(st.floats(0, 1e-2)),
                "per_kv_token_s": draw(st.floats(0, 1e-4))}
    else:
        perf = {"kind": "roofline"}
    mix = []
    for q in range(draw(st.integers(1, 2))):
        mix.append({
            "query_type": f"q{q}", "weight": draw(st.floats(0.5, 2.0)),
            "system_prompt_tokens": draw(st.sampled_from([0, 16, 40, 64])),
            "prompt_tokens": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 40))},
            "reasoning_tokens": {"dist": "uniform", "low": 0, "high": draw(st.integers(0, 80))},
            "answer_tokens": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 16))},
        })
    workload = {"num_requests": draw(st.integers(1, 30)), "prefix_unit_tokens": unit, "mix": mix,
                "arrival": {"process": "poisson", "rate_per_s": draw(st.floats(1, 60))}}
    if draw(st.integers(0, 2)):
        workload["sessions"] = {
            "turns": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 4))},
            "think_time_s": {"dist": "uniform", "low": 0, "high": draw(st.integers(0, 2))},
        }
    router = draw(st.sampled_from(["prefix_affinity", "least_kv", "round_robin", "least_outstanding"]))
    return {
        "name": "prefix-prop", "seed": draw(st.integers(0, 2**32 - 1)), "model": "llama-3.1-8b",
        "cluster": {"pools": [pool]}, "perf": perf, "router": router, "workload": workload,
    }


def check_records(res):
    req = res.requests
    n = len(req)
    assert n >= 1
    assert sorted(req["request_id"]) == list(range(n))  # every arrival recorded exactly once
    assert set(req["status"]) <= {"completed", "rejected"}
    done = req[req.status == "completed"]
    assert (done["generated_tokens"] == done["reasoning_tokens"] + done["answer_tokens"]).all()
    assert (req["prefix_hit_tokens"] >= 0).all()
    assert (req["prefix_hit_tokens"] < req["prompt_tokens"]).all()  # at least one token is computed
    assert (res.replicas.groupby("replica")["kv_blocks_end"].last() == 0).all()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(session_scenarios())
def test_sessions_and_system_prompts_fast_forward_equals_exact_steps(data):
    ff = Simulation(scenario(data, check_invariants=True)).run()
    ex = Simulation(scenario(data, check_invariants=True, exact_steps=True)).run()
    check_records(ff)
    check_records(ex)
    a, b = by_id(ff.requests), by_id(ex.requests)
    assert len(a) == len(b)
    for col in ("status", "num_preemptions", "prefix_hit_tokens", "prompt_tokens", "replica"):
        assert list(a[col]) == list(b[col]), col
    for col in ("arrival_s", "first_token_s", "finish_s"):
        x, y = a[col].to_numpy(), b[col].to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y)), col
        ok = ~np.isnan(x)
        assert np.allclose(x[ok], y[ok], rtol=1e-9, atol=0), col
    if not data["cluster"]["pools"][0]["prefix_caching"]:
        assert (a["prefix_hit_tokens"] == 0).all()


# ----------------------------------------------------------------------------------------------- (d) Mooncake


ROOMY_GPU = {**GPUS["h100-sxm"].model_dump(), "name": "h100-sxm-roomy", "memory_bytes": 1e15}


def mooncake_run(num_kv_blocks):
    data = {
        "name": "mooncake-hits", "seed": 1, "model": "llama-3.1-8b",
        # An H100 with memory for the unbounded cache (20M blocks: 42 TB), as bench/cluster_tables.py does.
        "cluster": {"pools": [{"name": "main", "gpu": ROOMY_GPU, "replicas": 1, "num_kv_blocks": num_kv_blocks}]},
        "perf": {"kind": "linear", "step_overhead_s": 0.001, "per_prefill_token_s": 1e-6, "per_decode_seq_s": 1e-5},
        "workload": {"trace": {"format": "mooncake", "path": str(MOONCAKE)}},
    }
    return Simulation(parse_scenario(data)).run()


def ideal_token_hit_ratio(path, unit=512):
    """Token-weighted ideal reuse with an infinite cache, in file order: leading hash ids already seen, at least
    one unit recomputed per prompt; a prompt's full units are cached after it."""
    seen: set[int] = set()
    hit_total = prompt_total = 0
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            length, ks = int(row["input_length"]), row["hash_ids"]
            h = 0
            while h < len(ks) and ks[h] in seen:
                h += 1
            hit = min(h * unit, length)
            if hit >= length:
                hit = ((length - 1) // unit) * unit
            hit_total += hit
            prompt_total += length
            seen.update(ks[: length // unit])
    return hit_total / prompt_total


@pytest.fixture(scope="module")
def mooncake_unbounded():
    if not MOONCAKE.is_file():
        pytest.skip(f"shared data not found: {MOONCAKE}")
    return mooncake_run(20_000_000)


def test_mooncake_unbounded_cache_reaches_the_ideal_reuse(mooncake_unbounded):
    s = mooncake_unbounded.summary
    assert s["num_completed"] == 12_031
    ratio = s["prefix_cache_hit_ratio"]
    assert abs(ratio - 0.366) < 0.01  # the trace README's ideal (block count), REFERENCE.md
    assert ratio == pytest.approx(ideal_token_hit_ratio(MOONCAKE), abs=1e-3)


def test_mooncake_smaller_caches_hit_less(mooncake_unbounded):
    unbounded = mooncake_unbounded.summary["prefix_cache_hit_ratio"]
    mid = mooncake_run(200_000).summary["prefix_cache_hit_ratio"]
    small = mooncake_run(50_000).summary["prefix_cache_hit_ratio"]
    assert unbounded > mid > small > 0
    # The shared first block (a 512-token system prompt) alone keeps a few percent even in a small cache.
    assert small > 0.02


@pytest.mark.parametrize("exact", [False, True])
def test_preempted_request_keeps_its_computed_blocks_cached(exact):
    """vLLM hashes every full block, so a preempted request's blocks stay cached (tail evicted first) and a quick
    readmission recomputes only what was evicted (here in 256-token units, as for any request without prefix keys).
    8 requests of 300-token prompts and 300-600 output tokens on 180 blocks of 16 tokens: preemptions happen;
    with the cache on, less is recomputed than with it off, never less than the prompts, and no request records a
    prefix hit from its own earlier admission."""
    rng = np.random.default_rng(5)
    outputs = rng.integers(300, 600, 8)
    runs = {}
    for caching in (True, False):
        pool = {"num_kv_blocks": 180, "prefix_caching": caching, "max_num_seqs": 8, "max_num_batched_tokens": 512}
        sc = scenario(tiny(pool=pool, perf=LINEAR), exact_steps=exact, check_invariants=True)
        runs[caching] = Simulation(sc).run([req(i, 0.002 * i, 300, int(o), 1) for i, o in enumerate(outputs)])
    on, off = runs[True], runs[False]
    assert on.summary["num_preemptions"] > 0 and off.summary["num_preemptions"] > 0
    prompts = 8 * 300
    assert prompts <= on.replicas["prefill_tokens"].sum() < off.replicas["prefill_tokens"].sum()
    assert (on.requests["prefix_hit_tokens"] == 0).all()
    assert (on.requests["status"] == "completed").all()
