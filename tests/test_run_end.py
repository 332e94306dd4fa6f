"""How a run ends and what it reports: the defects an independent fuzzer found (../shared/repro), each pinned.

- A run stopping at its horizon inside a fast-forwarded decode run accounts for it exactly as stepping does.
- A disaggregated request too big for the decode pool is rejected on arrival, not after its prefill.
- Every request of the workload is recorded, those that never arrived too (status not_arrived).
- `saturated` is about the load: a run at 10x capacity that drains before its horizon is saturated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import scenario, tiny

from simserve import Simulation, load_scenario, run

ROOT = Path(__file__).resolve().parent.parent
REPRO = ROOT.parent / "shared" / "repro"
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def _repro(name: str) -> Path:
    path = REPRO / name
    if not path.exists():
        pytest.skip(f"{path} not found (../shared beside the checkout)")
    return path


def test_a_horizon_inside_a_fast_forwarded_run_is_accounted_as_stepping_does():
    path = _repro("horizon_ff_accounting.yaml")
    ff = run(load_scenario(path))
    ex = run(load_scenario(path, ["engine.exact_steps=true"]))
    assert ff.summary["stopped_at_horizon"] and ex.summary["stopped_at_horizon"]
    for key in ("kv_utilization_mean", "kv_utilization_max", "output_tokens"):
        assert ff.summary[key] == pytest.approx(ex.summary[key], rel=1e-12), key
    for col in ("num_steps", "decode_tokens", "prefill_tokens"):
        assert ff.replicas[col].sum() == ex.replicas[col].sum(), col
    assert ff.replicas["end_s"].max() == pytest.approx(ex.replicas["end_s"].max(), rel=1e-12)
    assert list(ff.requests["generated_tokens"]) == list(ex.requests["generated_tokens"])


def test_a_request_too_big_for_the_decode_pool_is_rejected_on_arrival():
    res = run(load_scenario(_repro("disagg_reject_after_prefill.yaml")))
    df = res.requests
    assert (df["status"] == "rejected").all()
    assert df["first_token_s"].isna().all() and (df["generated_tokens"] == 0).all()
    assert df["reason"].str.contains("decode replicas hold at most").all()
    assert (res.replicas["prefill_tokens"].sum()) == 0  # no prefill compute spent on them


def test_requests_that_never_arrived_are_recorded_and_the_horizon_is_reported():
    data = {"name": "h", "seed": 3, "model": "llama-3.1-8b",
            "cluster": {"pools": [{"gpu": "h100-sxm", "max_num_seqs": 4, "num_kv_blocks": 200}]},
            "perf": {"kind": "linear", "step_overhead_s": 0.01},
            "workload": {"num_requests": 100, "arrival": {"process": "poisson", "rate_per_s": 10.0},
                         "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 20},
                                  "reasoning_tokens": {"dist": "constant", "value": 30},
                                  "answer_tokens": {"dist": "constant", "value": 5}}]},
            "engine": {"horizon_s": 4.0}}
    res = Simulation(scenario(data)).run()
    df, s = res.requests, res.summary
    assert len(df) == 100 and df["request_id"].is_unique
    assert s["num_not_arrived"] > 0 and s["stopped_at_horizon"] and s["saturated"]
    late = df[df.status == "not_arrived"]
    assert (late["arrival_s"] >= 4.0).all() and late["reason"].str.contains("horizon").all()
    assert s["num_completed"] + s["num_unfinished"] + s["num_not_arrived"] + s["num_rejected"] == 100


def test_ten_times_capacity_is_saturated_even_when_it_drains_before_the_horizon():
    over = run(load_scenario(QUICKSTART, ["workload.num_requests=600", "workload.arrival.rate_per_s=20",
                                          "engine.horizon_s=1000000"]))
    s = over.summary
    assert s["num_completed"] == 600 and not s["stopped_at_horizon"]
    assert s["saturated"] is True and s["queue_growth_requests_per_s"] > 1.0
    calm = run(load_scenario(QUICKSTART, ["workload.num_requests=600"])).summary
    assert calm["saturated"] is False and abs(calm["queue_growth_requests_per_s"]) < 0.05


def test_reasoning_end_and_time_to_answer_are_recorded():
    res = run(load_scenario(QUICKSTART, ["workload.num_requests=50"]))
    df = res.requests
    done = df[df.status == "completed"]
    assert np.all(done["first_token_s"] <= done["reasoning_end_s"])
    assert np.all(done["reasoning_end_s"] <= done["finish_s"])
    assert np.allclose(done["time_to_answer_s"], done["reasoning_end_s"] - done["arrival_s"])
    assert res.summary["time_to_answer_s_p50"] == pytest.approx(float(np.percentile(done["time_to_answer_s"], 50)))


def test_a_reasoning_end_in_a_step_the_horizon_cuts_is_not_recorded():
    # One request (prompt 1, reasoning 2, answer 5), 1 s steps: the prefill step [0, 1] samples the first reasoning
    # token, the decode step [1, 2] the last one and starts a fast-forwarded run. The horizon at 1.5 s cuts that
    # step: stepping never delivers its token, so neither may fast-forward (it once stamped 2.0 at the run's start).
    data = {"name": "cut", "seed": 1, "model": "llama-3.1-8b",
            "cluster": {"pools": [{"gpu": "h100-sxm", "num_kv_blocks": 100}]},
            "perf": {"kind": "linear", "step_overhead_s": 1.0},
            "workload": {"num_requests": 1, "arrival": {"process": "poisson", "rate_per_s": 1e9},
                         "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 1},
                                  "reasoning_tokens": {"dist": "constant", "value": 2},
                                  "answer_tokens": {"dist": "constant", "value": 5}}]},
            "engine": {"horizon_s": 1.5}}
    for exact in (False, True):
        df = Simulation(scenario(data, exact_steps=exact)).run().requests
        assert df["status"].tolist() == ["unfinished"]
        assert np.isnan(df["reasoning_end_s"].iloc[0]), exact
    data["engine"]["horizon_s"] = 2.5
    for exact in (False, True):
        df = Simulation(scenario(data, exact_steps=exact)).run().requests
        assert df["reasoning_end_s"].iloc[0] == pytest.approx(2.0, abs=1e-6), exact


def test_a_run_collects_garbage_less_often_and_restores_the_collectors_settings():
    import gc

    from simserve import sim

    seen: list[tuple[tuple[int, int, int], bool]] = []

    class Watch(sim.Hooks):
        def arrived(self, req):
            seen.append((gc.get_threshold(), gc.get_freeze_count() > 0))

    before = gc.get_threshold()
    gc.set_threshold(500, 7, 9)
    try:
        res = sim.Simulation(scenario(tiny()), hooks=[Watch()]).run()
        assert res.summary["num_completed"] == 10
        assert seen and all(t == sim.RUN_GC_THRESHOLD and frozen for t, frozen in seen)
        assert gc.get_threshold() == (500, 7, 9) and gc.get_freeze_count() == 0
        # Nested (or concurrent) runs: the settings come back when the last ends; a caller's frozen objects stay.
        gc.freeze()
        with sim._fewer_collections():
            with sim._fewer_collections():
                assert gc.get_threshold() == sim.RUN_GC_THRESHOLD
            assert gc.get_threshold() == sim.RUN_GC_THRESHOLD
        assert gc.get_threshold() == (500, 7, 9) and gc.get_freeze_count() > 0  # not unfrozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
