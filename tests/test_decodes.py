"""The decode arrays' bookkeeping that stepping does not recompute: the context sum kept as slots change, and a
run's block demand (built in Python for a short run, with arrays for a long one) against stepping."""

from __future__ import annotations

import numpy as np
import pytest

from simserve.engine.decodes import Decodes, FastForwardRun
from simserve.request import Request


def _decodes(rng: np.random.Generator, bt: int, n: int, capacity: int | None = None) -> Decodes:
    dec = Decodes(capacity or n, bt)
    for i in range(n):
        dec.add(_request(rng, i, bt), 0)
        j = dec.n - 1
        dec.blocks[j] = -(-int(dec.ctx[j]) // bt)  # vLLM's: the blocks that cover the computed tokens
    return dec


def _request(rng: np.random.Generator, i: int, bt: int) -> Request:
    prompt = int(rng.integers(1, 60))
    req = Request(i, 0, "q", 0.0, prompt, 2000, 5)
    req.generated_tokens = int(rng.integers(0, 60))
    req.computed_tokens = prompt + req.generated_tokens
    req.seq = i
    return req


@pytest.mark.parametrize("seed", range(30))
def test_context_sum_is_kept_through_every_change_of_the_slots(seed):
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 4, 16]))
    dec = _decodes(rng, bt, int(rng.integers(1, 20)), capacity=64)
    next_id = 100
    for _ in range(200):
        op = int(rng.integers(0, 6))
        if op == 0 and dec.n < 64:
            dec.add(_request(rng, next_id, bt), 8)
            next_id += 1
        elif op == 1 and dec.n > 1:
            dec.remove(int(rng.integers(0, dec.n)))
        elif op == 2 and dec.n:
            dec.schedule_all(bt, 1 << 40)
        elif op == 3 and dec.n:
            dec.advance(int(rng.integers(1, 40)), bt)
        elif op == 4 and dec.n:
            dec.schedule_one(int(rng.integers(0, dec.n)))
        elif op == 5 and dec.n:
            j = int(rng.integers(0, dec.n))
            dec.set_progress(j, int(dec.ctx[j]) + int(rng.integers(0, 30)), int(dec.blocks[j]) + 2)
        assert dec.ctx_sum == int(dec.ctx[: dec.n].sum())
        assert dec.context_total() == dec.ctx_sum
    dec.ctx_sum = -1  # unknown (a subclass wrote the arrays): recounted on the next read
    assert dec.context_total() == int(dec.ctx[: dec.n].sum()) == dec.ctx_sum


@pytest.mark.parametrize("seed", range(30))
def test_block_demand_in_closed_form_equals_the_array_and_stepping(seed):
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 2, 4, 16]))
    dec = _decodes(rng, bt, int(rng.integers(1, 40)))
    dec.schedule_all(bt, 1 << 40)  # the run's first step, planned: its blocks allocated
    k = int(rng.integers(2, 600))
    buf = np.zeros(bt + 1, np.int64)
    closed = dec.extra_blocks(bt, k, buf)
    as_array = dec.extra_blocks(bt, k, buf, periodic=False)
    assert closed.array is None and as_array.array is not None
    values = as_array.values(k)
    assert values.dtype == closed.values(k).dtype == np.int64
    assert (closed.values(k) == values).all()
    assert [closed.at(s) for s in range(k)] == values.tolist() == [as_array.at(s) for s in range(k)]
    for free in {0, 1, int(values[-1]), int(values[-1]) + 1, *rng.integers(0, int(values[-1]) + 5, 20).tolist()}:
        want = int(values.searchsorted(free, side="right"))
        assert closed.steps_within(free) == as_array.steps_within(free) == want, free
    stepped = Decodes(dec.n, bt)
    stepped._rows[:] = dec._rows
    stepped.n = dec.n
    blocks0 = int(dec.blocks[: dec.n].sum())
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
