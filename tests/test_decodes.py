"""The decode arrays' bookkeeping that stepping does not recompute: the context sum kept as slots change, blocks
implied by the contexts (counted by (ctx - tick) mod B) against blocks kept in their row, and a run's block demand
(in closed form or as an array) against stepping."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simserve.engine import decodes
from simserve.engine.decodes import Decodes, FastForwardRun
from simserve.perf import base
from simserve.request import Request


def _decodes(rng: np.random.Generator, bt: int, n: int, capacity: int | None = None, lazy: bool = True) -> Decodes:
    dec = Decodes(capacity or n, bt, lazy_blocks=lazy)
    for i in range(n):
        req = _request(rng, i, bt)
        dec.add(req, -(-req.computed_tokens // bt))  # vLLM's: the blocks that cover the computed tokens
    return dec


def _explicit_copy(dec: Decodes) -> Decodes:
    """The same slots with blocks kept in their row (the reference)."""
    copy = Decodes(len(dec.req), dec._block_tokens, lazy_blocks=False)
    dec.fresh_blocks()
    copy._rows[:] = dec._rows
    copy.n, copy.tick, copy.req = dec.n, dec.tick, list(dec.req)
    copy.ctx_sum = copy.ctx_max = -1  # unknown: recounted when read
    return copy


def _request(rng: np.random.Generator, i: int, bt: int) -> Request:
    prompt = int(rng.integers(1, 60))
    req = Request(i, 0, "q", 0.0, prompt, 2000, 5)
    req.generated_tokens = int(rng.integers(0, 60))
    req.computed_tokens = prompt + req.generated_tokens
    req.seq = i
    return req


@pytest.mark.parametrize("seed", range(30))
def test_kept_counts_and_implied_blocks_through_every_change_of_the_slots(seed):
    """Random adds, removes, steps for all, runs, steps for one and written progress, on slots whose blocks follow
    from their contexts and on the same slots with blocks kept in their row: the same blocks, needs and sums
    throughout; a slot written with other blocks turns the lazy one explicit, and both go on agreeing."""
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 4, 16]))
    lazy = _decodes(rng, bt, int(rng.integers(1, 20)), capacity=64)
    ref = _explicit_copy(lazy)
    next_id = 100
    spare_at = int(rng.integers(100, 400))  # when a slot is written with a spare block (turns lazy off)
    wrote_spare = False
    for step in range(300):
        op = int(rng.integers(0, 6))
        if op == 0 and lazy.n < 64:
            for dec in (lazy, ref):
                req = _request(np.random.default_rng(next_id), next_id, bt)
                dec.add(req, -(-req.computed_tokens // bt))
            next_id += 1
        elif op == 1 and lazy.n > 1:
            j = int(rng.integers(0, lazy.n))
            lazy.remove(j)
            ref.remove(j)
        elif op == 2 and lazy.n:
            free = int(rng.integers(0, 8))
            need, needs = lazy.schedule_all(bt, free)
            ref_need, ref_needs = ref.schedule_all(bt, free)
            assert need == ref_need
            if need < 0:  # they do not fit: both name the slots that need a block
                assert (needs == ref_needs).all()
        elif op == 3 and lazy.n:
            k = int(rng.integers(1, 40))
            lazy.advance(k, bt)
            ref.advance(k, bt)
        elif op == 4 and lazy.n:
            j = int(rng.integers(0, lazy.n))
            for dec in (lazy, ref):  # the general pass: the slot's next block, then its step
                have = dec.blocks_of(j)
                dec.blocks[j] += max(-(-(int(dec.ctx[j]) + 1) // bt) - have, 0)
                dec.schedule_one(j)
        elif op == 5 and lazy.n:
            j = int(rng.integers(0, lazy.n))
            ctx = int(lazy.ctx[j]) + int(rng.integers(0, 30))
            blocks = -(-ctx // bt) + (step >= spare_at)
            wrote_spare |= step >= spare_at
            lazy.set_progress(j, ctx, blocks)
            ref.set_progress(j, ctx, blocks)
        lazy.check()
        ref.check()
        assert lazy.ctx_sum == int(lazy.ctx[: lazy.n].sum()) == ref.context_total()
        assert lazy.ctx_max == int(lazy.ctx[: lazy.n].max(initial=0)) == ref.context_max() or lazy.ctx_max == -1
        assert lazy.context_max() == int(lazy.ctx[: lazy.n].max(initial=0))
        assert [lazy.blocks_of(j) for j in range(lazy.n)] == ref.blocks[: ref.n].tolist()
        assert (lazy.fresh_blocks() == ref.blocks[: ref.n]).all()
        assert (lazy.ctx[: lazy.n] == ref.ctx[: ref.n]).all()
    assert lazy._lazy == (not wrote_spare)
    lazy.ctx_sum = lazy.ctx_max = -1  # unknown (a subclass wrote the arrays): recounted on the next read
    assert lazy.context_total() == int(lazy.ctx[: lazy.n].sum()) == lazy.ctx_sum
    assert lazy.context_max() == int(lazy.ctx[: lazy.n].max(initial=0)) == lazy.ctx_max


@pytest.mark.parametrize("seed", range(30))
def test_block_demand_in_closed_form_equals_the_array_and_stepping(seed):
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 2, 4, 16]))
    dec = _decodes(rng, bt, int(rng.integers(1, 40)), lazy=bool(seed % 2))
    dec.schedule_all(bt, 1 << 40)  # the run's first step, planned: its blocks allocated
    k = int(rng.integers(2, 600))
    buf = np.zeros(bt + 1, np.int64)
    closed = dec.extra_blocks(bt, k, buf)  # from the counts by (ctx - tick) mod B if lazy, else by bincount
    as_array = dec.extra_blocks(bt, k, buf, periodic=False)
    assert closed.array is None and as_array.array is not None
    values = as_array.values(k)
    assert values.dtype == closed.values(k).dtype == np.int64
    assert (closed.values(k) == values).all()
    assert [closed.at(s) for s in range(k)] == values.tolist() == [as_array.at(s) for s in range(k)]
    for free in {0, 1, int(values[-1]), int(values[-1]) + 1, *rng.integers(0, int(values[-1]) + 5, 20).tolist()}:
        want = int(values.searchsorted(free, side="right"))
        assert closed.steps_within(free) == as_array.steps_within(free) == want, free
    stepped = _explicit_copy(dec)
    blocks0 = int(stepped.blocks[: dec.n].sum())
    assert values[0] == 0
    for s in range(1, k):
        need, _ = stepped.schedule_all(bt, 1 << 40)
        assert need >= 0
        assert int(stepped.blocks[: dec.n].sum()) - blocks0 == values[s], s


@pytest.mark.parametrize("seed", range(10))
def test_a_runs_kv_integral_is_the_same_from_the_closed_form_and_the_array(seed):
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 4, 16]))
    dec = _decodes(rng, bt, int(rng.integers(1, 300)), capacity=300)
    dec.schedule_all(bt, 1 << 40)
    k = int(rng.integers(1, 400))
    buf = np.zeros(bt + 1, np.int64)
    times = rng.uniform(0.005, 0.2, k)
    bounds = np.concatenate([[0.0], times]).cumsum()
    runs = [FastForwardRun(bounds, times, dec.extra_blocks(bt, k, buf, periodic=periodic), k, dec.n, 0,
                           context_sum=float(dec.ctx_sum)) for periodic in (True, False)]
    for done in {0, 1, int(rng.integers(1, k + 1)), k}:
        for scalar_up_to in (done, 0):  # floats, arrays
            a, b = (run.kv_integrals(done, scalar_up_to=scalar_up_to) for run in runs)
            assert a == b, (done, scalar_up_to)


@pytest.mark.parametrize("seed", range(6))
def test_a_runs_step_ends_are_searched_alike_as_a_list_and_as_an_array(seed):
    """A short run's step ends may be a list (the roofline gives its step times as one: perf.base.StepTimes), a long
    one's an array; the searches that cut a run at an arrival (`ends_by`: ends at or before t) and that count the
    steps planned by now (`ends_before`, `FastForwardRun.steps_started`) must count the same, at a step end exactly
    (where the two differ), between two, before the start and after the end."""
    from simserve.engine.decodes import BlockDemand, ends_before, ends_by

    rng = np.random.default_rng(seed)
    scratch = np.zeros(())
    for _ in range(30):
        k = int(rng.integers(1, 70))
        start = float(rng.uniform(0, 1e4))
        times = rng.uniform(0.001, 0.1, k).tolist()
        ends = [start]
        for t in times:
            ends.append(ends[-1] + t)
        array = np.array(ends)
        runs = [FastForwardRun(b, t, BlockDemand(k, np.zeros(k, np.int64)), k, 1, 0)
                for b, t in ((ends, times), (array, np.array(times)))]
        for last in {1, int(rng.integers(1, k + 1)), k}:
            probes = [start - 1.0, start, *ends[1:], *((a + b) / 2 for a, b in pairwise(ends)), ends[-1] + 1.0]
            for t in probes:
                before = sum(1 for e in ends[1: last + 1] if e < t)
                by = sum(1 for e in ends[1: last + 1] if e <= t)
                assert ends_before(ends, t, last, scratch) == ends_before(array, t, last, scratch) == before
                assert ends_by(ends, t, last, scratch) == ends_by(array, t, last, scratch) == by
                if last == k:
                    started = min(before + 1, k)
                    assert [run.steps_started(t, scratch) for run in runs] == [started, started]
        for done in {0, 1, k}:
            assert runs[0].kv_integrals(done) == runs[1].kv_integrals(done)
            assert runs[0].kv_integrals(done, scalar_up_to=0) == runs[1].kv_integrals(done, scalar_up_to=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=300))
def test_a_maximum_and_a_minimum_read_at_argmax_and_argmin_are_numpys(values):
    """base.amax/amin read the value at the argmax/argmin: the same number as numpy's reductions, as a Python int."""
    a = np.array(values, np.int64)
    assert base.amax(a) == int(np.max(a)) and type(base.amax(a)) is int
    assert base.amin(a) == int(np.min(a)) and type(base.amin(a)) is int
    assert base.amax(a[::2]) == max(values[::2]) and base.amin(a[1:] if len(a) > 1 else a) == min(values[1:] or values)
    f = a.astype(float)
    f[len(f) // 2] = np.nan
    assert math.isnan(base.amax(f)) and math.isnan(base.amin(f))


@pytest.mark.parametrize("compressed", [False, True])
def test_the_keep_and_cap_rows_hold_every_slots_own_values_as_slots_join_and_leave(compressed):
    """Without compression the keep and cap rows are preset to "all" and not written at each join; a slot that
    joins with a budget (kv_keep_tokens) writes them, and from then on every join does, so a reused slot never
    shows an earlier occupant's values."""
    rng = np.random.default_rng(5)
    bt = 4
    dec = Decodes(6, bt, compressed)
    budgets = [0, 0, 40, 0, 0, 24, 0] if not compressed else [30, 40, 50, 60, 70, 80, 90]
    for i, budget in enumerate(budgets):
        req = _request(rng, i, bt)
        req.kv_keep_tokens = budget
        dec.add(req, -(-req.computed_tokens // bt))
        if dec.n > 3:
            dec.remove(int(rng.integers(dec.n)))
        for j in range(dec.n):
            r = dec.req[j]
            assert r is not None
            keep = r.kv_keep_tokens
            assert dec.keep[j] == (r.kv_keep_tokens or decodes._NEVER)
            assert dec.cap[j] == (-(-keep // bt) if r.kv_keep_tokens else decodes._NEVER)
