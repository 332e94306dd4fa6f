"""The SimPy processes: a replica's iteration loop (continuous batching over paged KV memory, as vLLM V1
schedules it) and the arrival front end that routes requests to replicas.

Time lives here; decisions are plain code. Decoding sequences are held as arrays (struct of arrays), so a step
never loops over the batch in Python, and a run of decode steps whose membership cannot change is advanced in
one event, in closed form, giving exactly the times that stepping one iteration at a time gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import numpy as np
import simpy
from simpy.core import URGENT

from simserve.kv import KvBlockPool, blocks_for
from simserve.metrics import LevelMonitor, Recorder
from simserve.perf import Batch, PerfModel
from simserve.request import Request
from simserve.schedulers import Fcfs

_EMPTY = np.zeros(0, dtype=np.int64)


class Arrival(simpy.Event):
    """A timeout with URGENT priority: an arrival at the same instant as a step boundary is processed first, so
    the scheduling decision at that boundary sees it, in fast-forward and step-by-step modes alike."""

    def __init__(self, env: simpy.Environment, delay_s: float) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, URGENT, delay_s)


LATE = 2  # after URGENT (0, arrivals) and NORMAL (1, step ends): a replica plans once its instant has settled


class Settle(simpy.Event):
    """Resume at the current instant, after every arrival and step end scheduled for it. A plan at time t must
    see every request that arrives at t, including a follow-up turn created by another replica's step ending at
    the same t; without this, the order of same-time events (which differs between fast-forward and
    step-by-step) would decide."""

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__(env)
        self._ok = True
        self._value = None
        env.schedule(self, LATE, 0)  # type: ignore[arg-type]  # a third priority, below NORMAL


class _Stall(Exception):
    """A plan would preempt the last running request while KV transfers hold blocks: wait for them instead."""


class Replica:
    """One model instance on `tensor_parallel` GPUs: a waiting queue, a running batch and a KV block pool.

    Each step mirrors vLLM V1's scheduler: running decodes take one token each (allocating a block when one
    fills), then running chunked prefills, then waiting requests in scheduler order, within
    `max_num_batched_tokens` and `max_num_seqs`. When blocks run out the newest running request is preempted by
    recompute; waiting requests are not admitted in a step that preempted.
    """

    def __init__(self, env: simpy.Environment, *, pool: str, index: int, perf: PerfModel,
                 kv_capacity_blocks: int, kv_block_tokens: int, max_num_seqs: int,
                 max_num_batched_tokens: int, max_model_len_tokens: int, scheduler: Fcfs,
                 recorder: Recorder, on_done: Callable[[Request], None], exact_steps: bool = False,
                 check_invariants: bool = False, prefix_caching: bool = False,
                 on_prefilled: Callable[[Replica, Request], None] | None = None) -> None:
        self.env = env
        self.pool = pool
        self.index = index
        self.perf = perf
        self.kv = KvBlockPool(kv_capacity_blocks, kv_block_tokens, prefix_caching)
        self.block_tokens = kv_block_tokens
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_tokens = min(max_model_len_tokens, self.kv.capacity_tokens)
        self.waiting = scheduler
        self.recorder = recorder
        self.on_done = on_done
        self.exact_steps = exact_steps
        # Prefill/decode disaggregation: a prefill replica hands a request over once its first token is out.
        self.on_prefilled = on_prefilled
        self.transferring: dict[int, tuple[Request, int]] = {}  # request id -> (request, blocks still held)
        self._stalled = False
        self.check_invariants = check_invariants
        # Decoding sequences, struct of arrays; slots [0, n_dec) are live.
        cap = max_num_seqs
        self.d_ctx = np.zeros(cap, np.int64)  # tokens in KV cache
        self.d_left = np.zeros(cap, np.int64)  # output tokens still to generate
        self.d_blocks = np.zeros(cap, np.int64)
        self.d_order = np.zeros(cap, np.int64)  # admission sequence number (preemption picks the largest)
        self.d_req: list[Request | None] = [None] * cap
        self.n_dec = 0
        self.prefilling: list[Request] = []  # admitted, prompt not fully computed; admission order
        self._admit_seq = 0
        self.wake = env.event()
        self.num_events = 0
        self.running_mon = LevelMonitor(env.now)
        self.waiting_mon = LevelMonitor(env.now)
        self.kv_area = 0.0  # integral of used blocks over time
        self.kv_peak = 0
        self._cum_buf = np.zeros(kv_block_tokens + 1, np.int64)
        # The fast-forwarded run in flight: [boundaries, n, extra blocks per step, steps k, blocks allocated so far]
        self._run: list[Any] | None = None

    # ------------------------------------------------------------------------------------------ public surface

    @property
    def num_running(self) -> int:
        return self.n_dec + len(self.prefilling)

    @property
    def num_outstanding(self) -> int:
        return self.num_running + len(self.waiting)

    @property
    def free_kv_blocks(self) -> int:
        """Blocks a new request could get now: free plus evictable cached blocks."""
        self._sync_run()
        return self.kv.available_blocks

    def prefix_hit_tokens(self, req: Request) -> int:
        """Prompt tokens of `req` that would be served from this replica's prefix cache now."""
        self._sync_run()
        return self._prefix_hit_units(req) * req.prefix_unit_tokens

    def enqueue(self, req: Request) -> None:
        """Accept a routed request now: queue it, or reject it at once if it could never fit."""
        req.pool, req.replica = self.pool, self.index
        if req.total_tokens > self.max_tokens:
            req.status = "rejected"
            req.reason = (f"needs {req.total_tokens} tokens of KV; replica holds at most {self.max_tokens} "
                          f"(KV capacity {self.kv.capacity_tokens}, max_model_len)")
            self.on_done(req)
            return
        self.waiting.push(req)
        self.waiting_mon.set(self.env.now, len(self.waiting))
        if not self.wake.triggered:
            self.wake.succeed()

    def unfinished(self) -> Iterator[Request]:
        """Requests still queued or running (at the end of a run that hit its horizon)."""
        yield from self.waiting
        yield from self.prefilling
        yield from (r for r, _ in self.transferring.values())
        for j in range(self.n_dec):
            req = self.d_req[j]
            assert req is not None
            req.generated_tokens = req.output_tokens - int(self.d_left[j])
            yield req

    def settle(self, now: float) -> None:
        """Account for the decode steps of a fast-forwarded run completed by `now` (the run's horizon)."""
        if self._run is None:
            return
        bounds, n, extra, k, _ = self._run
        m = min(int(np.searchsorted(bounds[1:], now, side="right")), k)
        if m > 0:
            self._advance_decodes(n, m, extra)
        self._run = None

    def _sync_run(self) -> None:
        """Bring KV allocation up to now inside a fast-forwarded run: blocks for every step started by now (and
        the evictions they force), exactly as stepping one iteration at a time would have allocated them."""
        run = self._run
        if run is None:
            return
        bounds, _, extra, k, applied = run
        started = int(np.searchsorted(bounds[1:], self.env.now, side="left"))  # steps before the one in flight
        target = int(extra[min(started, k - 1)])
        if target > applied:
            self.kv.allocate(target - applied)
            run[4] = target

    # ------------------------------------------------------------------------------------------ the process

    def _wait_for_wake(self, num_waiting: int, kv_mean: float,
                       kv_end: int | None) -> Generator[simpy.Event, Any, None]:
        """Idle until an arrival or a finished KV transfer wakes the loop; record the gap as one segment (its
        final KV blocks as read on waking when kv_end is None)."""
        start = self.env.now
        self.num_events += 1
        yield self.wake
        end = self.kv.used_blocks if kv_end is None else kv_end
        self.recorder.segment(self.pool, self.index, start, self.env.now, 0, 0, num_waiting, kv_mean, end, 0, 0)

    def process(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        while True:
            if env.peek() == env.now:
                self.num_events += 1
                yield Settle(env)
            if self.wake.triggered:
                self.wake = env.event()
            if self.num_running == 0 and not self.waiting:
                yield from self._wait_for_wake(0, 0.0, 0)
                continue
            now = env.now
            num_waiting = len(self.waiting)
            chunks, preempted = self._schedule()
            n = self.n_dec
            ctx = self.d_ctx[:n] + 1
            used = self.kv.used_blocks
            self.kv_peak = max(self.kv_peak, used)
            if self._stalled or (n == 0 and not chunks and not preempted):
                # Nothing can run: what is waiting (or a decode's next block) needs blocks still held by KV
                # transfers to decode replicas. Wait, as when idle, for a transfer or an arrival to wake the loop.
                self._stalled = False
                yield from self._wait_for_wake(num_waiting, float(used), None)
                continue
            if chunks or preempted or self.exact_steps:
                batch = Batch(ctx, np.array([c for _, c in chunks], np.int64) if chunks else _EMPTY,
                              np.array([r.computed_tokens for r, _ in chunks], np.int64) if chunks else _EMPTY)
                dt = self.perf.step_time_s(batch)
                self.num_events += 1
                yield env.timeout(dt)
                self.kv_area += used * dt
                self._complete_step(chunks)
                self.recorder.segment(self.pool, self.index, now, env.now, 1, n + len(chunks), num_waiting,
                                      float(used), self.kv.used_blocks, sum(c for _, c in chunks), n)
                continue
            # Fast-forward: a decode-only batch whose membership cannot change until a sequence finishes, a
            # block runs out, or a request arrives (no admission is possible now, and free blocks only shrink).
            min_left = int(self.d_left[:n].min())
            extra = self._extra_blocks(n, min_left)
            k = int(np.searchsorted(extra, self._run_block_limit(), side="right"))
            times = self.perf.decode_run_times_s(ctx, k)
            bounds = np.cumsum(np.concatenate(([now], times)))
            self._run = [bounds, n, extra, k, 0]
            end = env.timeout(bounds[k] - now)
            self.num_events += 1
            yield end | self.wake
            if end.processed:
                m = k
            else:
                t = env.now
                j = int(np.searchsorted(bounds[1:], t, side="right"))  # boundaries at or before t
                if j >= 1 and bounds[j] == t:
                    m = j
                else:
                    m = j + 1  # let the step in flight finish
                    self.num_events += 1
                    yield env.timeout(bounds[m] - t)
            self._advance_decodes(n, m, extra)
            self._run = None
            area = used * float(bounds[m] - now) + float(np.dot(extra[:m], times[:m]))
            self.kv_area += area
            self.kv_peak = max(self.kv_peak, used + int(extra[m - 1]))
            kv_mean = area / (bounds[m] - now) if bounds[m] > now else float(used)
            if m == min_left:
                self._finish_decodes()
            self.recorder.segment(self.pool, self.index, now, env.now, m, n, num_waiting, kv_mean,
                                  self.kv.used_blocks, 0, n * m)

    # ------------------------------------------------------------------------------------------ decisions

    def _schedule(self) -> tuple[list[tuple[Request, int]], bool]:
        """Plan one step; allocate its blocks. Returns the prefill chunks (request, new tokens) and whether a
        request was preempted. Decodes are the live slots of the arrays. If the step would have to preempt the
        last running request while KV transfers hold blocks, it plans nothing and the replica waits for them
        (`_stalled`); blocks it already took stay with their requests and count at the next plan."""
        try:
            return self._plan()
        except _Stall:
            self._stalled = True
            self.running_mon.set(self.env.now, self.num_running)
            return [], False

    def _plan(self) -> tuple[list[tuple[Request, int]], bool]:
        kv, bt = self.kv, self.block_tokens
        preempted = False
        # KV that arrived from a prefill replica: the request joins the decodes at once, no compute needed.
        while self.waiting and self.waiting.peek().kv_ready and self.num_running < self.max_num_seqs:
            req = self.waiting.peek()
            nb = blocks_for(req.computed_tokens, bt)
            if nb > kv.available_blocks:
                break
            self.waiting.pop()
            kv.allocate(nb)
            req.num_blocks = nb
            req.kv_ready = False
            req.admit_seq = self._admit_seq
            self._admit_seq += 1
            self._add_decode(req)
        while True:
            n = self.n_dec
            need = self.d_ctx[:n] >= self.d_blocks[:n] * bt
            k = int(np.count_nonzero(need))
            if k <= kv.available_blocks:
                break
            self._preempt_newest()
            preempted = True
        if k:
            kv.allocate(k)
            self.d_blocks[:n] += need
        budget = self.max_num_batched_tokens - n
        chunks: list[tuple[Request, int]] = []
        i = 0
        while i < len(self.prefilling) and budget > 0:
            req = self.prefilling[i]
            c = min(req.known_tokens - req.computed_tokens, budget)
            extra = blocks_for(req.computed_tokens + c, bt) - req.num_blocks
            victim = None
            while extra > kv.available_blocks and victim is not req:
                victim = self._preempt_newest()
                preempted = True
            if victim is req:
                break
            kv.allocate(extra)
            req.num_blocks += extra
            chunks.append((req, c))
            budget -= c
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and self.num_running < self.max_num_seqs:
                req = self.waiting.peek()
                if req.kv_ready:
                    break  # admitted at the start of the next step, with the decodes
                hit = self._prefix_hit_units(req)
                keys = req.prefix_keys[:hit] if hit and req.prefix_keys else ()
                hit_tokens = hit * req.prefix_unit_tokens
                c = min(req.known_tokens - hit_tokens, budget)
                shared = hit_tokens // bt
                nb = blocks_for(hit_tokens + c, bt) - shared
                if nb + (kv.unheld_blocks(keys) if keys else 0) > kv.available_blocks:
                    break
                self.waiting.pop()
                if keys:
                    kv.acquire(keys)
                    req.held_units = list(keys)
                kv.allocate(nb)
                req.shared_blocks = shared
                req.num_blocks = shared + nb
                req.computed_tokens = hit_tokens
                if req.num_preemptions == 0:
                    req.prefix_hit_tokens = hit_tokens
                req.admit_seq = self._admit_seq
                self._admit_seq += 1
                self.prefilling.append(req)
                chunks.append((req, c))
                budget -= c
            self.waiting_mon.set(self.env.now, len(self.waiting))
        self.running_mon.set(self.env.now, self.num_running)
        if self.check_invariants:
            self._check()
        return chunks, preempted

    def _run_block_limit(self) -> int:
        """Blocks a fast-forwarded run may take. Normally all available ones: a waiting request that cannot be
        admitted now cannot be later in the run, as blocks only shrink. But if the head of the queue would hit
        cached units nobody holds, evicting one of them makes its admission cheaper by a whole unit; so the run
        then stops before any eviction, and those steps are taken one plan at a time."""
        if self.waiting:
            head = self.waiting.peek()
            hit = 0 if head.kv_ready else self._prefix_hit_units(head)
            if hit and head.prefix_keys and self.kv.unheld_blocks(head.prefix_keys[:hit]):
                return self.kv.free_blocks
        return self.kv.available_blocks

    def _extra_blocks(self, n: int, max_steps: int) -> np.ndarray:
        """extra[s-1] = blocks the decodes need beyond those held now to run s steps (s = 1..max_steps).

        After this step's allocation a sequence with c tokens holds b blocks covering c + 1; it needs another at
        step b*B - c + 1 and every B steps after, so the demand is periodic in the step index with period B.
        """
        bt = self.block_tokens
        first = self.d_blocks[:n] * bt - self.d_ctx[:n] - 1  # steps (after the first) before the next block
        cum = self._cum_buf
        np.cumsum(np.bincount(first, minlength=bt), out=cum[1:])
        laps, phase = np.divmod(np.arange(max_steps, dtype=np.int64), bt)  # steps after the first
        laps *= n
        laps += cum[phase]
        return laps

    def _preempt_newest(self) -> Request:
        """Preempt the most recently admitted running request by recompute: free its blocks and put it back at
        the front of the waiting queue, keeping the output it has generated."""
        if self.num_running <= 1 and self.transferring:
            raise _Stall
        last_prefill = self.prefilling[-1].admit_seq if self.prefilling else -1
        j = int(np.argmax(self.d_order[: self.n_dec])) if self.n_dec else -1
        if j >= 0 and self.d_order[j] > last_prefill:
            req = self.d_req[j]
            assert req is not None
            req.generated_tokens = req.output_tokens - int(self.d_left[j])
            self._keep_for_resume(req, int(self.d_ctx[j]))
            self._release(req, int(self.d_blocks[j]))
            self._remove_decode(j)
        else:
            req = self.prefilling.pop()
            self._keep_for_resume(req, req.computed_tokens)
            self._release(req, req.num_blocks)
        if self.n_dec == 0 and not self.prefilling:
            raise RuntimeError("preempted the only running request: a request larger than KV capacity was admitted")
        req.computed_tokens = 0
        req.num_blocks = 0
        req.num_preemptions += 1
        self.waiting.push_front(req)
        self.waiting_mon.set(self.env.now, len(self.waiting))
        return req

    # ------------------------------------------------------------------------------------------ state updates

    def _complete_step(self, chunks: list[tuple[Request, int]]) -> None:
        """End of one step: every decode produced a token; every prefill chunk is in cache, and a request whose
        known tokens are all computed samples its next token (its first, unless it was preempted)."""
        now = self.env.now
        n = self.n_dec
        self.d_ctx[:n] += 1
        self.d_left[:n] -= 1
        self._finish_decodes()
        for req, c in chunks:
            req.computed_tokens += c
            if req.computed_tokens < req.known_tokens:
                continue
            req.generated_tokens += 1
            if math.isnan(req.first_token_s):
                req.first_token_s = now
            self.prefilling.remove(req)
            if req.prefix_keys and self.kv.prefix_caching:
                self._cache_prompt(req)
            if req.generated_tokens >= req.output_tokens:
                self._release(req, req.num_blocks)
                self._done(req)
            elif self.on_prefilled is not None:
                self.transferring[req.request_id] = (req, req.num_blocks)
                self.on_prefilled(self, req)
            else:
                self._add_decode(req)
        self.running_mon.set(now, self.num_running)

    def transfer_done(self, req: Request) -> None:
        """The request's KV has left for a decode replica: free its blocks here (which may let a waiting request
        in, so wake the loop as an arrival would)."""
        held_req, blocks = self.transferring.pop(req.request_id)
        self._release(held_req, blocks)
        if not self.wake.triggered:
            self.wake.succeed()

    def _add_decode(self, req: Request) -> None:
        """Move a request whose known tokens are all in cache into the decoding arrays."""
        j = self.n_dec
        self.d_ctx[j] = req.computed_tokens
        self.d_left[j] = req.output_tokens - req.generated_tokens
        self.d_blocks[j] = req.num_blocks
        self.d_order[j] = req.admit_seq
        self.d_req[j] = req
        self.n_dec = j + 1

    def _advance_decodes(self, n: int, m: int, extra: np.ndarray) -> None:
        """Apply m fast-forwarded decode steps: contexts grow by m and blocks by what they needed."""
        if self.check_invariants:
            assert n == self.n_dec and 1 <= m <= len(extra)
        self.d_ctx[:n] += m
        self.d_left[:n] -= m
        applied = self._run[4] if self._run is not None else 0
        added = int(extra[m - 1]) - applied
        if int(extra[m - 1]):
            grown = -(-self.d_ctx[:n] // self.block_tokens)
            if self.check_invariants:
                assert int(np.maximum(self.d_blocks[:n], grown).sum() - self.d_blocks[:n].sum()) == extra[m - 1]
            np.maximum(self.d_blocks[:n], grown, out=self.d_blocks[:n])
            if added:
                self.kv.allocate(added)

    def _finish_decodes(self) -> None:
        done = np.flatnonzero(self.d_left[: self.n_dec] == 0)
        for j in done[::-1]:
            req = self.d_req[j]
            assert req is not None
            req.generated_tokens = req.output_tokens
            self._release(req, int(self.d_blocks[j]))
            self._remove_decode(int(j))
            self._done(req)
        if len(done):
            self.running_mon.set(self.env.now, self.num_running)

    def _remove_decode(self, j: int) -> None:
        last = self.n_dec - 1
        if j != last:
            self.d_ctx[j] = self.d_ctx[last]
            self.d_left[j] = self.d_left[last]
            self.d_blocks[j] = self.d_blocks[last]
            self.d_order[j] = self.d_order[last]
            self.d_req[j] = self.d_req[last]
        self.d_req[last] = None
        self.n_dec = last

    def _done(self, req: Request) -> None:
        req.finish_s = self.env.now
        req.status = "completed"
        self.on_done(req)

    def _prefix_hit_units(self, req: Request) -> int:
        """Leading prompt units of `req` in this replica's cache, leaving at least one token to compute (the
        step that samples the next token needs one), as vLLM recomputes the last block of a fully cached prompt."""
        keys = req.prefix_keys
        if not keys or not self.kv.prefix_caching or req.prefix_unit_tokens % self.block_tokens:
            return 0
        hit = self.kv.cached_units(keys)
        if hit * req.prefix_unit_tokens >= req.known_tokens:
            hit = (req.known_tokens - 1) // req.prefix_unit_tokens
        return hit

    def _cache_prompt(self, req: Request) -> None:
        """The prompt is computed: its full units become cached units this request holds."""
        assert req.prefix_keys is not None
        unit = req.prefix_unit_tokens
        if unit % self.block_tokens:
            return
        self._hold_units(req, req.prefix_keys[: req.prompt_tokens // unit], unit // self.block_tokens)

    def _hold_units(self, req: Request, keys: Sequence[int], per_unit: int) -> None:
        """Turn the request's private blocks under these units into cached units it holds (units already cached,
        or already held by it, stay as they are)."""
        held = set(req.held_units)
        for key in keys:
            if key not in held and self.kv.insert(key, per_unit):
                req.held_units.append(key)
                req.shared_blocks += per_unit

    def _keep_for_resume(self, req: Request, kv_tokens: int) -> None:
        """With prefix caching, a preempted request's full units stay in the cache (freed tail first) under keys
        of its own, as vLLM hashes every full block: if they survive until it is readmitted, it recomputes only
        what was evicted."""
        if not self.kv.prefix_caching:
            return
        # Requests without prefix keys get units of about 256 tokens: a partial unit is recomputed, but the cache
        # checks a queue head makes at every plan stay short.
        unit = req.prefix_unit_tokens if req.prefix_keys else self.block_tokens * max(1, 256 // self.block_tokens)
        if unit % self.block_tokens:
            return
        n_units = kv_tokens // unit
        keys = list(req.prefix_keys[: req.prompt_tokens // unit]) if req.prefix_keys else []
        own = -((req.request_id + 1) << 24)
        keys.extend(own - i for i in range(len(keys), n_units))
        self._hold_units(req, keys[:n_units], unit // self.block_tokens)
        req.prefix_keys = tuple(keys)
        req.prefix_unit_tokens = unit

    def _release(self, req: Request, total_blocks: int) -> None:
        """Free a request's private blocks and drop its holds on cached units."""
        self.kv.release(total_blocks - req.shared_blocks)
        if req.held_units:
            self.kv.release_units(req.held_units[::-1])
            req.held_units = []
        req.shared_blocks = 0

    def _check(self) -> None:
        """Block conservation: used blocks are the running requests' private blocks plus the held cached units."""
        n = self.n_dec
        shared = [r.shared_blocks for r in self.d_req[:n] if r is not None]
        private = int(self.d_blocks[:n].sum()) - sum(shared)
        private += sum(r.num_blocks - r.shared_blocks for r in self.prefilling)
        private += sum(blocks - r.shared_blocks for r, blocks in self.transferring.values())
        assert private + self.kv.held_unit_blocks() == self.kv.used_blocks, (private, self.kv.used_blocks)
        self.kv.check()
        assert self.num_running <= self.max_num_seqs
        bt = self.block_tokens
        n = self.n_dec
        assert np.all(self.d_blocks[:n] * bt >= self.d_ctx[:n] + 0)
        assert all(r.num_blocks * bt >= r.computed_tokens for r in self.prefilling)


def arrivals(env: simpy.Environment, requests: Iterator[Request], route: Callable[[Request], None],
             counter: list[int], on_exhausted: Callable[[], None]) -> Generator[simpy.Event, Any, None]:
    """The front end: wait for each request's arrival time and hand it to the router."""
    for req in requests:
        counter[0] += 1
        yield Arrival(env, max(0.0, req.arrival_s - env.now))
        route(req)
    on_exhausted()
