"""What every step-time model shares: the Batch a step computes, the PerfModel protocol the engine calls, and the
PerfContext every perf spec builds its model from (one `build(ctx)` signature for all of them).

A model implements `step_time_s(batch)` for any batch, and `decode_run_times_s` for a run of decode-only steps
whose membership does not change (each sequence's context grows by one token a step), vectorised over the run so
the engine can fast-forward exactly with any model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias

import numpy as np

from simserve.hardware import GpuSpec, ModelSpec


class Batch:
    """What one step computes (read-only).

    decode_context_tokens: per decoding sequence, the context its new token attends over (KV tokens already in
        cache plus the one being computed).
    prefill_new_tokens / prefill_cached_tokens: per prefill chunk, the tokens computed in this step and the
        tokens of the same sequence already in the KV cache before it (earlier chunks or a cached prefix). Given
        as arrays or as lists of ints; read as arrays (a list is made one on first read), or as lists with
        `prefill_lists()` (a model that loops over a step's few chunks: the engine passes lists, and neither side
        pays numpy's per-call cost, about 5,000 instructions, for a round trip).
    decode_context_sum: the sum of decode_context_tokens, if the caller has it (computed on first read if not):
        the engine's step reads it for its KV integral too, and one sum is one numpy call.
    decode_context_max: the largest of decode_context_tokens, likewise (the engine keeps it as the decodes change).

    A plain class, not a dataclass: compiled, its constructor is a direct call (a dataclass's generated __init__
    runs as Python, about 4,800 instructions a call; the engine makes one a step it times singly).
    """

    __slots__ = ("decode_context_tokens", "_new", "_cached", "_context_sum", "_context_max")

    def __init__(self, decode_context_tokens: np.ndarray, prefill_new_tokens: np.ndarray | list[int],
                 prefill_cached_tokens: np.ndarray | list[int], decode_context_sum: float = -1.0,
                 decode_context_max: float = -1.0) -> None:
        if len(prefill_new_tokens) != len(prefill_cached_tokens):
            raise ValueError(f"{len(prefill_new_tokens)} prefill chunks' new tokens but {len(prefill_cached_tokens)}"
                             " chunks' cached tokens")
        self.decode_context_tokens: Final[np.ndarray] = decode_context_tokens
        self._new = prefill_new_tokens
        self._cached = prefill_cached_tokens
        self._context_sum = decode_context_sum
        self._context_max = decode_context_max

    @property
    def decode_context_sum(self) -> float:
        """The sum of decode_context_tokens (given by a caller that has it, or computed on first read)."""
        total = self._context_sum
        if total < 0.0:
            total = self._context_sum = float(context_sum(self.decode_context_tokens))
        return total

    @property
    def decode_context_max(self) -> float:
        """The largest of decode_context_tokens, 0 if none (given by a caller that has it, or computed on first
        read)."""
        longest = self._context_max
        if longest < 0.0:
            dec = self.decode_context_tokens
            longest = self._context_max = float(amax(dec)) if len(dec) else 0.0
        return longest

    @property
    def prefill_new_tokens(self) -> np.ndarray:
        new = self._new
        if isinstance(new, list):
            new = self._new = np.array(new, np.int64)
        return new

    @property
    def prefill_cached_tokens(self) -> np.ndarray:
        cached = self._cached
        if isinstance(cached, list):
            cached = self._cached = np.array(cached, np.int64)
        return cached

    def prefill_lists(self) -> tuple[list[int], list[int]]:
        """(prefill_new_tokens, prefill_cached_tokens) as lists of ints."""
        new, cached = self._new, self._cached
        return (new if isinstance(new, list) else new.tolist(),
                cached if isinstance(cached, list) else cached.tolist())

    def __repr__(self) -> str:
        return (f"Batch(decode_context_tokens={self.decode_context_tokens!r}, prefill_new_tokens="
                f"{self.prefill_new_tokens!r}, prefill_cached_tokens={self.prefill_cached_tokens!r})")

    @property
    def num_tokens(self) -> int:
        return int(len(self.decode_context_tokens) + self.prefill_new_tokens.sum())


# A run's step times: a float array, or for a short run a list of floats. A saturated replica's runs are mostly a few
# steps long; for those, an array costs more in numpy's per-call overhead (making it, summing its step ends,
# searching them, reading them back as floats) than the arithmetic it holds. The engine keeps a list as a list.
StepTimes: TypeAlias = np.ndarray | list[float]


class PerfModel(Protocol):
    @property
    def overhead_s(self) -> float:
        """Seconds of a step that computes nothing (host overhead only: scheduling, an empty launch); async
        scheduling runs one when every running request's last token is still in flight."""
        ...

    def step_time_s(self, batch: Batch) -> float:
        """Seconds one step of `batch` takes."""
        ...

    def decode_run_times_s(self, decode_context_tokens: np.ndarray, num_steps: int,
                           caps: np.ndarray | None = None) -> StepTimes:
        """Seconds of each of `num_steps` decode-only steps; step s (from 0) has contexts
        decode_context_tokens + s, or under KV compression min(decode_context_tokens + s, caps) (each sequence's
        kept KV stops growing at its cap). Element s equals step_time_s of that step's batch. A float array, or
        a list of floats (cheaper for a short run, which the engine then keeps as a list: see StepTimes)."""
        ...

    def decode_run_stats_s(self, n: int, context_sum: int, context_max: int, num_steps: int) -> StepTimes:
        """`decode_run_times_s` without caps, from what it reads of the contexts: the batch size, their sum and
        their maximum (the same values)."""
        ...


_STEPS = np.arange(1 << 14, dtype=float)
_STEPS.flags.writeable = False


# Reductions of the hot paths, once or more per event: ndarray.sum passes through a Python frame
# (numpy._core._methods) to the same C loop, called here directly (the same bits); a maximum or a minimum is read at
# the array's argmax or argmin, which costs less than either.
asum: Final = np.add.reduce
_argmax: Final = np.ndarray.argmax
_argmin: Final = np.ndarray.argmin
_item: Final = np.ndarray.item


def amax(values: np.ndarray) -> Any:
    """The largest value of a non-empty array of integers (or of floats, none of them -0.0), as a Python number: the
    value at its argmax. An argmax and an item cost about a quarter of a reduction's call (np.maximum.reduce parses
    its arguments and makes a numpy scalar): 0.25 against 0.95 us on 180 values; the value is the same (a float
    array's NaN, its first, as the reduction's)."""
    return _item(values, _argmax(values))


def amin(values: np.ndarray) -> Any:
    """The smallest value of a non-empty array, as `amax`: the value at its argmin."""
    return _item(values, _argmin(values))


# cumsum's own loop (np.cumsum is add.accumulate: the same sequential sums), without the method's slower handling of
# `out=` (about 1.9 us a call against 0.7 us).
accumulate_sum: Final = np.add.accumulate
# numpy's functions the compiled hot paths call (the decodes, the calibrated model's runs and steps), bound once:
# a Final name is a C static that the compiled modules importing it read, where `np.add` is a lookup in numpy's module
# dict at every call (about 275 instructions).
np_add: Final = np.add
np_multiply: Final = np.multiply
np_true_divide: Final = np.true_divide
np_floor_divide: Final = np.floor_divide
np_minimum: Final = np.minimum
np_maximum: Final = np.maximum
np_log: Final = np.log
np_exp: Final = np.exp
np_arange: Final = np.arange


def context_sum(contexts: np.ndarray) -> int:
    """The sum of a step's decode contexts (0 for none): what `Batch.decode_context_sum` and
    `StepPlan.decode_context_sum` each compute once and keep."""
    return int(asum(contexts)) if len(contexts) else 0
# The compiled cores of np.count_nonzero and np.interp, without their Python wrappers (np.interp's checks were a
# third of a calibrated step's cost); numpy 1.x keeps them in numpy.core.
_cores: Any = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray")
count_nonzero: Final = _cores.count_nonzero
interp: Final = _cores.interp
# np.bincount without its __array_function__ dispatch (about 150 ns a call; the same C function), where numpy's
# dispatcher exposes it.
bincount: Final[Any] = getattr(np.bincount, "_implementation", np.bincount)


def ordered_dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a[i] * b[i]), added in index order: the products then a sequential sum (numpy's cumsum), as a loop over
    floats adds them. np.dot's BLAS kernel chooses its order by CPU (vector lanes, fused multiply-adds), so its
    last bits differ between machines; this does not."""
    if len(a) == 0:
        return 0.0
    products = np.multiply(a, b)
    return float(products.cumsum()[-1])


def step_indices(num_steps: int) -> np.ndarray:
    """0, 1, ..., num_steps - 1 as floats (read-only views of a shared table for the usual lengths)."""
    return _STEPS[:num_steps] if num_steps <= len(_STEPS) else np.arange(num_steps, dtype=float)


def kept_context_sums(contexts: np.ndarray, caps: np.ndarray | None, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(sum, max) over the decodes of min(contexts + s, caps) for each step s < num_steps, as float arrays, in
    O(n log n + num_steps): a sequence d_i = caps_i - contexts_i steps from its cap adds one token a step until
    then, so the sum loses sum_i max(0, s - d_i) (a double cumulative sum of bincount(d)), and the max is the
    larger of the uncapped sequences' largest context + s and the capped ones' largest cap."""
    n = len(contexts)
    steps = np.arange(num_steps, dtype=float)
    total = float(contexts.sum()) + n * steps
    if caps is None or n == 0:
        return total, float(contexts.max(initial=0)) + steps
    d = caps - contexts
    near = d[d < num_steps]
    if len(near):
        below = np.cumsum(np.bincount(near, minlength=num_steps)[:num_steps])  # #{d_i <= t}
        lost = np.zeros(num_steps, np.int64)
        np.cumsum(below[: num_steps - 1], out=lost[1:])
        total -= lost
    order = np.argsort(d, kind="stable")
    d_sorted = d[order]
    suffix = np.maximum.accumulate(contexts[order][::-1])[::-1].astype(float)  # largest context with d >= d_j
    prefix = np.maximum.accumulate(caps[order]).astype(float)  # largest cap with d <= d_j
    j = np.searchsorted(d_sorted, steps, side="left")  # sequences capped by step s: d < s
    grow = np.where(j < n, suffix[np.minimum(j, n - 1)] + steps, -np.inf)
    flat = np.where(j > 0, prefix[np.maximum(j - 1, 0)], -np.inf)
    return total, np.maximum(grow, flat)


@dataclass(frozen=True, slots=True)
class PerfContext:
    """What a pool tells its perf spec: the hardware and model of one replica and how the replica splits the model
    over its `tensor_parallel` GPUs. `base_dir` resolves a spec's relative paths (the scenario file's folder).
    A spec uses what it models and ignores the rest (only the calibrated model knows expert and data-parallel
    attention layouts)."""

    gpu: GpuSpec
    model: ModelSpec
    tensor_parallel: int = 1
    expert_parallel: bool = False
    data_parallel_attention: bool = False
    base_dir: Path | None = None
