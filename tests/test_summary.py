"""The summary a capacity planner acts on: each SLO's attainment (time to answer included), offered against
achieved request rate, the GPUs' busy share, and per-query-type and per-pool tables with exact percentiles
computed in bounded memory."""

from __future__ import annotations

import copy
import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
from helpers import scenario, tiny

import simserve.sim
from simserve import Simulation, parse_scenario
from simserve.metrics import PERCENTILES, SLO_METRICS, Recorder, busy_seconds, group_summary

SLO = {"ttft_s": 0.3, "tpot_s": 0.02, "time_to_answer_s": 0.6, "e2e_s": 0.7}


def two_type_scenario(num_requests: int = 120, rate_per_s: float = 8.0, slo: dict | None = None, **engine):
    """Two query types on two pools (routed by query type) with every SLO; a linear step-time model."""
    data = tiny()
    data["cluster"] = {"pools": [
        {"name": "small", "gpu": "h100-sxm", "replicas": 1, "max_num_seqs": 4},
        {"name": "large", "gpu": "a100-80gb", "replicas": 2, "max_num_seqs": 4, "tensor_parallel": 2}]}
    data["router"] = {"kind": "by_query_type", "table": {"short": "small", "long": "large"}}
    data["workload"] = {"num_requests": num_requests, "arrival": {"process": "poisson", "rate_per_s": rate_per_s},
                        "mix": [{"query_type": "short", "prompt_tokens": {"dist": "uniform", "low": 5, "high": 50},
                                 "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 20},
                                 "answer_tokens": {"dist": "constant", "value": 3}},
                                {"query_type": "long", "prompt_tokens": {"dist": "uniform", "low": 50, "high": 200},
                                 "reasoning_tokens": {"dist": "uniform", "low": 20, "high": 80},
                                 "answer_tokens": {"dist": "constant", "value": 5}}]}
    data["slo"] = copy.deepcopy(SLO if slo is None else slo)
    return scenario(data, **engine)


@pytest.fixture(scope="module")
def results():
    return Simulation(two_type_scenario()).run()


def test_slo_attainment_is_the_share_of_completed_requests_within_each_target(results):
    s, df = results.summary, results.requests
    done = df[df["status"] == "completed"]
    assert len(done) > 0
    ok = pd.Series(True, index=done.index)
    for k in SLO_METRICS:
        assert s[f"slo_{k}"] == SLO[k]
        within = done[k].fillna(0.0) <= SLO[k]
        assert s[f"slo_attainment_{k}"] == within.sum() / len(done), k
        ok &= within
    assert 0 < s["slo_attainment_time_to_answer_s"] < 1  # the targets bite
    # Goodput checks time to answer too: share of all requests within every SLO.
    assert s["goodput"] == ok.sum() / len(df)
    assert s["goodput"] <= min(s[f"slo_attainment_{k}"] for k in SLO_METRICS)


def test_without_an_slo_the_targets_are_none_and_attainment_undefined():
    s = Simulation(two_type_scenario(num_requests=20, slo={"ttft_s": 1.0})).run().summary
    assert s["slo_ttft_s"] == 1.0 and 0 <= s["slo_attainment_ttft_s"] <= 1
    for k in ("tpot_s", "time_to_answer_s", "e2e_s"):
        assert s[f"slo_{k}"] is None and math.isnan(s[f"slo_attainment_{k}"])


def test_time_to_answer_slo_is_a_scenario_field():
    data = tiny(slo={"time_to_answer_s": 30})
    assert parse_scenario(data).slo.time_to_answer_s == 30
    data["slo"] = {"time_to_answer_s": 0}
    with pytest.raises(simserve.ScenarioError, match="slo.time_to_answer_s"):
        parse_scenario(data)


def rates(df: pd.DataFrame) -> tuple[float, float]:
    arrived = df[df["status"] != "not_arrived"]
    first, last = arrived["arrival_s"].min(), arrived["arrival_s"].max()
    mid = (first + last) / 2
    done = df[df["status"] == "completed"]
    return (((arrived["arrival_s"] >= mid) & (arrived["arrival_s"] <= last)).sum() / (last - mid),
            ((done["finish_s"] >= mid) & (done["finish_s"] <= last)).sum() / (last - mid))


def test_offered_and_achieved_rates_over_the_second_half_of_the_arrivals(results):
    s = results.summary
    offered, achieved = rates(results.requests)
    assert s["offered_requests_per_s"] == pytest.approx(offered, rel=1e-12)
    assert s["achieved_requests_per_s"] == pytest.approx(achieved, rel=1e-12)
    # A cluster that keeps up serves what it is offered (8/s here); an overloaded one, its capacity.
    assert not s["saturated"]
    assert s["offered_requests_per_s"] == pytest.approx(8.0, rel=0.35)
    assert s["achieved_requests_per_s"] == pytest.approx(s["offered_requests_per_s"], rel=0.2)
    hot = Simulation(two_type_scenario(num_requests=300, rate_per_s=200.0)).run().summary
    assert hot["saturated"]
    assert hot["achieved_requests_per_s"] < 0.5 * hot["offered_requests_per_s"]


def test_gpu_busy_share_is_stepping_time_over_the_makespan(results):
    s, seg = results.summary, results.replicas
    stepping = seg[seg["num_steps"] > 0]
    busy = (stepping["end_s"] - stepping["start_s"]).groupby(stepping["pool"]).sum()
    assert busy_seconds(results.replicas_path) == pytest.approx(busy.to_dict(), rel=1e-12)
    small = busy["small"] / (1 * s["makespan_s"])
    large = busy["large"] / (2 * s["makespan_s"])
    assert s["gpu_busy_share_small"] == pytest.approx(small, rel=1e-12)
    assert s["gpu_busy_share_large"] == pytest.approx(large, rel=1e-12)
    # Over GPUs: the large pool has 2 replicas x 2 GPUs, the small one 1 x 1.
    assert s["gpu_busy_share"] == pytest.approx((small * 1 + large * 4) / 5, rel=1e-12)
    assert 0 < s["gpu_busy_share"] < 1


def expected_groups(df: pd.DataFrame, by: str) -> dict:
    out = {}
    for g, rows in df.groupby(by, sort=False):
        done = rows[rows["status"] == "completed"]
        row = {"num_requests": len(rows), "num_completed": len(done)}
        for m in ("ttft_s", "time_to_answer_s", "e2e_s"):
            v = done[m].dropna().to_numpy(float)
            row[f"{m}_mean"] = float(v.mean()) if len(v) else math.nan
            for p in PERCENTILES:
                row[f"{m}_p{p}"] = float(np.percentile(v, p)) if len(v) else math.nan
        out[g] = row
    return out


@pytest.mark.parametrize("by", ["query_type", "pool"])
def test_group_tables_are_exact_from_the_file_in_bounded_memory(monkeypatch, by):
    monkeypatch.setattr(simserve.sim, "Recorder", partial(Recorder, row_group_rows=7))
    res = Simulation(two_type_scenario(num_requests=90, rate_per_s=30.0, horizon_s=4.0)).run()
    df = res.requests
    assert res.summary["num_unfinished"] > 0  # some rows are not completed
    want = expected_groups(df, by)
    for got in (group_summary(res.requests_path, by, max_held=3), group_summary(df, by)):
        assert list(got) == list(want)
        for g, row in want.items():
            for key, value in row.items():
                if key.endswith("_mean"):
                    assert got[g][key] == pytest.approx(value, rel=1e-13), (g, key)
                else:
                    assert got[g][key] == value, (g, key)
            assert sum(got[g][f"num_{s}"] for s in ("completed", "rejected", "unfinished", "not_arrived")) == \
                got[g]["num_requests"]
