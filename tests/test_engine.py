"""Layer (a): exact timelines of tiny deterministic cases, in fast-forward and step-by-step modes."""

from __future__ import annotations

import pytest
from helpers import req, scenario, tiny

from simserve import Simulation

LINEAR = {"kind": "linear", "step_overhead_s": 0.01, "per_prefill_token_s": 0.0001, "per_decode_seq_s": 0.001}


def rows(results):
    return {int(r.request_id): r for r in results.requests.itertuples()}


@pytest.mark.parametrize("exact", [False, True])
def test_two_request_timeline(exact):
    # R0 prefills 100 tokens alone: 0.01 + 100 x 0.0001 = 0.020 s -> first token at 0.020.
    # R1 arrives at 0.0125 (mid-step) and is admitted at 0.020 with R0's decode:
    #   0.01 + 50 x 0.0001 + 1 x 0.001 = 0.016 -> R1's first token and R0's 2nd at 0.036.
    # Both decode: 0.01 + 2 x 0.001 = 0.012 -> 0.048: R0 has 3 tokens, R1 has 2 = all of its output.
    # R0 alone: 0.011 per step -> tokens 4 and 5 at 0.059 and 0.070.
    sc = scenario(tiny(perf=LINEAR), exact_steps=exact, check_invariants=True)
    res = Simulation(sc).run([req(0, 0.0, 100, 3, 2), req(1, 0.0125, 50, 1, 1)])
    r = rows(res)
    assert r[0].first_token_s == pytest.approx(0.020, abs=1e-12)
    assert r[0].finish_s == pytest.approx(0.070, abs=1e-12)
    assert r[1].first_token_s == pytest.approx(0.036, abs=1e-12)
    assert r[1].finish_s == pytest.approx(0.048, abs=1e-12)
    assert r[1].ttft_s == pytest.approx(0.0235, abs=1e-12)
    assert r[0].tpot_s == pytest.approx((0.070 - 0.020) / 4, abs=1e-12)
    assert r[0].e2e_s == pytest.approx(0.070, abs=1e-12)
    assert list(res.requests["status"]) == ["completed", "completed"]
    assert res.summary["makespan_s"] == pytest.approx(0.070, abs=1e-12)
    assert res.summary["output_tokens"] == 7


@pytest.mark.parametrize("exact", [False, True])
def test_preemption_by_recompute_timeline(exact):
    # 4 blocks of 4 tokens. Both requests (prompt 4, output 8) fit at first; at 0.05 both need a third block and
    # only the older can have it: R1 is preempted (keeps its 5 tokens), waits, and is readmitted when R0
    # finishes at 0.08, recomputing 4 + 5 = 9 tokens in one step (0.09), then decodes to 8 tokens at 0.11.
    pool = {"kv_block_tokens": 4, "num_kv_blocks": 4}
    sc = scenario(tiny(pool=pool), exact_steps=exact, check_invariants=True)
    res = Simulation(sc).run([req(0, 0.0, 4, 7, 1), req(1, 0.0, 4, 7, 1)])
    r = rows(res)
    assert r[0].first_token_s == pytest.approx(0.01, abs=1e-12)
    assert r[0].finish_s == pytest.approx(0.08, abs=1e-12)
    assert r[0].num_preemptions == 0
    assert r[1].first_token_s == pytest.approx(0.01, abs=1e-12)
    assert r[1].finish_s == pytest.approx(0.11, abs=1e-12)
    assert r[1].num_preemptions == 1
    assert res.summary["num_preemptions"] == 1
    assert res.summary["kv_utilization_max"] == 1.0


def test_fast_forward_uses_few_events():
    # One request with 10,000 output tokens: a handful of events, not one per token.
    sc = scenario(tiny())
    res = Simulation(sc).run([req(0, 0.0, 100, 9_999, 1)])
    assert res.requests["finish_s"][0] == pytest.approx(10_000 * 0.01, rel=1e-12)
    assert res.summary["num_events"] <= 5
    exact = Simulation(scenario(tiny(), exact_steps=True)).run([req(0, 0.0, 100, 9_999, 1)])
    assert exact.summary["num_events"] >= 10_000
    assert exact.requests["finish_s"][0] == res.requests["finish_s"][0]  # to the last bit


def test_request_that_cannot_fit_is_rejected_with_reason():
    pool = {"kv_block_tokens": 4, "num_kv_blocks": 4}  # 16 tokens
    res = Simulation(scenario(tiny(pool=pool))).run([req(0, 0.0, 10, 6, 1), req(1, 0.5, 4, 3, 1)])
    r = rows(res)
    assert r[0].status == "rejected" and "17 tokens" in r[0].reason
    assert r[1].status == "completed"
    assert res.summary["num_rejected"] == 1


def test_max_num_seqs_limits_the_batch():
    # max_num_seqs 1: the second request waits for the first to finish (3 steps of 0.01 s each).
    sc = scenario(tiny(pool={"max_num_seqs": 1}))
    res = Simulation(sc).run([req(0, 0.0, 10, 2, 1), req(1, 0.0, 10, 2, 1)])
    r = rows(res)
    assert r[0].finish_s == pytest.approx(0.03, abs=1e-12)
    assert r[1].first_token_s == pytest.approx(0.04, abs=1e-12)
    assert r[1].finish_s == pytest.approx(0.06, abs=1e-12)


def test_chunked_prefill_splits_a_long_prompt():
    # Budget 16 tokens per step: a 40-token prompt takes 3 chunked steps (16 + 16 + 8).
    perf = {"kind": "linear", "step_overhead_s": 0.01, "per_prefill_token_s": 0.001}
    sc = scenario(tiny(pool={"max_num_batched_tokens": 16}, perf=perf))
    res = Simulation(sc).run([req(0, 0.0, 40, 1, 1)])
    r = rows(res)
    assert r[0].first_token_s == pytest.approx(0.026 + 0.026 + 0.018, abs=1e-12)
    assert r[0].finish_s == pytest.approx(0.070 + 0.01, abs=1e-12)


def test_overload_ends_at_the_horizon_and_says_so():
    data = tiny(pool={"max_num_seqs": 1})
    data["workload"] = {"num_requests": 200, "arrival": {"process": "poisson", "rate_per_s": 50.0},
                        "mix": data["workload"]["mix"]}
    res = Simulation(scenario(data, horizon_s=2.0)).run()
    s = res.summary
    assert s["saturated"] is True
    assert s["num_unfinished"] > 0
    assert s["makespan_s"] == pytest.approx(2.0)
    unfinished = res.requests[res.requests.status == "unfinished"]
    assert unfinished["reason"].str.contains("horizon").all()
    assert s["num_completed"] + s["num_unfinished"] + s["num_rejected"] + s["num_not_arrived"] == 200
    assert s["num_requests"] == 200  # every request of the workload is recorded, arrived or not
    assert s["num_not_arrived"] > 0 and s["stopped_at_horizon"] is True


def test_schedule_at_reaches_a_time_no_delay_reaches():
    """SimPy schedules at now + delay; from 1.842082018323207 no delay reaches 6.493300224171503 (now + d jumps from
    ...502 to ...504), and a fast-forwarded run must end exactly at its last step end. A StepEnd's at_s puts
    the event at the absolute time; a time before now is refused."""
    import math

    from simserve.engine.events import Environment, StepEnd, step_end_priority

    now, at = 1.842082018323207, 6.493300224171503
    d = at - now
    assert now + d != at and now + math.nextafter(d, -math.inf) != at  # the two delays around it miss
    env = Environment(initial_time=now)
    seen = []

    def proc():
        yield StepEnd(env, 0.0, step_end_priority(0), at_s=at)
        seen.append(env.now)

    env.process(proc())
    env.run()
    assert seen == [at]
    with pytest.raises(ValueError, match="before now"):
        StepEnd(env, 0.0, step_end_priority(0), at_s=at - 1.0)


def test_the_simpy_state_the_engine_reads_directly_is_simpys_own():
    """The engine reads SimPy's clock as `env._now`, an event's `triggered` as `_value is not PENDING` and `peek()`
    from `env._queue` (simserve/engine/events.py): the values SimPy's own property and method give, at every step
    of a small world with timeouts, a pending event and one triggered later (fails if a SimPy release renames
    them)."""
    from simpy.events import PENDING

    from simserve.engine.events import Environment

    env = Environment()
    later = env.event()
    seen = []

    def proc():
        for d in (0.5, 0.0, 1.25):
            yield env.timeout(d)
            seen.append((env._now, env.now, later._value is not PENDING, later.triggered))
            if env._now > 1.0:
                later.succeed()
                seen.append((env._now, env.now, later._value is not PENDING, later.triggered))

    env.process(proc())
    while env._queue:
        queue = env._queue
        assert (queue[0][0] if queue else float("inf")) == env.peek()
        env.step()
    assert env.peek() == float("inf") and not env._queue
    assert [(a == b, c == d) for a, b, c, d in seen] == [(True, True)] * 4
    assert [s[0] for s in seen] == [0.5, 0.5, 1.75, 1.75] and seen[-1][3]
