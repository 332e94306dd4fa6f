"""Layer (c) with answer quality on: the hypothesis invariants of tests/test_invariants.py (KV blocks conserved at
every step, every request recorded exactly once with a status and a reason, simulated time monotone, fast-forward
equal to exact steps) over random small scenarios whose requests also carry budgets, early exit and parallel
samples (forked prompt blocks, preemption of samples, samples stopped by first_finished, reward-model passes), and
trace reuse (whole hits answered once, unforked; step reuse and minted tokens shrinking every sample)."""

from __future__ import annotations

import copy

from helpers import by_id, scenario
from hypothesis import HealthCheck, example, given, settings
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


# Found by hypothesis: under fair share, a user's counter grows with its decodes' tokens during a fast-forwarded
# run, so another user's request may come first at a plan the run skipped (the run now ends before it).
FAIR_SHARE_REORDER = {'cluster': {'kv_transfer': {'bandwidth_bytes_per_s': 50000000000.0, 'latency_s': 0.0},
                                  'pools': [{'async_scheduling': False,
                                             'gpu': 'h100-sxm',
                                             'kv_block_tokens': 2,
                                             'kv_compression': {'budget_tokens': 23,
                                                                'method': 'h2o',
                                                                'window_tokens': 0},
                                             'long_prefill_token_threshold': 0,
                                             'max_num_batched_tokens': 38,
                                             'max_num_seqs': 4,
                                             'name': 'p',
                                             'num_kv_blocks': 39,
                                             'prefix_caching': False,
                                             'replicas': 3,
                                             'reserve_full_isl': True}]},
                      'engine': {'horizon_s': 1000000.0},
                      'model': 'llama-3.1-8b',
                      'name': 'prop',
                      'perf': {'kind': 'calibrated'},
                      'router': 'least_kv',
                      'scheduler': {'kind': 'fair_share', 'output_weight': 2.0, 'prompt_weight': 1.0},
                      'seed': 638,
                      'slo': {'ttft_s': 1.0},
                      'workload': {'arrival': {'cv': 0.3333333333333333,
                                               'process': 'gamma',
                                               'rate_per_s': 45.05939217829719},
                                   'mix': [{'answer_tokens': {'dist': 'uniform', 'high': 8, 'low': 1},
                                            'concepts': {'num_concepts': 2},
                                            'early_exit': {'probe_every_tokens': 15, 'probe_tokens': 0},
                                            'parallel': {'aggregate': 'majority', 'n': 5},
                                            'prompt_tokens': {'dist': 'uniform', 'high': 16, 'low': 1},
                                            'quality': {'difficulty': 'math500'},
                                            'query_type': 'q',
                                            'reasoning_tokens': {'dist': 'uniform', 'high': 53, 'low': 0},
                                            'system_prompt_tokens': 0}],
                                   'num_requests': 22,
                                   'num_users': 2,
                                   'prefix_unit_tokens': 16,
                                   'trace_cache': {'false_hit_rate': 0.3,
                                                   'kind': 'exact',
                                                   'lookup_latency_s': 0.01}}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(quality_scenarios())
@example(FAIR_SHARE_REORDER)
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
