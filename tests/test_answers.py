"""Answers at serve time (simserve/answers.py): parallel samples run in the engine and one record per request;
time to answer when the aggregation can decide; budgets and early exit never add reasoning or KV time;
fast-forward equals exact steps with every lever on."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import by_id, req, scenario, tiny

from simserve import Simulation
from simserve.quality import Answer, Draws, ParallelSpec


def answer_of(reasoning: list[int], correct: list[bool], *, aggregate: str = "majority", m: int = 1,
              reward_pool: str | None = None, score: list[float] | None = None,
              answer_id: list[int] | None = None) -> Answer:
    """A hand-made question: its samples' reasoning tokens and correctness (no probes)."""
    n = len(reasoning)
    row = lambda x, dtype=float: np.asarray([x], dtype)  # noqa: E731
    draws = Draws(
        difficulty=np.zeros(1, np.int64), natural_tokens=row(reasoning, np.int64),
        reasoning_tokens=row(reasoning, np.int64), probe_tokens=np.zeros((1, n), np.int64),
        p_correct=row([0.5] * n), correct=row(correct, bool),
        answer_id=row(answer_id if answer_id is not None else [0 if c else 1 for c in correct], np.int64),
        score=row(score if score is not None else [float(c) for c in correct]), tiebreak=row(np.linspace(0, 1, n)),
        exited=np.zeros((1, n), bool), cut=np.zeros((1, n), bool))
    par = ParallelSpec(n=n, aggregate=aggregate, m=m, reward_pool=reward_pool) if n > 1 or reward_pool else None
    return draws.answer(0, SimpleNamespace(parallel=par, n=n))  # type: ignore[arg-type]


def quality_tiny(**pool):
    data = tiny(pool)
    data["workload"]["mix"][0]["quality"] = {}
    return data


def run_requests(data, requests, **engine):
    sim = Simulation(scenario(data, check_invariants=True, **engine))
    return sim, sim.run(requests)


def test_samples_run_side_by_side_and_the_request_is_one_row_decided_when_the_last_ends():
    # Two samples (reasoning 3 and 7 tokens) of one request finish exactly when the same two sequences run as two
    # plain requests do; the request is one row, answered when the second sample ends.
    data = quality_tiny()
    parent = req(0, 0.0, 32, 7, 1)
    parent.answer = answer_of([3, 7], [True, True])
    _, res = run_requests(data, [parent])
    _, plain = run_requests(tiny(), [req(0, 0.0, 32, 3, 1), req(1, 0.0, 32, 7, 1)])
    rows, two = res.requests, by_id(plain.requests)
    # The samples share the prompt's first full block (vLLM computes a prompt's last token, so of 32 tokens = 2
    # blocks the second sample hits 1): 32 + 16 prompt tokens computed instead of 64 (the step time here does not
    # depend on prefill tokens, so the timelines agree).
    assert res.replicas["prefill_tokens"].sum() == 32 + 16 and plain.replicas["prefill_tokens"].sum() == 64
    assert len(rows) == 1 and rows["num_samples"][0] == 2 and rows["status"][0] == "completed"
    assert rows["finish_s"][0] == two["finish_s"].max()
    assert rows["time_to_answer_s"][0] == pytest.approx(two["finish_s"].max())
    assert rows["first_token_s"][0] == two["first_token_s"].min()
    assert rows["generated_tokens"][0] == two["generated_tokens"].sum() == 3 + 7 + 2
    assert rows["correct"][0] == 1 and res.summary["accuracy"] == 1.0 and res.summary["num_correct"] == 1


@pytest.mark.parametrize("ids, right", [([0, 1, 1], False), ([0, 0, 1], True), ([0, 1, 2], True),
                                        ([2, 1, 0], False)])
def test_the_plurality_decides_and_ties_go_to_the_smallest_tiebreak_key(ids, right):
    # Tiebreak keys rise with the sample index: in a three-way tie the first sample's answer wins.
    data = quality_tiny()
    parent = req(0, 0.0, 16, 4, 1)
    parent.answer = answer_of([4, 4, 4], [i == 0 for i in ids], answer_id=ids)
    _, res = run_requests(data, [parent])
    assert res.requests["correct"][0] == int(right)


def test_best_of_n_scores_every_sample_on_the_reward_pool_and_answers_when_scores_are_in():
    data = quality_tiny()
    data["cluster"]["pools"].append({"name": "prm", "gpu": "h100-sxm", "replicas": 1})
    data["workload"]["mix"][0]["parallel"] = {"n": 2, "aggregate": "best_of_n", "reward_pool": "prm"}
    parent = req(0, 0.0, 32, 7, 1)
    parent.answer = answer_of([3, 7], [False, True], aggregate="best_of_n", reward_pool="prm", score=[0.1, 2.0])
    sim, res = run_requests(data, [parent])
    row = res.requests.iloc[0]
    segs = res.replicas
    prm = segs[(segs.pool == "prm") & (segs.num_steps > 0)]
    # One prefill pass per sample over prompt + sample output (32 + 3 + 1 and 32 + 7 + 1 tokens), after both end;
    # the passes share the prompt's two full blocks (a fork), so the second computes only its 8 own tokens.
    assert prm["prefill_tokens"].sum() == (32 + 4) + 8
    solver_end = segs[(segs.pool == "main") & (segs.num_steps > 0)]["end_s"].max()
    assert prm["start_s"].min() >= solver_end
    assert row["finish_s"] == pytest.approx(prm["end_s"].max())
    assert row["correct"] == 1 and row["pool"] == "main"
    assert all(r.kv.used_blocks == 0 for r in sim.replicas)


def test_a_request_of_samples_that_all_fail_is_rejected_with_a_reason():
    data = quality_tiny(max_model_len_tokens=20)
    parent = req(0, 0.0, 16, 30, 1)
    parent.answer = answer_of([30, 30], [True, True])
    _, res = run_requests(data, [parent])
    row = res.requests.iloc[0]
    assert row["status"] == "rejected" and row["reason"].startswith("no sample completed: needs")
    assert row["correct"] == -1


def lever_scenario(levers: dict, n: int = 30, rate: float = 0.05) -> dict:
    data = tiny({"max_num_seqs": 4, "num_kv_blocks": 400}, perf={"kind": "roofline"})
    data["workload"] = {"num_requests": n, "arrival": {"process": "poisson", "rate_per_s": rate},
                        "mix": [{"query_type": "math_word", "prompt_tokens": {"dist": "constant", "value": 40},
                                 "reasoning_tokens": {"dist": "lognormal", "mean": 300, "cv": 0.8},
                                 "answer_tokens": {"dist": "constant", "value": 8}, "quality": {}, **levers}]}
    return data


@pytest.mark.parametrize("levers", [
    {"max_reasoning_tokens": 150},
    {"early_exit": {"probe_every_tokens": 50, "probe_tokens": 0}},
    {"max_reasoning_tokens": 200, "early_exit": {"probe_every_tokens": 40, "probe_tokens": 0}},
    {"parallel": {"n": 3}, "max_reasoning_tokens": 150},
])
def test_budgets_and_early_exit_never_add_reasoning_tokens_or_kv_time(levers):
    # Same seed, same questions (the quality stream draws the same numbers with or without a lever). One request
    # at a time (arrivals far apart), so each request's time holding KV is its own.
    base_levers = {"parallel": levers["parallel"]} if "parallel" in levers else {}
    _, base = run_requests(lever_scenario(base_levers), None)
    _, cut = run_requests(lever_scenario(levers), None)
    a, b = by_id(base.requests), by_id(cut.requests)
    assert (b["reasoning_tokens_spent"] <= a["reasoning_tokens_spent"]).all()
    assert (b["generated_tokens"] <= a["generated_tokens"]).all()
    assert (b["e2e_s"] <= a["e2e_s"] + 1e-12).all()
    assert (b["reasoning_tokens_spent"] < a["reasoning_tokens_spent"]).any()  # the lever did something
    kv_time = lambda res: float((res.replicas.kv_blocks_mean * (res.replicas.end_s - res.replicas.start_s)).sum())  # noqa: E731
    assert kv_time(cut) <= kv_time(base)


def test_early_exit_probes_cost_tokens_but_never_reasoning():
    _, base = run_requests(lever_scenario({}), None)
    _, probed = run_requests(lever_scenario({"early_exit": {"probe_every_tokens": 50, "probe_tokens": 8}}), None)
    a, b = by_id(base.requests), by_id(probed.requests)
    assert (b["reasoning_tokens_spent"] <= a["reasoning_tokens_spent"]).all()
    assert (b["probe_tokens"] == 8 * (b["reasoning_tokens_spent"] // 50)).all()
    assert (b["generated_tokens"] == b["reasoning_tokens_spent"] + b["probe_tokens"] + 8).all()


@pytest.mark.parametrize("levers", [
    {"max_reasoning_tokens": 200, "early_exit": {"probe_every_tokens": 40}, "parallel": {"n": 4}},
    {"early_exit": {"probe_every_tokens": 64, "probe_tokens": 4}, "parallel": {"n": 3, "aggregate": "best_of_n",
                                                                              "reward_pool": "prm"}},
])
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_fast_forward_equals_exact_steps_with_every_lever_on(levers, async_scheduling):
    data = lever_scenario(levers, n=40, rate=2.0)
    pool = data["cluster"]["pools"][0]
    pool.update(async_scheduling=async_scheduling, num_kv_blocks=50, max_num_seqs=6)
    if "parallel" in levers and levers["parallel"].get("reward_pool"):
        data["cluster"]["pools"].append({**copy.deepcopy(pool), "name": "prm"})
    _, ff = run_requests(data, None)
    _, ex = run_requests(data, None, exact_steps=True)
    a, b = by_id(ff.requests), by_id(ex.requests)
    assert ff.summary["num_preemptions"] > 0  # the KV is tight enough to preempt
    for col in ("status", "generated_tokens", "correct", "num_preemptions", "reasoning_tokens_spent"):
        assert list(a[col]) == list(b[col]), col
    for col in ("first_token_s", "reasoning_end_s", "finish_s"):
        assert np.array_equal(a[col], b[col], equal_nan=True), col  # to the last bit
    assert ff.summary["accuracy"] == ex.summary["accuracy"]
    assert ff.summary["num_events"] < ex.summary["num_events"]


def test_summary_prices_right_answers():
    _, res = run_requests(lever_scenario({"parallel": {"n": 2}}), None)
    s, rows = res.summary, res.requests
    assert s["num_correct"] == int((rows["correct"] == 1).sum()) > 0
    assert s["accuracy"] == s["num_correct"] / s["num_answered"]
    assert s["usd_per_correct_answer"] == pytest.approx(s["cost_usd"] / s["num_correct"])
    assert s["tokens_per_correct_answer"] == pytest.approx(rows["generated_tokens"].sum() / s["num_correct"])
    assert set(rows["num_samples"]) == {2} and sorted(rows["request_id"]) == list(range(30))  # no ids for samples


@pytest.mark.parametrize("entry, needle", [
    ({"parallel": {"n": 4, "aggregate": "best_of_n"}}, "workload.mix.0.parallel: aggregate best_of_n needs "
                                                       "'reward_pool'"),
    ({"parallel": {"n": 2, "aggregate": "best_of_n", "reward_pool": "nope"}},
     "workload.mix.0.parallel.reward_pool: no pool named 'nope'"),
    ({"parallel": {"n": 2, "aggregate": "best_of_n", "reward_pool": "main"}},
     "workload.mix.0.parallel.reward_pool: every pool would run the reward model"),
    ({"parallel": {"n": 2, "m": 3, "aggregate": "first_finished"}}, "m (3) must be at most n (2)"),
    ({"quality": {"curve": "nope/none"}}, "workload.mix.0.quality: unknown curve 'nope/none'"),
    ({"quality": {"pass_at_1": 0.5, "no_thinking_accuracy": 0.6}}, "pass_at_1 (0.5) must lie between"),
    ({"quality": {"pass_at_1": 1.5}}, "workload.mix.0.quality.pass_at_1"),
    ({"max_reasoning_tokens": 0}, "workload.mix.0.max_reasoning_tokens"),
    ({"early_exit": {"probe_every_tokens": 100, "typo": 1}}, "workload.mix.0.early_exit.typo"),
])
def test_bad_quality_settings_name_the_field(entry, needle):
    from simserve import ScenarioError, parse_scenario

    data = tiny()
    data["workload"]["mix"][0].update(entry)
    with pytest.raises(ScenarioError) as err:
        parse_scenario(data, "s.yaml")
    assert needle in str(err.value), str(err.value)


def test_the_quality_command_lists_the_shipped_defaults(capsys):
    from simserve.cli import main

    assert main(["quality", "--model", "r1-distill-qwen-7b"]) == 0
    out = capsys.readouterr().out
    assert "math_word" in out and "92.8%" in out and "qwen3-235b-a22b/aime24" in out
    assert main(["quality", "--model", "nope"]) == 2
    assert "no shipped defaults for 'nope'" in capsys.readouterr().err


def test_summary_json_groups_latency_by_difficulty_when_quality_is_modelled():
    from simserve.output import group_tables

    _, res = run_requests(lever_scenario({}), None)
    by = group_tables(res)["by_difficulty"]
    assert sum(row["num_requests"] for row in by.values()) == 30 and set(by) <= {"1", "2", "3", "4", "5"}
    _, plain = run_requests(tiny(), None)
    assert "by_difficulty" not in group_tables(plain)
