"""The decoding sequences of one replica as arrays (struct of arrays), and the fast-forwarded run of decode steps.

A decode step never loops over the batch in Python: contexts, tokens left and blocks are numpy arrays indexed by
slot, and a run of steps whose membership cannot change is advanced in closed form (`FastForwardRun`), giving
exactly the times, blocks and token counts that stepping one iteration at a time gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simserve.request import Request


class Decodes:
    """Requests whose known tokens are all in the KV cache, each generating one token per step.

    Per slot j < n: `ctx` tokens computed (in the KV cache, as vLLM's num_computed_tokens: advanced when a step is
    scheduled), `left` output tokens still to schedule, `answer` answer tokens (reasoning ends when left reaches
    it), `blocks` KV blocks held, `seq` the running-order key (admission order; the scheduler's victim is the
    largest), and the Request. A request's `slot` attribute names its slot.
    """

    def __init__(self, capacity: int) -> None:
        self.ctx = np.zeros(capacity, np.int64)
        self.left = np.zeros(capacity, np.int64)
        self.answer = np.zeros(capacity, np.int64)
        self.blocks = np.zeros(capacity, np.int64)
        self.seq = np.zeros(capacity, np.int64)
        self.ctx0 = np.zeros(capacity, np.int64)  # ctx when it joined: a decode step was scheduled iff ctx > ctx0
        self.req: list[Request | None] = [None] * capacity
        self.n = 0

    def add(self, req: Request, num_blocks: int) -> None:
        j = self.n
        self.ctx[j] = req.computed_tokens
        self.left[j] = req.output_tokens - req.generated_tokens
        self.answer[j] = req.answer_tokens
        self.blocks[j] = num_blocks
        self.seq[j] = req.seq
        self.ctx0[j] = req.computed_tokens
        self.req[j] = req
        req.slot = j
        self.n = j + 1

    def sync(self, j: int) -> Request:
        """Write slot j's progress back to its Request (before it leaves the arrays or is reported)."""
        req = self.req[j]
        assert req is not None
        req.computed_tokens = int(self.ctx[j])
        req.generated_tokens = req.output_tokens - int(self.left[j])
        return req

    def remove(self, j: int) -> Request:
        """Take slot j out (the last slot moves into it); returns its request (not synced: `sync` first if its
        progress is needed)."""
        req = self.req[j]
        assert req is not None
        last = self.n - 1
        if j != last:
            for a in (self.ctx, self.left, self.answer, self.blocks, self.seq, self.ctx0):
                a[j] = a[last]
            moved = self.req[last]
            assert moved is not None
            self.req[j] = moved
            moved.slot = j
        self.req[last] = None
        req.slot = -1
        self.n = last
        return req

    def requests(self) -> list[Request]:
        return [r for r in self.req[: self.n] if r is not None]

    def block_needs(self, block_tokens: int) -> np.ndarray:
        """1 for each slot whose next token needs a new block (its context fills the blocks it holds)."""
        n = self.n
        return (self.ctx[:n] >= self.blocks[:n] * block_tokens).astype(np.int64)

    def extra_blocks(self, block_tokens: int, num_steps: int, buf: np.ndarray) -> np.ndarray:
        """extra[s-1] = blocks the decodes need beyond those held now to run s more steps after the one just
        planned (extra[0] = 0: that step's blocks are allocated).

        After a step's allocation a sequence with c computed tokens (its new token included) holds b blocks
        covering c; it needs another at step b*B - c + 1 and every B steps after, so the demand is periodic in
        the step index with period B (block_tokens)."""
        n = self.n
        first = self.blocks[:n] * block_tokens - self.ctx[:n]  # further steps that fit in the blocks held
        np.cumsum(np.bincount(first, minlength=block_tokens), out=buf[1:])
        laps, phase = np.divmod(np.arange(num_steps, dtype=np.int64), block_tokens)
        laps *= n
        laps += buf[phase]
        return laps

    def advance(self, num_steps: int, block_tokens: int) -> int:
        """Apply `num_steps` more decode steps to every slot (their schedules, after the one already applied):
        contexts grow, tokens left shrink and blocks grow to cover the contexts. Returns the blocks added."""
        n = self.n
        self.ctx[:n] += num_steps
        self.left[:n] -= num_steps
        grown = -(-self.ctx[:n] // block_tokens)
        before = int(self.blocks[:n].sum())
        np.maximum(self.blocks[:n], grown, out=self.blocks[:n])
        return int(self.blocks[:n].sum()) - before


@dataclass(slots=True)
class FastForwardRun:
    """A run of decode-only steps in flight: `bounds[i]` is the end of step i (bounds[0] its start), `times[i]`
    step i+1's duration, `extra[i]` the blocks the decodes need beyond those held at its start to run i+1 steps,
    `num_steps` its planned length and `allocated` the blocks taken so far (KV is allocated as each step starts,
    exactly as stepping would, when someone looks at the replica mid-run)."""

    bounds: np.ndarray
    times: np.ndarray
    extra: np.ndarray
    num_steps: int
    num_decodes: int
    used_at_start: int
    allocated: int = 0

    def steps_started(self, now_s: float) -> int:
        """Steps of the run planned by `now_s`: the first, and each whose start is before now (a step starting
        exactly now is planned after every arrival at now is seen)."""
        return min(int(np.searchsorted(self.bounds[1:], now_s, side="left")) + 1, self.num_steps)

    def steps_done(self, now_s: float) -> int:
        """Steps of the run completed by `now_s`."""
        return min(int(np.searchsorted(self.bounds[1:], now_s, side="right")), self.num_steps)
