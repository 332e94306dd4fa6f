"""The decoding sequences of one replica as arrays (struct of arrays), and the fast-forwarded run of decode steps.

A decode step never loops over the batch in Python: contexts, tokens left and blocks are numpy arrays indexed by
slot, and a run of steps whose membership cannot change is advanced in closed form (`FastForwardRun`), giving
exactly the times, blocks and token counts that stepping one iteration at a time gives.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Final

import numpy as np
from mypy_extensions import mypyc_attr

from simserve.perf.base import (
    StepTimes,
    amax,
    amin,
    bincount,
    context_sum,
    count_nonzero,
    kept_context_sums,
    np_add,
    np_floor_divide,
    np_maximum,
    np_minimum,
    ordered_dot,
    step_indices,
)
from simserve.request import Request

_NEVER: Final = 1 << 62
# A run's KV integrals over at most this many steps are summed with floats: numpy's per-call cost (about 5,000
# instructions a call, some fourteen calls) is most of a short run's; half the runs of a saturated replica are 3 steps
# or fewer. Chosen by native CPU, where the array code costs about 14 us a run and the floats about 30 ns a step (they
# cross near 800 steps); callgrind's counts, which weigh numpy's vector loops as instructions, cross near 128.
_SCALAR_INTEGRALS: Final = 512
# numpy takes a 0-d int64 array as an operand in half the time of a Python int (which it must first type).
_ONE: Final = np.ones((), np.int64)
_NO_NEEDS: Final = np.zeros(0, np.bool_)  # schedule_all's needs when they fit (read only when they do not)


@mypyc_attr(allow_interpreted_subclasses=True)  # speculative.py's SpecDecodes
class Decodes:
    """Requests whose known tokens are all in the KV cache, each generating one token per step.

    Per slot j < n: `ctx` tokens computed (in the KV cache, as vLLM's num_computed_tokens: advanced when a step is
    scheduled), `blocks` KV blocks held, `seq` the running-order key (admission order; the scheduler's victim is
    the largest), and the Request; a request's `slot` attribute names its slot. Output tokens left to schedule are
    not stored but kept as the tick at which the slot schedules its last one (`finish_at`): a step given to every
    slot is then one increment of `tick`, whatever the batch size (`left(j)` = finish_at[j] - tick).

    Blocks implied by contexts (`lazy_blocks`, without KV compression): while every slot holds exactly the blocks
    that cover its context, ceil(ctx / B) (vLLM's allocation: a decode takes a block when its next token starts
    one), the `blocks` row is not advanced with the contexts but recomputed from them when read
    (`fresh_blocks`, `blocks_of`). A step given to every slot then needs a block for the slots whose context is a
    multiple of B, and ctx - tick does not change with such steps, so the slots are counted by (ctx - tick) mod B
    (`_hist`): the step's block count, and a run's block demand, come from B counts, not from the batch. A slot
    that joins or is written with other blocks turns this off for good (`_explicit`).
    """

    def __init__(self, capacity: int, block_tokens: int = 1, compressed: bool = False,
                 lazy_blocks: bool = True) -> None:
        # One row per field (a slot moves or joins in one numpy call): ctx, blocks, seq, ctx0 (ctx when it
        # joined: a decode step was scheduled iff ctx > ctx0), finish_at, reasoning_at, and under KV compression
        # keep (most tokens of KV kept, _NEVER: all) and cap (the blocks that holds: blocks never grow past it).
        self._rows = np.zeros((8, capacity), np.int64)
        (self.ctx, self.blocks, self.seq, self.ctx0, self.finish_at, self.reasoning_at, self.keep,
         self.cap) = self._rows
        # The same rows as memoryviews, for one slot's value: read as a Python int, or written from one, in about
        # 150 instructions, where a numpy scalar read costs about 1,250 (the scalar, then int()) and a tuple
        # written into a column 4,300.
        (self.v_ctx, self.v_blocks, self.v_seq, self.v_ctx0, self.v_finish_at, self.v_reasoning_at, self.v_keep,
         self.v_cap) = [row.data for row in self._rows]
        self.compressed = compressed
        # Events without scanning the batch each step: `tick` counts schedules given to every slot; a slot
        # samples its last token at tick `finish_at` and its last reasoning token at `reasoning_at` (_NEVER once
        # done); the earliest of each is kept (None: to recount).
        self.tick = 0
        self._min_finish: int | None = _NEVER
        self._min_reasoning: int | None = _NEVER
        self.req: list[Request | None] = [None] * capacity
        self.n = 0
        # sum(ctx[:n]), kept as the slots change (-1: unknown, recounted on the next read): a step's context sum,
        # which its timing and KV integral read, without a numpy reduction a step.
        self.ctx_sum = 0
        # max(ctx[:n]) likewise (-1: unknown; 0 with no slots): the longest context, which the calibrated model's
        # step time reads, without a numpy reduction a step. Removing the longest makes it unknown.
        self.ctx_max = 0
        self._block_tokens = block_tokens  # for the caps of compressed slots
        self._bt = np.full((), block_tokens, np.int64)  # the same, as an operand numpy takes quickly
        self._bt_less_one = np.full((), block_tokens - 1, np.int64)
        # A 0-d operand for one ufunc call at a time, its value set just before (a Python int operand costs numpy
        # about 250-550 ns more a call to convert: measured with an add and with a comparison of 70 values):
        # `advance`'s step count, and the tick `_slots_at` compares with.
        self._operand = np.zeros((), np.int64)
        self._lazy = lazy_blocks and not compressed and block_tokens >= 1
        self._fresh = True  # the `blocks` row is up to date (always, unless lazy)
        self._hist = [0] * max(block_tokens, 1)  # lazy: slots by (ctx - tick) mod B
        self._laps: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        # Without KV compression every slot keeps all its KV: the keep and cap rows hold _NEVER throughout, written
        # once here rather than at each join, until a slot joins with other values (then always written).
        self.keep[:] = _NEVER
        self.cap[:] = _NEVER
        self._keep_all = True

    def add(self, req: Request, num_blocks: int) -> None:
        j = self.n
        left = req.output_tokens - req.generated_tokens
        answer = req.answer_tokens
        finish_at = self.tick + left
        reasoning_at = self.tick + left - answer if left > answer else _NEVER
        keep = req.kv_keep_tokens or _NEVER
        cap = -(-keep // self._block_tokens) if req.kv_keep_tokens else _NEVER
        if self._lazy:
            bt = self._block_tokens
            if num_blocks == -(-req.computed_tokens // bt):
                self._hist[(req.computed_tokens - self.tick) % bt] += 1
            else:
                self._explicit()
        c = req.computed_tokens
        self.v_ctx[j] = c
        self.v_blocks[j] = num_blocks
        self.v_seq[j] = req.seq
        self.v_ctx0[j] = c
        self.v_finish_at[j] = finish_at
        self.v_reasoning_at[j] = reasoning_at
        if req.kv_keep_tokens or not self._keep_all:  # keep and cap are both _NEVER exactly when it is 0
            self._keep_all = False
            self.v_keep[j] = keep
            self.v_cap[j] = cap
        self.req[j] = req
        req.slot = j
        self.n = j + 1
        if self.ctx_sum >= 0:
            self.ctx_sum += req.computed_tokens
        if c > self.ctx_max >= 0:
            self.ctx_max = c
        if self._min_finish is not None and finish_at < self._min_finish:
            self._min_finish = finish_at
        if self._min_reasoning is not None and reasoning_at < self._min_reasoning:
            self._min_reasoning = reasoning_at

    def sync(self, j: int) -> Request:
        """Write slot j's progress back to its Request (before it leaves the arrays or is reported)."""
        req = self.req[j]
        assert req is not None
        req.computed_tokens = self.v_ctx[j]
        req.generated_tokens = req.output_tokens - self.left(j)
        return req

    def left(self, j: int) -> int:
        """Output tokens slot j has still to schedule."""
        return self.v_finish_at[j] - self.tick

    def _explicit(self) -> None:
        """Keep the `blocks` row up to date from now on (a slot's blocks no longer follow from its context)."""
        if self._lazy:
            self.fresh_blocks()
            self._lazy = False

    def fresh_blocks(self) -> np.ndarray:
        """blocks[:n], brought up to date first if the contexts moved on without them."""
        n = self.n
        blocks = self.blocks[:n]
        if not self._fresh:
            np_floor_divide(self.ctx[:n] + self._bt_less_one, self._bt, blocks)
            self._fresh = True
        return blocks

    def blocks_of(self, j: int) -> int:
        """Slot j's blocks."""
        if self._lazy:
            return -(-self.v_ctx[j] // self._block_tokens)
        return self.v_blocks[j]

    def check(self) -> None:
        """The kept counts (tests and check_invariants): the context sum, and if lazy, the slots by (ctx - tick) mod B
        and blocks that cover each context exactly."""
        n = self.n
        ctx = self.ctx[:n]
        assert self.ctx_sum < 0 or self.ctx_sum == int(ctx.sum()), (self.ctx_sum, ctx)
        assert self.ctx_max < 0 or self.ctx_max == int(ctx.max(initial=0)), (self.ctx_max, ctx)
        if self._lazy:
            bt = self._block_tokens
            assert self._hist == np.bincount((ctx - self.tick) % bt, minlength=bt).tolist(), self._hist
            if self._fresh:
                assert (self.blocks[:n] == -(-ctx // bt)).all()

    def context_total(self) -> int:
        """sum(ctx[:n]): kept, or recounted if unknown."""
        total = self.ctx_sum
        if total < 0:
            total = self.ctx_sum = context_sum(self.ctx[: self.n])
        return total

    def context_max(self) -> int:
        """max(ctx[:n]) (0 with no slots): kept, or recounted if unknown."""
        longest = self.ctx_max
        if longest < 0:
            longest = self.ctx_max = int(amax(self.ctx[: self.n])) if self.n else 0
        return longest

    def set_progress(self, j: int, ctx: int, blocks: int) -> None:
        """Write slot j's computed tokens and blocks (a run's prediction, before it is preempted)."""
        old = self.v_ctx[j]
        if self._lazy:
            bt = self._block_tokens
            if blocks == -(-ctx // bt):
                self._hist[(old - self.tick) % bt] -= 1
                self._hist[(ctx - self.tick) % bt] += 1
            else:
                self._explicit()
        if self.ctx_sum >= 0:
            self.ctx_sum += ctx - old
        if ctx >= self.ctx_max:
            self.ctx_max = ctx if self.ctx_max >= 0 else -1
        elif old == self.ctx_max:
            self.ctx_max = -1  # the longest got shorter
        self.v_ctx[j] = ctx
        self.v_blocks[j] = blocks

    def schedule_one(self, j: int) -> None:
        """One decode token for slot j alone (a step that did not schedule every slot): its last (reasoning)
        token comes a tick sooner than the others' (its blocks, if lazy, are the caller's to have taken)."""
        if self._lazy:
            bt = self._block_tokens
            c = self.v_ctx[j] - self.tick
            self._hist[c % bt] -= 1
            self._hist[(c + 1) % bt] += 1
        c1 = self.v_ctx[j] + 1
        self.v_ctx[j] = c1
        if self.ctx_sum >= 0:
            self.ctx_sum += 1
        if c1 > self.ctx_max >= 0:
            self.ctx_max = c1
        self.v_finish_at[j] -= 1
        if self.v_reasoning_at[j] != _NEVER:
            self.v_reasoning_at[j] -= 1
        self._min_finish = self._min_reasoning = None

    def remove(self, j: int) -> Request:
        """Take slot j out (the last slot moves into it); returns its request (not synced: `sync` first if its
        progress is needed)."""
        req = self.req[j]
        assert req is not None
        if self.v_finish_at[j] == self._min_finish:
            self._min_finish = None
        if self.v_reasoning_at[j] == self._min_reasoning:
            self._min_reasoning = None
        last = self.n - 1
        c = self.v_ctx[j]
        if self._lazy:
            self._hist[(c - self.tick) % self._block_tokens] -= 1
        if self.ctx_sum >= 0:
            self.ctx_sum -= c
        if c == self.ctx_max:
            self.ctx_max = -1
        if j != last:
            rows = self._rows
            rows[:, j] = rows[:, last]
            moved = self.req[last]
            assert moved is not None
            self.req[j] = moved
            moved.slot = j
        self.req[last] = None
        req.slot = -1
        self.n = last
        return req

    def countdowns(self) -> tuple[int, int]:
        """(schedules until some slot samples its last token, ... its last reasoning token)."""
        if self._min_finish is None:
            self._min_finish = int(amin(self.finish_at[: self.n])) if self.n else _NEVER
        if self._min_reasoning is None:
            self._min_reasoning = int(amin(self.reasoning_at[: self.n])) if self.n else _NEVER
        return self._min_finish - self.tick, self._min_reasoning - self.tick

    def schedule_all(self, block_tokens: int, free_blocks: int) -> tuple[int, np.ndarray]:
        """Schedule one decode token for every slot if the new blocks they need fit in `free_blocks`: blocks,
        contexts and tokens left advance. Returns (the blocks to allocate, or -1 if they do not fit and nothing was
        done; each slot's need of a new block). `events_due` then says whether some slot sampled its last token or
        its last reasoning token."""
        n = self.n
        if self._lazy and block_tokens == self._block_tokens:
            # The slots whose context is a multiple of B: those with ctx - tick = -tick (mod B).
            need = self._hist[(-self.tick) % block_tokens]
            if need <= free_blocks:
                ctx = self.ctx[:n]
                np_add(ctx, _ONE, ctx)  # a ufunc call with its output: an in-place operator costs about twice
                self.tick += 1
                if self.ctx_sum >= 0:
                    self.ctx_sum += n
                if self.ctx_max >= 0 and n:
                    self.ctx_max += 1
                self._fresh = False
                return need, _NO_NEEDS
            self.fresh_blocks()  # they do not fit: the preempting pass reads which slots need one
        ctx, blocks = self.ctx[:n], self.blocks[:n]
        needs = ctx >= blocks * (self._bt if block_tokens == self._block_tokens else block_tokens)
        if self.compressed:
            needs &= blocks < self.cap[:n]  # a compressed sequence at its cap overwrites evicted slots
        need = int(count_nonzero(needs))
        if need > free_blocks:
            return -1, needs
        if need:
            np_add(blocks, needs, blocks)
        np_add(ctx, _ONE, ctx)
        self.tick += 1
        if self.ctx_sum >= 0:
            self.ctx_sum += n
        if self.ctx_max >= 0 and n:
            self.ctx_max += 1
        return need, needs

    def schedule_every(self, needs: np.ndarray) -> None:
        """One decode token for every slot, its new blocks `needs` (0 or 1 each) allocated by the caller."""
        n = self.n
        self.fresh_blocks()
        blocks, ctx = self.blocks[:n], self.ctx[:n]
        np_add(blocks, needs, blocks)
        np_add(ctx, _ONE, ctx)
        self.tick += 1
        if self.ctx_sum >= 0:
            self.ctx_sum += n
        if self.ctx_max >= 0 and n:
            self.ctx_max += 1

    def kept(self, slots: np.ndarray | None = None) -> np.ndarray:
        """Context tokens whose KV is kept (attention reads them): min(ctx, keep), for these slots (all if None).
        A new array."""
        if slots is None:
            return np_minimum(self.ctx[: self.n], self.keep[: self.n])
        return np_minimum(self.ctx[slots], self.keep[slots])

    def schedule_some(self, slots: np.ndarray, needs: np.ndarray) -> None:
        """One decode token for these slots only (their new blocks' `needs` allocated by the caller): their last
        (reasoning) tokens come a tick sooner than the others'."""
        self._explicit()
        self.blocks[slots] += needs
        self.ctx[slots] += 1
        self.ctx_sum = self.ctx_max = -1  # recounted when next read
        self.finish_at[slots] -= 1
        at = self.reasoning_at[slots]
        self.reasoning_at[slots] = np.where(at == _NEVER, _NEVER, at - 1)
        self._min_finish = self._min_reasoning = None

    @property
    def events_due(self) -> bool:
        """Some slot has sampled its last token, or its last reasoning token, at the current tick."""
        to_finish, to_reasoning_end = self.countdowns()
        return to_finish <= 0 or to_reasoning_end <= 0

    def events(self, slots: np.ndarray | None = None) -> tuple[list[int], list[int]]:
        """Of these slots (all if None), those whose last token and whose last reasoning token were just
        scheduled; the latter are done with reasoning from now on."""
        tick = self.tick
        if slots is None:
            finish = self._slots_at(np.equal, self.finish_at)
            reasoning = self._slots_at(np.equal, self.reasoning_at)
        else:
            finish = slots[self.finish_at[slots] == tick].tolist()
            reasoning = slots[self.reasoning_at[slots] == tick].tolist()
        for j in reasoning:
            if self.v_reasoning_at[j] != _NEVER:
                self.v_reasoning_at[j] = _NEVER
                self._min_reasoning = None
        return finish, reasoning

    def extra_blocks(self, block_tokens: int, num_steps: int, buf: np.ndarray, periodic: bool = True) -> BlockDemand:
        """The blocks the decodes need beyond those held now to run s more steps after the one just planned, for
        s < num_steps (0 at s = 0: that step's blocks are allocated).

        After a step's allocation a sequence with c computed tokens (its new token included) holds b blocks
        covering c; it needs another at step b*B - c + 1 and every B steps after, so the demand is periodic in
        the step index with period B (block_tokens): held in closed form (`periodic`) where every decode takes
        its blocks (no KV compression's caps), as an array otherwise."""
        n = self.n
        if self._lazy and periodic and block_tokens == self._block_tokens:
            # A slot's further steps that fit in its blocks are (-ctx) mod B: s for the slots counted at
            # (ctx - tick) = -s - tick (mod B).
            hist, t = self._hist, self.tick
            return periodic_demand([hist[(-s - t) % block_tokens] for s in range(block_tokens)], n, num_steps)
        bt = self._bt if block_tokens == self._block_tokens else block_tokens
        first = self.fresh_blocks() * bt - self.ctx[:n]  # further steps that fit in the blocks held
        room = None
        if self.compressed:
            room = self.cap[:n] - self.blocks[:n]  # blocks a slot may still take (0 at its cap)
            first = np.where(room > 0, first, 0)
        counts = bincount(first, None, block_tokens)
        if room is None and periodic and len(counts) == block_tokens:
            by_first: list[int] = counts.tolist()
            return periodic_demand(by_first, n, num_steps)
        counts.cumsum(out=buf[1:])
        laps, phase = self._step_laps(num_steps, block_tokens)
        extra = laps * n
        extra += buf[phase]
        if room is not None:
            extra -= _capped_growth(first + np_minimum(room, num_steps) * block_tokens, block_tokens, num_steps)
        return BlockDemand(num_steps, extra)

    def _step_laps(self, num_steps: int, block_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """divmod(range(num_steps), block_tokens), from a table kept between runs."""
        laps, phase = self._laps
        if len(laps) < num_steps:
            laps, phase = np.divmod(np.arange(max(num_steps, 2 * len(laps), 4096), dtype=np.int64), block_tokens)
            self._laps = (laps, phase)
        return laps[:num_steps], phase[:num_steps]

    def advance(self, num_steps: int, block_tokens: int) -> None:
        """Apply `num_steps` more decode steps to every slot (their schedules, after the one already applied):
        contexts grow, tokens left shrink and blocks grow to cover the contexts (FastForwardRun.extra counts
        them). Reasoning ends inside them are the caller's to collect (`reasoning_ended`)."""
        n = self.n
        self.tick += num_steps
        ctx = self.ctx[:n]
        operand = self._operand
        operand[()] = num_steps
        np_add(ctx, operand, ctx)
        if self.ctx_sum >= 0:
            self.ctx_sum += n * num_steps
        if self.ctx_max >= 0 and n:
            self.ctx_max += num_steps
        if self._lazy and block_tokens == self._block_tokens:  # blocks follow from the contexts
            self._fresh = False
            return
        grown = ctx + (block_tokens - 1)
        grown //= block_tokens
        if self.compressed:
            np_minimum(grown, self.cap[:n], out=grown)
        np_maximum(self.blocks[:n], grown, out=self.blocks[:n])

    def _slots_at(self, compare: np.ufunc, row: np.ndarray) -> list[int]:
        """The slots j < n where compare(row[j], tick), in order (the tick as the 0-d `_operand`)."""
        operand = self._operand
        operand[()] = self.tick
        return compare(row[: self.n], operand).nonzero()[0].tolist()

    def finished(self) -> list[int]:
        """Slots whose last token has been scheduled."""
        return self._slots_at(np.less_equal, self.finish_at)

    def reasoning_ended(self) -> list[tuple[int, int]]:
        """Slots whose last reasoning token was scheduled at a tick up to now, with that tick; they are done
        with reasoning from now on."""
        done = self._slots_at(np.less_equal, self.reasoning_at)
        if not done:
            return []
        view = self.v_reasoning_at  # one slot's value read and written as a Python int (see __init__)
        out = [(j, view[j]) for j in done]
        for j in done:
            view[j] = _NEVER
        self._min_reasoning = None
        return out


def periodic_demand(by_first: list[int], n: int, num_steps: int) -> BlockDemand:
    """The closed-form demand of n decodes, `by_first[s]` of them with s further steps left in their blocks (the
    first new block at further step s): before[p] = sum(by_first[:p]), p < B."""
    before = [0] * len(by_first)  # before[p]: decodes whose first new block comes before further step p
    c = 0
    for p in range(1, len(by_first)):
        c += by_first[p - 1]
        before[p] = c
    return BlockDemand(num_steps, None, n, before)


def _capped_growth(stop: np.ndarray, block_tokens: int, num_steps: int) -> np.ndarray:
    """out[s] = sum over slots of #{j >= 0: stop_i + j * B < s}, for s in range(num_steps): the blocks a slot
    would take past its cap (its periodic demand continued from `stop_i` = first_i + room_i * B), which the
    caller subtracts. Its first difference is a stride-B cumulative sum of bincount(stop)."""
    stop = stop[stop < num_steps - 1]
    out = np.zeros(num_steps, np.int64)
    if not len(stop):
        return out
    laps = -(-num_steps // block_tokens)
    g = np.bincount(stop, minlength=laps * block_tokens).reshape(laps, block_tokens)
    h = np.cumsum(g, axis=0).ravel()[: num_steps - 1]  # D(s + 1) - D(s)
    np.cumsum(h, out=out[1:])
    return out


class BlockDemand:
    """The blocks a run's decodes need beyond those held at its start to run its first s + 1 steps (`at(s)`, for
    s < num_steps; 0 at s = 0, whose blocks are allocated when it is planned). Nondecreasing in s.

    Either in closed form: a batch of n decodes that all take their blocks (`Decodes.extra_blocks`) needs
    at(s) = (s // B) * n + before[s % B], `before[p]` (B of them, the period) the decodes whose first new block
    comes before further step p (a piece of a chain too: there, its own decodes' demand, rotated to its start);
    or as an `array` of the values (KV compression's caps, speculative decoding). The closed form costs O(B) to
    make, against numpy over the run's steps (about 45,000 instructions a run, most of them numpy's per-call cost:
    a saturated replica's median run is 34 steps).
    A plain class, as FastForwardRun."""

    __slots__ = ("num_steps", "array", "n", "before", "period")

    def __init__(self, num_steps: int, array: np.ndarray | None, n: int = 0, before: list[int] | None = None) -> None:
        self.num_steps = num_steps
        self.array = array
        self.n = n
        self.before: list[int] = before if before is not None else []
        self.period = len(self.before)

    def __repr__(self) -> str:
        if self.array is not None:
            return f"BlockDemand(num_steps={self.num_steps}, array={self.array!r})"
        return f"BlockDemand(num_steps={self.num_steps}, n={self.n}, before={self.before})"

    def at(self, s: int) -> int:
        array = self.array
        if array is not None:
            return int(array[s])
        period = self.period
        return (s // period) * self.n + self.before[s % period]

    def steps_within(self, free_blocks: int) -> int:
        """The longest prefix of the run whose demand fits in `free_blocks` (as searchsorted(values, free_blocks,
        side="right")): every lap before free // n fits whole, and of the next, the phases whose `before` fits in
        what is left."""
        array = self.array
        if array is not None:
            return int(array.searchsorted(free_blocks, side="right"))
        n = self.n
        if n == 0:
            return self.num_steps
        laps = free_blocks // n
        left = free_blocks - laps * n
        fit = 0
        for b in self.before:
            if b > left:
                break
            fit += 1
        return min(laps * self.period + fit, self.num_steps)

    def values(self, done: int) -> np.ndarray:
        """at(s) for s < done, as an int64 array."""
        array = self.array
        if array is not None:
            return array[:done]
        laps, phase = np.divmod(np.arange(done, dtype=np.int64), self.period)
        out: np.ndarray = np.multiply(laps, self.n)
        np_add(out, np.array(self.before, np.int64)[phase], out)
        return out


NO_DEMAND = BlockDemand(0, np.zeros(0, np.int64))


def ends_before(bounds: StepTimes, t: float, last: int, scratch: np.ndarray) -> int:
    """How many of a run's step ends bounds[1], ..., bounds[last] (increasing) are before t. `scratch`: a 0-d float
    array the caller lends to hold t for numpy (which converts a Python float for longer than the search takes).
    A short run's ends are a list (perf.base.StepTimes), searched with bisect: the same count."""
    if isinstance(bounds, list):
        return bisect_left(bounds, t, 1, last + 1) - 1
    scratch[()] = t
    return int(bounds[1: last + 1].searchsorted(scratch, side="left"))


def ends_by(bounds: StepTimes, t: float, last: int, scratch: np.ndarray) -> int:
    """How many of bounds[1], ..., bounds[last] are at or before t (as `ends_before`)."""
    if isinstance(bounds, list):
        return bisect_right(bounds, t, 1, last + 1) - 1
    scratch[()] = t
    return int(bounds[1: last + 1].searchsorted(scratch, side="right"))


class FastForwardRun:
    """A run of decode-only steps in flight: `bounds[i]` is the end of step i (bounds[0] its start), `times[i]`
    step i+1's duration, `extra.at(i)` the blocks the decodes need beyond those held at its start to run i+1 steps,
    `num_steps` its planned length and `allocated` the blocks taken so far (KV is allocated as each step starts,
    exactly as stepping would, when someone looks at the replica mid-run). `context_sum`: the decodes' contexts
    at its first step, summed; under KV compression, `contexts` each decode's kept context at its first step and
    `caps` its kept-token cap (same order). `bounds` and `times` are float arrays, or lists of floats for a short
    run whose step times came as a list (perf.base.StepTimes), with the same values.

    A plain class, not a dataclass: compiled, its constructor is a direct call (a dataclass's generated __init__
    runs as Python, about 4,000 instructions a call, and a saturated replica makes one or two runs an event)."""

    __slots__ = ("bounds", "times", "extra", "num_steps", "num_decodes", "used_at_start", "allocated",
                 "context_sum", "contexts", "caps")

    def __init__(self, bounds: StepTimes, times: StepTimes, extra: BlockDemand, num_steps: int, num_decodes: int,
                 used_at_start: int, allocated: int = 0, context_sum: float = 0.0,
                 contexts: np.ndarray | None = None, caps: np.ndarray | None = None) -> None:
        self.bounds = bounds
        self.times = times
        self.extra = extra
        self.num_steps = num_steps
        self.num_decodes = num_decodes
        self.used_at_start = used_at_start
        self.allocated = allocated
        self.context_sum = context_sum
        self.contexts = contexts
        self.caps = caps

    def __repr__(self) -> str:
        return (f"FastForwardRun(num_steps={self.num_steps}, num_decodes={self.num_decodes}, "
                f"used_at_start={self.used_at_start}, allocated={self.allocated}, context_sum={self.context_sum})")

    def kv_integrals(self, done: int, scalar_up_to: int = _SCALAR_INTEGRALS) -> tuple[float, float]:
        """Over the run's first `done` steps: (the integral over time of the blocks taken beyond those held at its
        start, of the KV tokens its decodes attend over). Each is the sum over the steps of a step's value times
        its duration, added in step order (ordered_dot), with floats for a run of at most `scalar_up_to` steps
        and with arrays for a longer one (the same operations in the same order: the same bits)."""
        if done == 0:
            return 0.0, 0.0
        if self.contexts is None and done <= scalar_up_to:
            # Whole numbers below 2**53 are exact as floats, and so are their sums: the running float `context`
            # holds the closed form's context_sum + n*i exactly.
            run_times = self.times
            times: list[float] = run_times[:done] if isinstance(run_times, list) else run_times[:done].tolist()
            context = self.context_sum
            step = float(self.num_decodes)
            extra_area = 0.0
            token_area = 0.0
            demand = self.extra
            if demand.array is None:  # the closed form's values, step by step: extra = lap + before[phase]
                before = demand.before
                period = demand.period
                per_lap = demand.n
                lap = 0
                phase = 0
                for t in times:
                    extra_area += (lap + before[phase]) * t
                    token_area += context * t  # the closed form below, at this step
                    context += step
                    phase += 1
                    if phase == period:
                        phase = 0
                        lap += per_lap
                return extra_area, token_area
            extra: list[int] = demand.array[:done].tolist()
            for i in range(done):
                t = times[i]
                extra_area += extra[i] * t
                token_area += context * t
                context += step
            return extra_area, token_area
        times_a = np.asarray(self.times[:done])
        if self.contexts is None:  # kept_context_sums' sums (all contexts grow by one a step), in closed form
            sums = np.multiply(step_indices(done), float(self.num_decodes))
            np_add(sums, self.context_sum, sums)
        else:
            sums, _ = kept_context_sums(self.contexts, self.caps, done)
        return ordered_dot(self.extra.values(done), times_a), ordered_dot(sums, times_a)

    def steps_started(self, now_s: float, scratch: np.ndarray) -> int:
        """Steps of the run planned by `now_s`: the first, and each whose start is before now (a step starting
        exactly now is planned after every arrival at now is seen). `scratch`: a 0-d float array the caller lends
        to hold now_s for numpy (which converts a Python float operand for longer than the search takes)."""
        return min(ends_before(self.bounds, now_s, self.num_steps, scratch) + 1, self.num_steps)


class ChainPiece:
    """A plan predicted inside a fast-forwarded run, one that preempts the newest decodes when blocks run out, and
    the decode steps it begins: `start` is its step in the run (from 0: its plan is made at the run's
    bounds[start]), `num_steps` its steps, `extra` the blocks its decodes need beyond those held at its start to
    run each prefix of it (as FastForwardRun.extra), `num_decodes`, `context_sum` and `context_max` its first
    step's batch. Its plan: `victims` in order as (blocks allocated before it: the oldest decodes take every free
    block, the request, its computed tokens and blocks then, the run's schedules it had taken after the first),
    then `final_alloc` blocks for the decodes left, leaving `free_blocks`. `run`: the piece as a run of its own,
    once its times are known. A plain class, as FastForwardRun."""

    __slots__ = ("start", "num_steps", "extra", "num_decodes", "context_sum", "context_max", "victims",
                 "final_alloc", "free_blocks", "run")

    def __init__(self, start: int, num_steps: int, extra: BlockDemand, num_decodes: int, context_sum: int,
                 context_max: int, victims: list[tuple[int, Request, int, int, int]], final_alloc: int,
                 free_blocks: int, run: FastForwardRun | None = None) -> None:
        self.start = start
        self.num_steps = num_steps
        self.extra = extra
        self.num_decodes = num_decodes
        self.context_sum = context_sum
        self.context_max = context_max
        self.victims = victims
        self.final_alloc = final_alloc
        self.free_blocks = free_blocks
        self.run = run

    def __repr__(self) -> str:
        return (f"ChainPiece(start={self.start}, num_steps={self.num_steps}, num_decodes={self.num_decodes}, "
                f"context_sum={self.context_sum}, context_max={self.context_max}, victims={len(self.victims)}, "
                f"final_alloc={self.final_alloc}, free_blocks={self.free_blocks})")
