"""Trace reuse economics (issue 18): the trace cache's lookup and storage costs and its break-even hit ratio, each
against a hand computation on a tiny deterministic run; pricing, revenue and margin; reuse with parallel samples."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import by_id, scenario, tiny

from simserve import Simulation
from simserve.workload import TraceCacheSpec

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
