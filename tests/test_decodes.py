"""The decode arrays' bookkeeping that stepping does not recompute: the context sum kept as slots change, and a
run's block demand (built in Python for a short run, with arrays for a long one) against stepping."""

from __future__ import annotations

import numpy as np
import pytest

from simserve.engine.decodes import Decodes
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
def test_block_demand_equals_stepping_in_python_and_with_arrays(seed):
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 2, 4, 16]))
    dec = _decodes(rng, bt, int(rng.integers(1, 40)))
    dec.schedule_all(bt, 1 << 40)  # the run's first step, planned: its blocks allocated
    k = int(rng.integers(2, 600))
    buf = np.zeros(bt + 1, np.int64)
    in_python = dec.extra_blocks(bt, k, buf, scalar_up_to=k).copy()
    with_arrays = dec.extra_blocks(bt, k, buf, scalar_up_to=0)
    assert in_python.dtype == with_arrays.dtype == np.int64
    assert (in_python == with_arrays).all()
    assert (dec.extra_blocks(bt, k, buf) == with_arrays).all()  # the default: either, by k
    stepped = Decodes(dec.n, bt)
    stepped._rows[:] = dec._rows
    stepped.n = dec.n
    blocks0 = int(dec.blocks[: dec.n].sum())
    assert in_python[0] == 0
    for s in range(1, k):
        need, _ = stepped.schedule_all(bt, 1 << 40)
        assert need >= 0
        assert int(stepped.blocks[: dec.n].sum()) - blocks0 == in_python[s], s
