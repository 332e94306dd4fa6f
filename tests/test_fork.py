"""Forked samples (parallel sampling) and cancellation: the prompt's full blocks held once by n samples, as vLLM
V1's n child requests share them through the prefix cache, and `Replica.cancel` / `Planner.abort` freeing a
request's KV wherever it is, as vLLM's abort does. Hand-built planner states first, then exact timelines."""

from __future__ import annotations

import math

import pytest
from helpers import req, scenario, tiny

from simserve import Simulation
from simserve.engine import Hooks, KvBlockPool, Planner, PlannerConfig
from simserve.engine.events import Arrival
from simserve.engine.planner import fork_block_key
from simserve.schedulers import Fcfs

C0, CP, CD = 0.01, 0.001, 0.002  # step overhead, per prefill token, per decoding sequence
LINEAR = {"kind": "linear", "step_overhead_s": C0, "per_prefill_token_s": CP, "per_decode_seq_s": CD}


def planner(blocks=100, block=4, seqs=8, budget=64, caching=True, **options) -> Planner:
    cfg = PlannerConfig(max_num_seqs=seqs, max_num_batched_tokens=budget, block_tokens=block, **options)
    return Planner(cfg, KvBlockPool(blocks, block, prefix_caching=caching), Fcfs())


def forked(n, prompt, fork_key=7, first_id=0, answers=None, reasoning=0):
    """n samples of one prompt, arriving together."""
    out = []
    for i in range(n):
        r = req(first_id + i, 0.0, prompt, reasoning, answers[i] if answers else 4)
        r.fork_key = fork_key
        out.append(r)
    return out


def chunks(plan):
    return [(r.request_id, c) for r, c, _ in plan.chunks]


# ----------------------------------------------------------------------------------------------- forks, planner


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_forked_samples_hold_the_prompts_full_blocks_once(n):
    # A 10-token prompt over 4-token blocks: 2 full blocks and a partial one. The first sample computes all 10
    # tokens and caches its 2 full blocks as it is scheduled; the others, admitted in the same schedule(), hit
    # them and compute only the last 2 tokens, in a partial block of their own.
    p = planner()
    samples = forked(n, 10)
    for r in samples:
        p.waiting.push(r)
    plan = p.schedule()
    assert chunks(plan) == [(0, 10)] + [(i, 2) for i in range(1, n)]
    assert [r.prefix_hit_tokens for r in samples] == [0] + [8] * (n - 1)
    first = samples[0].kv
    assert [u.key for u in first.units] == [fork_block_key(7, 0), fork_block_key(7, 1)]
    assert [u.refs for u in first.units] == [n, n]
    assert all(r.kv.units == first.units and r.kv.private_blocks == 1 for r in samples)
    assert p.kv.used_blocks == 2 + n  # the prompt's full blocks once, plus each sample's partial block
    p.check()


def test_without_prefix_caching_each_sample_holds_its_own_copy():
    p = planner(caching=False)
    samples = forked(3, 10)
    for r in samples:
        p.waiting.push(r)
    plan = p.schedule()
    assert chunks(plan) == [(0, 10), (1, 10), (2, 10)]
    assert p.kv.used_blocks == 3 * 3 and all(r.prefix_hit_tokens == 0 and not r.kv.units for r in samples)
    p.check()


def test_a_prompt_of_whole_blocks_leaves_its_last_block_to_each_sample():
    # vLLM computes a prompt's last token even on a full hit: the second sample hits the first block only and
    # recomputes the last one, whose hash it caches again (a second copy, as vLLM keeps).
    p = planner()
    a, b = forked(2, 8)
    p.waiting.push(a)
    p.waiting.push(b)
    assert chunks(p.schedule()) == [(0, 8), (1, 4)]
    assert [u.refs for u in a.kv.units] == [2, 1] and b.kv.units[0] is a.kv.units[0]
    assert b.kv.units[1] is not a.kv.units[1] and p.kv.used_blocks == 3
    p.check()


def test_samples_share_only_with_their_own_fork_and_after_the_prompts_prefix_keys():
    # 8-token prefix units (2 blocks each): the prompt's first unit is a system prompt (key 1) every request
    # shares, its second full unit (key 2) one the forks share too; the fork keys cover the full blocks after them
    # (block 4 of a 22-token prompt: 5 full blocks, and 2 tokens in a sixth).
    p = planner()
    a, b = forked(2, 22, fork_key=5)
    c = forked(1, 22, fork_key=6, first_id=2)[0]
    d = req(3, 0.0, 22, 0, 4)  # not forked: only the prefix keys' units are shared
    for r in (a, b, c, d):
        r.prefix_keys, r.prefix_unit_tokens = (1, 2, 3), 8
        p.waiting.push(r)
    assert a.prefix_keys is not None
    assert p.hold_of(a).chain == [(1, 2), (2, 2), (fork_block_key(5, 4), 1)]
    assert p.hold_of(d).chain == [(1, 2), (2, 2)]
    e = forked(1, 22, fork_key=8, first_id=4)[0]  # a sample without prefix keys: its fork covers every block
    assert p.hold_of(e).chain == [(fork_block_key(8, i), 1) for i in range(5)]
    p.schedule()
    assert [r.prefix_hit_tokens for r in (a, b, c, d)] == [0, 20, 16, 16]
    p.check()


def test_fork_block_keys_never_meet_the_workloads_keys():
    keys = {fork_block_key(f, b) for f in (1, 2, -1, 2**63 - 1, -(2**63)) for b in (0, 1, 2**40)}
    assert len(keys) == 15  # one to one
    assert all(2**64 <= k < 2**129 for k in keys)  # workloads key units with int64s, preempted requests < 0


def test_prefix_hit_tokens_sees_a_siblings_blocks():
    p = planner()
    a, b = forked(2, 10)
    assert p.prefix_hit_tokens(b) == 0
    p.waiting.push(a)
    p.schedule()
    assert p.prefix_hit_tokens(b) == 8
    assert planner(caching=False).prefix_hit_tokens(b) == 0


# ----------------------------------------------------------------------------------------------- abort, planner


def test_abort_a_decoding_sample_frees_its_own_blocks_and_one_reference_to_the_shared_ones():
    p = planner()
    samples = forked(3, 10)
    for r in samples:
        p.waiting.push(r)
    p.schedule()
    p.schedule()  # one decode step each: 11 tokens, still 3 blocks
    assert p.kv.used_blocks == 5 and p.decodes.n == 3
    b = samples[1]
    assert p.abort(b)
    assert p.kv.used_blocks == 4 and p.decodes.n == 2 and b.slot == -1
    assert [u.refs for u in samples[0].kv.units] == [2, 2]
    assert (b.computed_tokens, b.generated_tokens) == (11, 2)  # its progress, written back
    assert not p.abort(b)  # gone: nothing to do
    p.check()
    assert p.abort(samples[0]) and p.abort(samples[2])
    assert p.kv.used_blocks == 0 and p.kv.evictable_blocks == 2  # the prompt's blocks stay cached
    p.check()
    late = forked(1, 10, first_id=9)[0]
    p.waiting.push(late)
    p.schedule()
    assert late.prefix_hit_tokens == 8


def test_abort_a_prefilling_request_keeps_its_computed_full_blocks_cached():
    p = planner(budget=6)
    a = req(0, 0.0, 20, 0, 2)
    a.prefix_keys, a.prefix_unit_tokens = (1, 2, 3, 4, 5), 4
    p.waiting.push(a)
    p.schedule()  # 6 of 20 tokens: block 1 full and cached, block 2 partial
    assert p.prefilling == [a] and p.kv.used_blocks == 2
    assert p.abort(a)
    assert not p.prefilling and p.kv.used_blocks == 0 and p.kv.cached_blocks(1) == 1 and p.kv.cached_blocks(2) == 0
    p.check()


def test_abort_a_waiting_or_preempted_request_only_takes_it_out_of_the_queue():
    p = planner(blocks=4, block=4)
    a, b = req(0, 0.0, 8, 0, 20), req(1, 0.0, 8, 0, 20)
    p.waiting.push(a)
    p.waiting.push(b)
    p.schedule()
    plan = p.schedule()  # a needs a third block: b (newest) is preempted, back at the front of the queue
    assert plan.preempted == [b]
    c = req(2, 0.0, 4, 0, 1)
    p.waiting.push(c)
    used = p.kv.used_blocks
    assert p.abort(b) and p.abort(c)
    assert not p.waiting and p.kv.used_blocks == used
    p.check()


def test_abort_a_request_whose_last_token_is_in_flight():
    p = planner(async_scheduling=True)
    a = req(0, 0.0, 4, 0, 1)
    p.waiting.push(a)
    plan = p.schedule()
    assert plan.finishing == [a] and p.handing_off == [a]
    assert p.abort(a) and not p.handing_off and p.kv.used_blocks == 0
    p.check()


def test_abort_refuses_a_request_whose_kv_is_in_transfer():
    p = planner(hand_off_after_prompt=True)
    a = req(0, 0.0, 4, 0, 3)
    p.waiting.push(a)
    p.schedule()
    assert p.hand_off(a)
    assert not p.abort(a) and p.transferring == {0: a} and p.kv.used_blocks == 1
    p.check()


# ----------------------------------------------------------------------------------------------- timelines


class Log(Hooks):
    """Every stage per request, and what a finished sample does to its siblings: cancel them (first of n)."""

    def __init__(self, cancel_siblings=False):
        self.calls = []
        self.cancel_siblings = cancel_siblings
        self.family = []
        self.replica = None
        self.used = []  # (event, used blocks) around each cancel

    def admitted(self, r, replica):
        self.replica = replica
        self.calls.append(("admitted", r.request_id))

    def prompt_done(self, r, replica):
        self.calls.append(("prompt_done", r.request_id, replica.kv.used_blocks))

    def reasoning_done(self, r, replica):
        self.calls.append(("reasoning_done", r.request_id))

    def finished(self, r):
        self.calls.append(("finished", r.request_id, r.status, r.finish_s))
        if self.cancel_siblings and r.status == "completed":
            for s in self.family:
                if s is not r:
                    before = self.replica.kv.used_blocks
                    ok = self.replica.cancel(s)
                    self.used.append((s.request_id, ok, before, self.replica.kv.used_blocks))

    def of(self, i):
        return [c[0] for c in self.calls if c[1] == i]


@pytest.mark.parametrize("caching", [True, False])
@pytest.mark.parametrize("exact", [False, True])
def test_forked_timeline(exact, caching):
    # 3 samples of a 40-token prompt over 16-token blocks (2 full blocks, 8 tokens in a third). With prefix
    # caching the first computes 40 tokens and the others 8 each: 0.01 + 56 x 0.001 = 0.066; they then hold
    # 2 + 3 x 1 blocks. Without it each computes 40: 0.01 + 120 x 0.001 = 0.13, 3 x 3 blocks.
    log = Log()
    sc = scenario(tiny(pool={"prefix_caching": caching}, perf=LINEAR), exact_steps=exact, check_invariants=True)
    res = Simulation(sc, hooks=[log]).run(forked(3, 40, answers=[2, 2, 2]))
    step1 = C0 + (56 if caching else 120) * CP
    used = 5 if caching else 9
    assert [c for c in log.calls if c[0] == "prompt_done"] == [("prompt_done", i, used) for i in range(3)]
    r = res.requests.set_index("request_id")
    assert list(r["prefix_hit_tokens"]) == ([0, 32, 32] if caching else [0, 0, 0])
    assert r["first_token_s"].tolist() == pytest.approx([step1] * 3, abs=1e-12)
    assert r["finish_s"].tolist() == pytest.approx([step1 + C0 + 3 * CD] * 3, abs=1e-12)


@pytest.mark.parametrize("async_", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_first_finished_sample_cancels_its_siblings(exact, async_):
    # 3 samples of a 40-token prompt (answers 2, 5 and 8 tokens): prefill at t1 = 0.066, then decode steps of
    # 0.01 + 3 x 0.002; sample 0 samples its last token at t2 = t1 + 0.016 and its finished hook cancels the
    # others there: each frees its partial block, the last one the prompt's 2 shared blocks too.
    log = Log(cancel_siblings=True)
    samples = forked(3, 40, answers=[2, 5, 8])
    log.family = samples
    pool = {"async_scheduling": async_}
    sc = scenario(tiny(pool=pool, perf=LINEAR), exact_steps=exact, check_invariants=True)
    res = Simulation(sc, hooks=[log]).run(samples)
    t1 = C0 + 56 * CP
    t2 = t1 + C0 + 3 * CD
    assert log.used == [(1, True, 4, 3), (2, True, 3, 0)]
    r = res.requests.set_index("request_id")
    assert list(r["status"]) == ["completed", "cancelled", "cancelled"]
    assert list(r["reason"]) == ["", "cancelled", "cancelled"]
    assert r["finish_s"].tolist() == pytest.approx([t2] * 3, abs=1e-12)
    for i in (1, 2):  # finished once, and nothing after
        assert log.of(i) == ["admitted", "prompt_done", "reasoning_done", "finished"]
        assert r.loc[i, "generated_tokens"] == (3 if async_ else 2)  # async: a third token was in flight
    assert sum(c[0] == "finished" for c in log.calls) == 3
    # Async scheduling planned a third step (the siblings' decodes) before the cancel: its outputs would be
    # dropped, but every request has ended, so the run ends at t2.
    assert res.summary["makespan_s"] == pytest.approx(t2, abs=1e-12)


def test_cancel_is_a_no_op_for_a_sibling_finishing_in_the_same_step():
    log = Log(cancel_siblings=True)
    samples = forked(2, 40, answers=[2, 2])
    log.family = samples
    res = Simulation(scenario(tiny(perf=LINEAR), check_invariants=True), hooks=[log]).run(samples)
    # Sample 1's last token came out with sample 0's: it completes; then it finds sample 0 completed.
    assert log.used == [(1, False, 2 + 1, 2 + 1), (0, False, 0, 0)]
    assert list(res.requests.sort_values("request_id")["status"]) == ["completed", "completed"]
    assert log.of(1) == ["admitted", "prompt_done", "reasoning_done", "finished"]


class CancelAt:
    """Cancel a request at a given time from outside any replica (a SimPy timer)."""

    def __init__(self, sim, r, at_s):
        self.sim, self.r, self.result = sim, r, None
        Arrival(sim.env, at_s).callbacks.append(self)

    def __call__(self, _event):
        self.result = self.sim.replicas[0].cancel(self.r, reason="timer")


@pytest.mark.parametrize("async_", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_a_running_request_cancelled_mid_step_is_cancelled_when_the_step_ends(exact, async_):
    # One request, prompt 10: prefill 0.02, then decode steps of 0.012. A cancel at 0.5001 falls inside the
    # 41st decode step (0.5 to 0.512): the request is cancelled at 0.512, whether stepping one at a time or
    # fast-forwarding (the run is cut there).
    sc = scenario(tiny(pool={"async_scheduling": async_}, perf=LINEAR), exact_steps=exact, check_invariants=True)
    sim = Simulation(sc)
    r = req(0, 0.0, 10, 100, 1)
    timer = CancelAt(sim, r, 0.5001)
    res = sim.run([r])
    assert timer.result is True
    row = res.requests.iloc[0]
    assert (row.status, row.reason) == ("cancelled", "timer")
    assert row.finish_s == pytest.approx(0.02 + 41 * 0.012, abs=1e-9)
    assert sim.replicas[0].kv.used_blocks == 0


@pytest.mark.parametrize("exact", [False, True])
def test_a_cancel_held_to_the_end_of_a_step_that_samples_the_last_token_is_a_no_op(exact):
    sc = scenario(tiny(perf=LINEAR), exact_steps=exact, check_invariants=True)
    sim = Simulation(sc)
    r = req(0, 0.0, 10, 4, 1)  # first token at 0.02, last (5th) at 0.02 + 4 x 0.012 = 0.068
    timer = CancelAt(sim, r, 0.06)
    res = sim.run([r])
    assert timer.result is True  # held to the step's end, where the request completes instead
    row = res.requests.iloc[0]
    assert (row.status, row.reason) == ("completed", "")
    assert row.finish_s == pytest.approx(0.068, abs=1e-12)


@pytest.mark.parametrize("exact", [False, True])
def test_a_waiting_request_is_cancelled_at_once_even_mid_step(exact):
    # max_num_seqs 1: B waits behind A; a cancel at 0.05 (mid-step) takes it out then. A's run is cut at its
    # step in flight but its times do not change.
    sc = scenario(tiny(pool={"max_num_seqs": 1}, perf=LINEAR), exact_steps=exact, check_invariants=True)
    sim = Simulation(sc)
    a, b = req(0, 0.0, 10, 20, 1), req(1, 0.0, 10, 0, 1)
    timer = CancelAt(sim, b, 0.05)
    res = sim.run([a, b])
    assert timer.result is True
    rows = res.requests.set_index("request_id")
    assert rows.loc[1, "status"] == "cancelled" and rows.loc[1, "finish_s"] == pytest.approx(0.05, abs=1e-12)
    assert math.isnan(rows.loc[1, "first_token_s"])
    assert rows.loc[0, "finish_s"] == pytest.approx(0.02 + 20 * 0.012, abs=1e-9)


def test_cancel_refuses_requests_not_queued_or_running_here():
    sc = scenario(tiny(perf=LINEAR), check_invariants=True)
    sim = Simulation(sc)
    r = req(0, 0.0, 10, 0, 1)
    assert not sim.replicas[0].cancel(r)  # not arrived
    res = sim.run([r])
    assert not sim.replicas[0].cancel(r)  # completed
    assert res.requests.iloc[0].status == "completed"


@pytest.mark.parametrize("async_", [False, True])
@pytest.mark.parametrize("exact", [False, True])
def test_the_outputs_of_a_step_in_flight_are_dropped_for_a_cancelled_request(exact, async_):
    # Samples with answers 2 and 3, beside an unrelated long request. Sample 0 finishes at step 2 and cancels
    # sample 1. Under async scheduling step 3, planned before step 2's outputs were applied, samples sample 1's
    # last token: its outputs are dropped (no second finished, no double free) while the long request runs on.
    log = Log(cancel_siblings=True)
    samples = forked(2, 40, answers=[2, 3])
    log.family = samples
    other = req(2, 0.0, 40, 0, 10)
    sc = scenario(tiny(pool={"async_scheduling": async_}, perf=LINEAR), exact_steps=exact, check_invariants=True)
    res = Simulation(sc, hooks=[log]).run([*samples, other])
    r = res.requests.set_index("request_id")
    assert list(r["status"]) == ["completed", "cancelled", "completed"]
    assert log.of(1) == ["admitted", "prompt_done", "reasoning_done", "finished"]
    assert r.loc[1, "generated_tokens"] == (3 if async_ else 2)
    assert r.loc[1, "finish_s"] == r.loc[0, "finish_s"] < r.loc[2, "finish_s"]
    assert log.used[0][1] is True
