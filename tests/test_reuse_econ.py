"""Trace reuse economics (issue 18): the trace cache's lookup and storage costs and its break-even hit ratio, each
against a hand computation on a tiny deterministic run; pricing, revenue and margin; reuse with parallel samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import by_id, scenario, tiny

from simserve import Simulation
from simserve.scenario import ScenarioError, apply_overrides
from simserve.workload import TraceCacheSpec, generate_requests, rng_streams

H100_USD_PER_HOUR = 2.90
TRACE_BYTES = 6144 + 4 * (5 + 1)  # the embedding, plus 4 bytes per token of the trace (5 reasoning, 1 answer)


def _run(tmp_path: Path, cache: dict | None, n: int = 200, rate: float = 0.05, **top):
    data = tiny(**top)
    data["workload"]["num_requests"] = n
    data["workload"]["arrival"]["rate_per_s"] = rate
    data["workload"]["mix"][0]["concepts"] = {"num_concepts": 50}
    if cache is not None:
        data["workload"]["trace_cache"] = cache
    return Simulation(scenario(data), records_dir=tmp_path).run()


# ------------------------------------------------------------------------------------------ lookup and storage


def test_lookup_and_storage_costs_and_break_even_match_a_hand_computation(tmp_path):
    res = _run(tmp_path, {"kind": "exact"})
    s, df = res.summary, by_id(res.requests)
    end = s["makespan_s"]
    miss = df["reuse"] == "none"
    # Every trace stored is held from its request's completion to the end (unbounded, no TTL; arrivals 20 s apart:
    # each concept is stored once), at 6168 bytes; memory: 1e-6 USD per lookup, 0.01 USD per GB-hour, 2 ms.
    byte_hours = (TRACE_BYTES * (end - df.loc[miss, "finish_s"])).sum() / 3600
    assert s["trace_cache_byte_hours"] == pytest.approx(byte_hours, rel=1e-12)
    assert s["trace_cache_storage_cost_usd"] == pytest.approx(byte_hours / 1e9 * 0.01, rel=1e-12)
    assert s["trace_cache_lookup_cost_usd"] == pytest.approx(200 * 1e-6)
    assert s["trace_cache_lookup_latency_s"] == 0.002 and s["trace_cache_lookup_usd"] == 1e-6
    serving = end / 3600 * H100_USD_PER_HOUR
    assert s["cost_usd"] == pytest.approx(serving + 200e-6 + byte_hours / 1e9 * 0.01, rel=1e-12)
    # Break-even: 1e-6 USD per lookup over (5 reasoning tokens saved per hit x GPU USD per generated token).
    per_token = serving / df["generated_tokens"].sum()
    assert s["gpu_usd_per_generated_token"] == pytest.approx(per_token, rel=1e-12)
    assert s["trace_cache_saved_tokens_per_hit"] == 5.0 and s["trace_cache_hits"] == (~miss).sum() > 50
    assert s["trace_cache_usd_saved_per_hit"] == pytest.approx(5 * per_token, rel=1e-12)
    assert s["trace_cache_break_even_hit_ratio"] == pytest.approx(1e-6 / (5 * per_token), rel=1e-12)


def test_an_evicted_trace_stops_costing_storage(tmp_path):
    # One entry at most, each trace the same size: from the first store on, exactly one trace's bytes are held
    # whatever is evicted and stored (LRU or LFU).
    for eviction in ("lru", "lfu"):
        res = _run(tmp_path / eviction, {"kind": "exact", "capacity_entries": 1, "eviction": eviction})
        s, df = res.summary, by_id(res.requests)
        first = df.loc[df["reuse"] == "none", "finish_s"].min()
        assert s["trace_cache_evictions"] > 10
        assert s["trace_cache_byte_hours"] == pytest.approx(TRACE_BYTES * (s["makespan_s"] - first) / 3600, rel=1e-9)


def test_the_remote_preset_and_explicit_fields_override_it(tmp_path):
    remote = TraceCacheSpec(location="remote")
    assert (remote.lookup_latency, remote.lookup_cost_usd) == (0.030, 1.7e-5)
    assert remote.storage_price_usd_per_gb_hour == pytest.approx(0.33 / 730)
    mine = TraceCacheSpec(location="remote", lookup_latency_s=0.01, lookup_usd=0.0, storage_usd_per_gb_hour=1.0)
    assert (mine.lookup_latency, mine.lookup_cost_usd, mine.storage_price_usd_per_gb_hour) == (0.01, 0.0, 1.0)
    res = _run(tmp_path, {"kind": "exact", "location": "remote", "bytes_per_entry": 0, "bytes_per_token": 1000},
               n=50)
    s, df = res.summary, by_id(res.requests)
    assert s["trace_cache_lookup_cost_usd"] == pytest.approx(50 * 1.7e-5)
    assert (df["first_token_s"] - df["arrival_s"] >= 0.030).all()  # every request waits the remote lookup
    miss = df["reuse"] == "none"
    byte_hours = (6000 * (s["makespan_s"] - df.loc[miss, "finish_s"])).sum() / 3600
    assert s["trace_cache_storage_cost_usd"] == pytest.approx(byte_hours / 1e9 * 0.33 / 730, rel=1e-12)
    with pytest.raises(ValueError):
        TraceCacheSpec.model_validate({"location": "disk"})


# ------------------------------------------------------------------------------------------ pricing and margin


def test_revenue_and_margin_without_reuse_and_pricing_off_adds_nothing(tmp_path):
    data = tiny()
    data["workload"]["num_requests"] = 40
    off = Simulation(scenario(data), records_dir=tmp_path / "off").run().summary
    data["pricing"] = {"input_usd_per_mtok": 3.0, "output_usd_per_mtok": 15.0}
    on = Simulation(scenario(data), records_dir=tmp_path / "on").run().summary
    added = {"billed_input_tokens", "billed_output_tokens", "revenue_usd", "margin_usd", "margin_ratio",
             "usd_per_query", "revenue_per_query_usd"}
    assert set(on) - set(off) == added and not set(off) & added
    same = [k for k in off if k != "wall_time_s"]
    assert json.dumps([on[k] for k in same], default=str) == json.dumps([off[k] for k in same], default=str)
    n = on["num_completed"]
    assert n == 40 and on["billed_input_tokens"] == 10 * n and on["billed_output_tokens"] == 6 * n
    revenue = n * (10 * 3.0 + 6 * 15.0) / 1e6  # prompt 10 tokens, reasoning 5 + answer 1
    assert on["revenue_usd"] == pytest.approx(revenue, rel=1e-12)
    assert on["margin_usd"] == pytest.approx(revenue - on["cost_usd"], rel=1e-12)
    assert on["margin_ratio"] == pytest.approx(1 - on["cost_usd"] / revenue, rel=1e-12)
    assert on["usd_per_query"] == pytest.approx(on["cost_usd"] / n, rel=1e-12)
    assert on["revenue_per_query_usd"] == pytest.approx(revenue / n, rel=1e-12)
    assert TraceCacheSpec().lookup_cost_usd == 1e-6
    d = scenario(tiny(pricing={})).pricing
    assert d is not None and (d.input_usd_per_mtok, d.output_usd_per_mtok, d.bill_reused_reasoning) == (
        0.55, 2.19, True)
    with pytest.raises(ScenarioError, match="pricing.input_usd_per_mtok"):
        scenario(tiny(pricing={"input_usd_per_mtok": -1}))
    with pytest.raises(ScenarioError, match="pricing.usd_per_mtok: unknown key"):
        scenario(tiny(pricing={"usd_per_mtok": 1}))
    over = apply_overrides(tiny(), ["pricing.output_usd_per_mtok=60", "pricing.bill_reused_reasoning=false"])
    p = scenario(over).pricing
    assert p is not None and (p.input_usd_per_mtok, p.output_usd_per_mtok, p.bill_reused_reasoning) == (
        0.55, 60.0, False)


@pytest.mark.parametrize("kind", ["exact", "step"])
def test_reused_reasoning_is_billed_or_not_and_step_prompts_are_not_the_users(tmp_path, kind):
    price = {"input_usd_per_mtok": 1.0, "output_usd_per_mtok": 10.0}
    reasoning = 100
    runs = {}
    for bill in (True, False):
        data = tiny(pricing=price | {"bill_reused_reasoning": bill})
        data["workload"]["num_requests"] = 150
        data["workload"]["arrival"]["rate_per_s"] = 0.05
        data["workload"]["mix"][0]["reasoning_tokens"]["value"] = reasoning
        data["workload"]["mix"][0]["concepts"] = {"num_concepts": 30}
        data["workload"]["trace_cache"] = {"kind": kind}
        runs[bill] = Simulation(scenario(data), records_dir=tmp_path / str(bill)).run()
    df = by_id(runs[True].requests)
    hit = df["reuse"] == kind
    saved = 100 if kind == "exact" else 35
    assert hit.sum() > 50 and (df.loc[hit, "reused_reasoning_tokens"] == saved).all()
    n = len(df)
    for bill, res in runs.items():
        s = res.summary
        assert s["billed_input_tokens"] == 10 * n  # the user's prompt: the cached steps prefilled are not billed
        generated = 101 * n - saved * hit.sum()
        assert s["billed_output_tokens"] == (101 * n if bill else generated)
        assert s["revenue_usd"] == pytest.approx((10 * n * 1.0 + s["billed_output_tokens"] * 10.0) / 1e6)
    assert runs[True].summary["margin_usd"] > runs[False].summary["margin_usd"]


# ------------------------------------------------------------------------------------------ parallel samples


def _parallel(tmp_path: Path, cache: dict | None, n: int = 300, samples: int = 4, minting: dict | None = None):
    data = tiny()
    data["workload"]["num_requests"] = n
    data["workload"]["arrival"]["rate_per_s"] = 0.05
    entry = data["workload"]["mix"][0]
    entry["reasoning_tokens"] = {"dist": "uniform", "low": 20, "high": 200}
    entry["quality"] = {}
    entry["parallel"] = {"n": samples, "aggregate": "majority"}
    entry["concepts"] = {"num_concepts": 30}
    if cache is not None:
        data["workload"]["trace_cache"] = cache
    if minting is not None:
        data["workload"]["minting"] = minting
    sc = scenario(data, check_invariants=True)
    drawn = {r.request_id: r.answer for r in generate_requests(sc.workload, rng_streams(sc.seed),
                                                                model=sc.answer_model)}
    return Simulation(sc, records_dir=tmp_path).run(), drawn


def test_a_whole_hit_with_parallel_samples_is_answered_once_without_reasoning(tmp_path):
    on, drawn = _parallel(tmp_path / "on", {"kind": "exact"})
    off, _ = _parallel(tmp_path / "off", None)
    a, b = by_id(off.requests), by_id(on.requests)
    hit = b["reuse"] == "exact"
    assert hit.sum() > 100 and (b["status"] == "completed").all()
    # One answer's tokens, no reasoning, one sample; the reasoning of all 4 samples counted as saved.
    assert (b.loc[hit, "num_samples"] == 1).all() and (b.loc[~hit, "num_samples"] == 4).all()
    assert (b.loc[hit, "reasoning_tokens"] == 0).all() and (b.loc[hit, "generated_tokens"] == 1).all()
    assert (b.loc[hit, "reasoning_tokens_spent"] == 0).all()
    assert (b.loc[hit, "reused_reasoning_tokens"] == a.loc[hit, "reasoning_tokens"]).all()
    # Its answer is the first drawn sample's; a miss is forked and aggregated as without a cache.
    first = [bool(drawn[i].correct_samples[0]) for i in b.loc[hit, "request_id"]]
    assert list(b.loc[hit, "correct"] == 1) == first
    assert b.loc[~hit, "correct"].equals(a.loc[~hit, "correct"])
    assert b.loc[~hit, "generated_tokens"].equals(a.loc[~hit, "generated_tokens"])
    hits = b.loc[hit, "correct"].sum() - a.loc[hit, "correct"].sum()
    assert on.summary["num_correct"] == off.summary["num_correct"] + hits  # accuracy accounting exact


def test_step_reuse_and_minted_tokens_shrink_every_sample(tmp_path):
    on, drawn = _parallel(tmp_path / "on", {"kind": "step", "step_reuse_share": 0.35})
    off, _ = _parallel(tmp_path / "off", None)
    a, b = by_id(off.requests), by_id(on.requests)
    hit = b["reuse"] == "step"
    assert hit.sum() > 100 and (b["num_samples"] == 4).all()
    for i in b.loc[hit, "request_id"]:
        r = drawn[i].reasoning + drawn[i].probes  # each of the 4 samples' reasoning, as drawn
        cut = np.rint(0.35 * r)
        row = b.loc[b["request_id"] == i].iloc[0]
        assert row["reused_reasoning_tokens"] == cut.sum()
        assert row["reasoning_tokens"] == (r - cut).sum()  # what the 4 samples decoded, added up
        assert row["prompt_tokens"] == 10 + round(0.35 * r.max())  # the cached steps, prefilled once and shared
    assert b["correct"].equals(a["correct"])  # step reuse keeps every sample's answer
    assert on.summary["reused_reasoning_tokens"] == b.loc[hit, "reused_reasoning_tokens"].sum()
    minted, drawn = _parallel(tmp_path / "m", None, minting={"min_count": 2, "job_every_s": 500.0,
                                                             "compression": 0.3})
    c = by_id(minted.requests)
    m = c["reuse"] == "minted"
    assert m.sum() > 100 and c["correct"].equals(a["correct"])
    for i in c.loc[m, "request_id"]:
        r = drawn[i].reasoning + drawn[i].probes
        row = c.loc[c["request_id"] == i].iloc[0]
        assert row["reasoning_tokens"] == np.rint(0.3 * r).sum()
        assert row["reused_reasoning_tokens"] == (r - np.rint(0.3 * r)).sum()


def test_false_hits_with_parallel_samples_are_wrong_once_and_the_rest_unchanged(tmp_path):
    data_cache = {"kind": "semantic", "false_hit_rate": 0.3}
    on, _ = _parallel(tmp_path / "on", data_cache)
    off, _ = _parallel(tmp_path / "off", {"kind": "semantic", "false_hit_rate": 0.0})
    a, b = by_id(off.requests), by_id(on.requests)
    false = b["reuse"] == "semantic_false"
    assert false.sum() > 10
    assert (b.loc[false, "correct"] == 0).all() and (b.loc[false, "num_samples"] == 1).all()
    assert (b.loc[false, "generated_tokens"] == 1).all()
    same = ~false & (a["reuse"] == b["reuse"])
    assert b.loc[same, "correct"].equals(a.loc[same, "correct"])
