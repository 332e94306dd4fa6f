"""The step plan on hand-built states (no SimPy): vLLM V1's schedule() rule by rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import req

import simserve
from simserve.engine import KvBlockPool, Planner, PlannerConfig
from simserve.engine.kv import NO_EXTENTS
from simserve.engine.planner import NO_CHUNKS, NO_REQUESTS, StepPlan
from simserve.schedulers import Fcfs


def planner(blocks=100, block=4, seqs=8, budget=10, **options) -> Planner:
    cfg = PlannerConfig(max_num_seqs=seqs, max_num_batched_tokens=budget, block_tokens=block, **options)
    return Planner(cfg, KvBlockPool(blocks, block, prefix_caching=False), Fcfs())


def chunks(plan):
    return [(r.request_id, c) for r, c, _ in plan.chunks]


def test_long_prefill_threshold_caps_chunks_in_running_order_and_leaves_budget_to_later_requests():
    p = planner(budget=10, long_prefill_token_threshold=3)
    for i in range(3):
        p.waiting.push(req(i, 0.0, 8, 0, 2))
    assert chunks(p.schedule()) == [(0, 3), (1, 3), (2, 3)]
    assert chunks(p.schedule()) == [(0, 3), (1, 3), (2, 3)]  # running first, in admission order
    plan = p.schedule()
    assert chunks(plan) == [(0, 2), (1, 2), (2, 2)] and [r.request_id for r in plan.sampled] == [0, 1, 2]
    assert p.decodes.n == 3 and not p.prefilling


def test_the_threshold_is_ignored_when_a_request_is_alone():
    p = planner(budget=10, long_prefill_token_threshold=3)
    p.waiting.push(req(0, 0.0, 8, 0, 2))
    assert chunks(p.schedule()) == [(0, 8)]


def test_a_waiting_request_is_admitted_only_if_its_whole_prompt_fits_in_free_blocks():
    p = planner(blocks=4, block=4, budget=64)
    p.waiting.push(req(0, 0.0, 12, 0, 1))  # 3 blocks
    p.waiting.push(req(1, 0.0, 8, 0, 1))  # 2 blocks: a first chunk would fit in the 1 free block, the prompt not
    plan = p.schedule()
    assert chunks(plan) == [(0, 12)] and len(p.waiting) == 1 and p.kv.free_blocks == 1


def test_with_reserve_full_isl_off_a_first_chunk_that_fits_is_enough():
    p = planner(blocks=4, block=4, budget=64, reserve_full_isl=False)
    p.waiting.push(req(0, 0.0, 12, 0, 1))
    p.waiting.push(req(1, 0.0, 8, 0, 1))
    assert chunks(p.schedule()) == [(0, 12)]  # the budget covers request 1's whole prompt: 2 blocks > 1 free
    q = planner(blocks=4, block=4, budget=16, reserve_full_isl=False)
    q.waiting.push(req(0, 0.0, 12, 0, 1))
    q.waiting.push(req(1, 0.0, 8, 0, 1))
    assert chunks(q.schedule()) == [(0, 12), (1, 4)]  # a 4-token first chunk needs 1 block: admitted


def test_without_chunked_prefill_a_prompt_larger_than_the_budget_left_waits():
    p = planner(budget=10, chunked_prefill=False)
    p.waiting.push(req(0, 0.0, 6, 0, 3))
    p.waiting.push(req(1, 0.0, 6, 0, 3))
    assert chunks(p.schedule()) == [(0, 6)]  # 4 tokens left: request 1 (6) is not split
    q = planner(budget=10)
    q.waiting.push(req(0, 0.0, 6, 0, 3))
    q.waiting.push(req(1, 0.0, 6, 0, 3))
    assert chunks(q.schedule()) == [(0, 6), (1, 4)]


def test_when_blocks_run_out_the_newest_running_request_is_preempted_and_nothing_is_admitted():
    p = planner(blocks=4, block=4, budget=64)
    p.waiting.push(req(0, 0.0, 8, 0, 20))
    p.waiting.push(req(1, 0.0, 8, 0, 20))
    p.schedule()  # both prefill: 4 blocks, both sample a first token
    assert p.decodes.n == 2 and p.kv.free_blocks == 0
    p.waiting.push(req(2, 0.0, 1, 0, 1))
    plan = p.schedule()  # request 0's 9th token needs a 3rd block: request 1 (newest) is preempted
    assert [r.request_id for r in plan.preempted] == [1] and not plan.admitted
    victim = plan.preempted[0]
    assert victim.computed_tokens == 0 and victim.num_preemptions == 1 and victim.generated_tokens == 1
    assert p.waiting.peek() is victim  # back at the front
    assert plan.num_decodes == 1 and p.decodes.n == 1
    p.check()


def test_async_a_request_whose_last_token_is_in_flight_is_skipped_but_keeps_its_slot_until_finished():
    p = planner(seqs=2, budget=64, async_scheduling=True)
    a = req(0, 0.0, 4, 0, 2)
    p.waiting.push(a)
    first = p.schedule()  # prefill + first token (in flight)
    assert first.sampled == [a]
    second = p.schedule()  # decode: the last token is sampled (in flight)
    assert second.finishing == [a]
    p.waiting.push(req(1, 0.0, 4, 0, 1))
    p.waiting.push(req(2, 0.0, 4, 0, 1))
    third = p.schedule()  # before the second step's outputs: a is skipped, still holds a running slot
    assert third.num_decodes == 0 and [r.request_id for r, _, _ in third.chunks] == [1]
    p.finish(a)
    assert p.num_running == 1
    p.check()


def test_a_plan_gets_its_own_list_on_its_first_item_and_the_shared_empty_ones_stay_empty():
    """Plans start with shared empty lists (an empty list made and freed per plan cost more than the checks); each
    `add_*` gives the plan its own list on its first item, so one plan's items never show in another's."""
    a, b, c = req(0, 0.0, 8, 0, 2), req(1, 0.0, 8, 0, 2), req(2, 0.0, 8, 0, 2)
    adds = {"chunks": lambda p, r: p.add_chunk(r, 3, 1), "preempted": StepPlan.add_preempted,
            "admitted": StepPlan.add_admitted, "sampled": StepPlan.add_sampled,
            "reasoning_done": StepPlan.add_reasoning_done, "finishing": StepPlan.add_finishing}
    for name, add in adds.items():
        first, second, untouched = StepPlan(), StepPlan(), StepPlan()
        add(first, a)
        add(second, b)
        add(first, c)
        want = [(a, 3, 1), (c, 3, 1)] if name == "chunks" else [a, c]
        assert getattr(first, name) == want, name
        assert len(getattr(second, name)) == 1 and getattr(untouched, name) == [], name
        assert getattr(untouched, name) is (NO_CHUNKS if name == "chunks" else NO_REQUESTS)
    assert NO_REQUESTS == [] and NO_CHUNKS == []


@pytest.mark.parametrize("path", ["bench/blis/blis-speed.yaml", "scenarios/deepseek-r1-mtp.yaml",
                                  "scenarios/disaggregated.yaml", "scenarios/reasoning-serving/kv-compression.yaml",
                                  "scenarios/reasoning-serving/scheduler-mix.yaml",
                                  "scenarios/test-time-compute/parallel-best-of-n.yaml",
                                  "scenarios/mooncake-replay.yaml"])
def test_runs_leave_the_shared_empty_lists_of_plans_empty(path):
    """Every way a run fills a plan (admissions, chunks, preemptions, chained preempting plans, speculative
    decoding, disaggregated hand-offs, reasoning ends, finishes) goes through `add_*`, and prefix-cache lookups
    that hit make their own list: nothing lands in the empty lists plans and lookups share."""
    root = Path(__file__).resolve().parent.parent
    results = simserve.run(simserve.load_scenario(root / path, ["workload.num_requests=300"]))
    assert results.summary["num_completed"] > 0
    assert NO_REQUESTS == [] and NO_CHUNKS == [] and NO_EXTENTS == []
