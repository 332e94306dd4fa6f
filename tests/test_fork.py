"""Forked samples (parallel sampling): the prompt's full blocks held once by n samples, as vLLM V1's n child
requests share them through the prefix cache. Hand-built planner states first, then an exact timeline."""

from __future__ import annotations

import pytest
from helpers import req, scenario, tiny

from simserve import Simulation
from simserve.engine import Hooks, KvBlockPool, Planner, PlannerConfig
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


# ----------------------------------------------------------------------------------------------- timelines


class Log(Hooks):
    """Every stage per request, with the blocks in use at each prompt_done."""

    def __init__(self):
        self.calls = []

    def prompt_done(self, r, replica):
        self.calls.append(("prompt_done", r.request_id, replica.kv.used_blocks))


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
