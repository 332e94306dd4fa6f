"""Layer (c) with answer quality on: the hypothesis invariants of tests/test_invariants.py (KV blocks conserved at
every step, every request recorded exactly once with a status and a reason, simulated time monotone, fast-forward
equal to exact steps) over random small scenarios whose requests also carry budgets, early exit and parallel
samples (forked prompt blocks, preemption of samples, samples stopped by first_finished, reward-model passes), and
trace reuse (whole hits answered once, unforked; step reuse and minted tokens shrinking every sample)."""

from __future__ import annotations

import copy

from helpers import by_id, scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_invariants import check_invariants, check_same_results, scenarios

from simserve import Simulation


@st.composite
def quality_scenarios(draw):
    data = draw(scenarios())
    data["workload"]["mix"] = data["workload"]["mix"][:1]  # one query type, with answer quality
    entry = data["workload"]["mix"][0]
    entry["quality"] = {"difficulty": draw(st.sampled_from(["none", "math500"]))}
    if draw(st.booleans()):
        entry["max_reasoning_tokens"] = draw(st.integers(1, 60))
    if draw(st.booleans()):
        entry["early_exit"] = {"probe_every_tokens": draw(st.integers(1, 20)),
                               "probe_tokens": draw(st.sampled_from([0, 1, 3]))}
    aggregate = draw(st.sampled_from(["majority", "first_finished", "best_of_n", None]))
    if aggregate is not None:
        n = draw(st.integers(1, 5))
        par: dict = {"n": n, "aggregate": aggregate}
        if aggregate == "first_finished":
            par["m"] = draw(st.integers(1, n))
        if aggregate == "best_of_n":
            pools = data["cluster"]["pools"]
            reward = {**copy.deepcopy(pools[0]), "name": "prm", "role": "both", "replicas": 1}
            pools.append(reward)
            par["reward_pool"] = "prm"
        entry["parallel"] = par
    reuse = draw(st.sampled_from([None, "exact", "semantic", "step", "minted"]))
    if reuse is not None:  # trace reuse: a whole hit answers once, unforked; step and minted shrink every sample
        entry["concepts"] = {"num_concepts": draw(st.integers(1, 4))}
        if reuse == "minted":
            data["workload"]["minting"] = {"min_count": 1, "job_every_s": draw(st.sampled_from([0.5, 5.0]))}
        else:
            data["workload"]["trace_cache"] = {"kind": reuse, "false_hit_rate": 0.3,
                                               "lookup_latency_s": draw(st.sampled_from([0.0, 0.01]))}
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quality_scenarios())
def test_invariants_and_fast_forward_equals_exact_steps_with_answer_quality(data):
    sim_ff = Simulation(scenario(data, check_invariants=True))
    sim_ex = Simulation(scenario(data, check_invariants=True, exact_steps=True))
    ff, ex = sim_ff.run(), sim_ex.run()
    n = data["workload"]["num_requests"]
    check_invariants(sim_ff, ff, n)
    check_invariants(sim_ex, ex, n)
    a, b = by_id(ff.requests), by_id(ex.requests)
    done = a[a.status == "completed"]
    assert set(done["correct"]) <= {0, 1} and (a.loc[a.status != "completed", "correct"] == -1).all()
    assert (done["reasoning_tokens_spent"] + done["probe_tokens"] <= done["reasoning_tokens"]).all()
    check_same_results(ff, ex)
    for col in ("correct", "num_samples"):
        assert list(a[col]) == list(b[col]), col
