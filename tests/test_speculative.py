"""Speculative decoding (issue 23): tokens committed per step at acceptance 1 and 0, the mean tokens per step
against (1 - a^(k+1)) / (1 - a), KV blocks conserved under rejection, fast-forward equal to exact steps, and the
spec's validation."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import scenario, tiny
from test_invariants import check_invariants, check_same_results

from simserve.perf.speculative import SpeculativeSpec, mean_tokens_per_step, rate_for_length, uniforms
from simserve.scenario import ScenarioError
from simserve.sim import Simulation


def _one(output: int, rate: float, k: int, **engine):
    data = tiny(pool={"speculative": {"method": "eagle", "num_speculative_tokens": k, "acceptance_rate": rate}},
                workload={"num_requests": 1, "arrival": {"process": "poisson", "rate_per_s": 1.0},
                          "mix": [{"query_type": "t", "prompt_tokens": {"dist": "constant", "value": 10},
                                   "reasoning_tokens": {"dist": "constant", "value": output - 1},
                                   "answer_tokens": {"dist": "constant", "value": 1}}]})
    res = Simulation(scenario(data, **engine)).run()
    return res, int(res.replicas["num_steps"].sum())


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_acceptance_one_commits_k_plus_one_and_zero_commits_one(k, exact):
    out = 100
    res, steps = _one(out, 1.0, k, exact_steps=exact)
    assert res.requests["generated_tokens"].iloc[0] == out
    assert steps == 1 + -(-(out - 1) // (k + 1))  # the prefill samples the first token, then k+1 a step
    res, steps = _one(out, 0.0, k, exact_steps=exact)
    assert steps == out  # one token a step, as without speculation
    assert res.requests["generated_tokens"].iloc[0] == out


@pytest.mark.parametrize("rate,k", [(0.5, 2), (0.7, 4), (0.87, 1), (0.8, 6)])
def test_mean_tokens_per_step_matches_geometric_formula(rate, k):
    expected = mean_tokens_per_step(rate, k)
    assert expected == pytest.approx((1 - rate ** (k + 1)) / (1 - rate))
    # The draws alone: 200,000 sequence-steps, within 4 standard errors.
    spec = SpeculativeSpec(method="eagle", num_speculative_tokens=k, acceptance_rate=rate)
    u = uniforms(12345, np.arange(200_000), np.arange(200_000) % 977)
    acc = (u[:, None] < spec.thresholds("t", False)).sum(axis=1)
    assert abs(np.mean(1 + acc) - expected) < 4 * np.std(1 + acc) / np.sqrt(len(acc))
    # And in the engine: one long decode (steps are independent draws; a 1% tolerance is many sigmas).
    out = 40_000
    _, steps = _one(out, rate, k)
    assert (out - 1) / (steps - 1) == pytest.approx(expected, rel=0.02)


def test_mean_acceptance_length_solves_rate():
    a = rate_for_length(3.95, 6)
    assert mean_tokens_per_step(a, 6) == pytest.approx(3.95, rel=1e-9)
    spec = SpeculativeSpec(method="eagle", num_speculative_tokens=6, mean_acceptance_length=3.95)
    assert spec.base_rate() == pytest.approx(0.8, abs=2e-3)


def _busy(perf: dict, rate: float, seed: int, blocks: int = 60, **pool):
    spec = {"method": "mtp", "num_speculative_tokens": 1 + seed % 4, "acceptance_rate": rate,
            "answer_acceptance_rate": rate / 2, **pool.pop("spec", {})}
    return tiny(pool={"speculative": spec, "num_kv_blocks": blocks, "max_num_batched_tokens": 64,
                      "long_prefill_token_threshold": 24, **pool},
                perf=perf, seed=seed,
                workload={"num_requests": 40, "arrival": {"process": "gamma", "rate_per_s": 20.0, "cv": 3.0},
                          "mix": [{"query_type": "t", "prompt_tokens": {"dist": "uniform", "low": 5, "high": 90},
                                   "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 300},
                                   "answer_tokens": {"dist": "uniform", "low": 1, "high": 40}}]})


PERFS = [{"kind": "linear", "step_overhead_s": 0.01, "per_prefill_token_s": 1e-5, "per_kv_token_s": 1e-7},
         {"kind": "roofline"}]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rate", [0.0, 0.6, 1.0])
def test_fast_forward_equals_exact_steps_and_blocks_conserved(seed, rate):
    data = _busy(PERFS[seed % 2], rate, seed, blocks=40 + 10 * seed)
    sim_ff = Simulation(scenario(data, check_invariants=True))
    sim_ex = Simulation(scenario(data, check_invariants=True, exact_steps=True))
    ff, ex = sim_ff.run(), sim_ex.run()
    check_invariants(sim_ff, ff, 40)  # blocks conserved at every step (rejected positions included)
    check_invariants(sim_ex, ex, 40)
    check_same_results(ff, ex)
    assert (ff.requests["status"] == "completed").all()
    preempted.append(int(ff.requests["num_preemptions"].sum()))


preempted: list[int] = []


def test_some_cases_preempt():
    assert sum(preempted) > 0  # the small caches do preempt (rejected positions then freed with the rest)


def test_budget_truncates_drafts_and_draft_model_validates():
    data = _busy(PERFS[1], 0.8, 3, blocks=400, max_num_seqs=16, max_num_batched_tokens=16,
                 spec={"method": "draft_model", "draft_model": "llama-3.1-8b", "num_speculative_tokens": 4})
    data["model"] = "llama-3.1-70b"
    data["cluster"]["pools"][0]["tensor_parallel"] = 4
    ff = Simulation(scenario(data, check_invariants=True)).run()
    ex = Simulation(scenario(data, check_invariants=True, exact_steps=True)).run()
    check_same_results(ff, ex)
    with pytest.raises(ScenarioError, match="draft_model"):
        scenario(tiny(pool={"speculative": {"method": "draft_model", "num_speculative_tokens": 2}}))
    with pytest.raises(ScenarioError, match="sync scheduling"):
        scenario(tiny(pool={"speculative": {"method": "mtp", "num_speculative_tokens": 1},
                            "async_scheduling": True}))


def test_speculation_is_faster_at_batch_one_and_drafts_cost_time():
    base = tiny(perf={"kind": "roofline"}, workload={
        "num_requests": 1, "arrival": {"process": "poisson", "rate_per_s": 1.0},
        "mix": [{"query_type": "t", "prompt_tokens": {"dist": "constant", "value": 100},
                 "reasoning_tokens": {"dist": "constant", "value": 2000},
                 "answer_tokens": {"dist": "constant", "value": 100}}]})
    plain = Simulation(scenario(base)).run().summary["tpot_s_mean"]
    base["cluster"]["pools"][0]["speculative"] = {"method": "eagle", "num_speculative_tokens": 3}
    spec = Simulation(scenario(base)).run().summary["tpot_s_mean"]
    assert spec < plain / 1.8  # a = 0.8, k = 3: 2.95 tokens a step for a few per cent more time
