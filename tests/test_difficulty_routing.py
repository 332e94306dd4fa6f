"""Difficulty routing (router kind by_difficulty) and pools that answer without thinking: each question goes to the
pool of the class a classifier of set quality predicts, is answered with that pool's model and budget (the same
question drawn for every model from the same random numbers), and the run reports routing accuracy and the
accuracy lost against the reference pool."""

from __future__ import annotations

import copy

import pytest
from helpers import by_id, scenario

from simserve import ScenarioError, Simulation, parse_scenario

BASE = {
    "name": "route", "seed": 5, "model": "r1-distill-qwen-7b",
    "cluster": {"pools": [{"name": "big", "gpu": "h100-sxm", "replicas": 1},
                          {"name": "fast", "gpu": "h100-sxm", "replicas": 1, "thinking": False}]},
    "perf": {"kind": "roofline"},
    "router": {"kind": "by_difficulty", "classes": {"easy": [1, 2, 3], "hard": [4, 5]},
               "table": {"easy": "fast", "hard": "big"}},
    "workload": {"num_requests": 400, "arrival": {"process": "poisson", "rate_per_s": 2.0},
                 "mix": [{"query_type": "math_word", "prompt_tokens": {"dist": "constant", "value": 50},
                          "reasoning_tokens": {"dist": "lognormal", "mean": 400, "cv": 0.5},
                          "answer_tokens": {"dist": "constant", "value": 20}, "quality": {}}]},
}


def run(data):
    return Simulation(scenario(data, check_invariants=True)).run()


def variant(**router):
    data = copy.deepcopy(BASE)
    data["router"].update(router)
    return data


def test_a_perfect_classifier_sends_each_level_to_its_class_pool_and_the_fast_pool_does_not_think():
    res = run(BASE)
    rows = by_id(res.requests)
    assert res.summary["routing_accuracy"] == 1.0
    easy, hard = rows[rows.difficulty <= 3], rows[rows.difficulty >= 4]
    assert set(easy["pool"]) == {"fast"} and set(hard["pool"]) == {"big"}
    assert (easy["reasoning_tokens_spent"] == 0).all() and (hard["reasoning_tokens_spent"] > 0).all()
    assert res.summary["routed_by_class"] == {"easy": len(easy), "hard": len(hard)}
    assert res.summary["accuracy_lost"] > 0  # thinking on every question would have been more accurate
    # The same questions (same ids, same random numbers) answered with thinking: each easy one had a higher success
    # rate there, and each hard one the same.
    thinking = by_id(run(variant(table={"easy": "big", "hard": "big"})).requests)
    assert (thinking.loc[easy.index, "p_correct"] > easy["p_correct"]).all()
    assert (thinking.loc[hard.index, "p_correct"] == hard["p_correct"]).all()


def test_routing_everything_to_the_reference_pool_loses_nothing_and_the_draws_are_coupled():
    res = run(variant(table={"easy": "big", "hard": "big"}))
    assert res.summary["accuracy_lost"] == 0.0
    assert res.summary["accuracy_reference"] == res.summary["accuracy"]


def test_a_weak_classifier_is_right_as_often_as_it_says():
    res = run(variant(classifier_accuracy=0.6))
    assert res.summary["routing_accuracy"] == pytest.approx(0.6, abs=0.06)  # 400 draws: 2.5 standard errors
    rows = res.requests
    assert {"fast", "big"} <= set(rows.loc[rows.difficulty >= 4, "pool"])  # some hard questions misrouted


def test_a_confusion_matrix_and_a_class_budget():
    data = variant(confusion={"easy": {"easy": 1.0, "hard": 0.0}, "hard": {"easy": 0.0, "hard": 1.0}},
                   budgets={"hard": 150}, table={"easy": "big", "hard": "big"})
    rows = run(data).requests
    hard, easy = rows[rows.difficulty >= 4], rows[rows.difficulty <= 3]
    assert (hard["reasoning_tokens_spent"] <= 150).all() and (easy["reasoning_tokens_spent"] > 150).any()


def test_a_pool_without_thinking_serves_no_reasoning_even_without_quality():
    data = copy.deepcopy(BASE)
    del data["workload"]["mix"][0]["quality"]
    data["router"] = "round_robin"
    rows = run(data).requests
    assert (rows.loc[rows.pool == "fast", "reasoning_tokens"] == 0).all()
    assert (rows.loc[rows.pool == "big", "reasoning_tokens"] > 0).all()


@pytest.mark.parametrize("router, needle", [
    ({"table": {"easy": "fast"}}, "table: no pool for classes ['hard']"),
    ({"table": {"easy": "fast", "hard": "nope"}}, "router.table.hard: pool 'nope' is not in cluster.pools"),
    ({"classes": {"easy": [1, 2], "hard": [2, 5]}}, "a difficulty level is in two classes"),
    ({"confusion": {"easy": {"easy": 0.5}, "hard": {"hard": 1.0}}}, "confusion.easy: probabilities"),
    ({"budgets": {"medium": 100}}, "budgets: unknown classes ['medium']"),
])
def test_bad_difficulty_routers_name_the_field(router, needle):
    with pytest.raises(ScenarioError) as err:
        parse_scenario(variant(**router), "s.yaml")
    assert needle in str(err.value), str(err.value)
