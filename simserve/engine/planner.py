"""The step plan of one replica, as plain code on plain state (no SimPy): vLLM V1's `Scheduler.schedule()`.

Shaped like vLLM 0.33 (vllm/v1/core/sched/scheduler.py) and checked step for step against it
(tests/test_vllm_conformance.py):

1. Running requests first, in running order (admission order; a resumed request joins at the end). Each asks for
   the tokens it still has to compute (a decode 1, a prefill chunk the rest of its known tokens, capped by
   `long_prefill_token_threshold` when more than one request is running or waiting), within the step's token
   budget (`max_num_batched_tokens`). If its KV blocks cannot be allocated, the newest running request is
   preempted (recompute: its blocks freed, put back at the front of the waiting queue), until the allocation
   fits or the request preempted itself; then the running pass stops.
2. Then, only if nothing was preempted, waiting requests in scheduler order while budget and `max_num_seqs` allow:
   a prefix-cache lookup (leaving the last token to compute), a chunk of the rest (or, with chunked prefill off,
   the whole rest or stop), and admission only if the blocks of the whole known sequence fit in free blocks
   (vLLM's `scheduler_reserve_full_isl`), counting cached blocks it hits that nobody holds.

Forked samples of one prompt (parallel sampling) share its full blocks through the prefix cache, as vLLM's n child
requests do (`_prompt_chain`); `abort` takes a request out wherever it is, as vLLM's abort does.

Computed-token counts advance when a step is planned (vLLM's `_update_after_schedule`); sampled tokens are
delivered, and finished requests freed, when the step's outputs are applied (`finish`). Under async scheduling
(vLLM's two-deep batch queue) the next step is planned before the previous step's outputs are applied: a request
whose last token is in flight is skipped, but still holds its blocks and its running slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from mypy_extensions import mypyc_attr

from simserve.engine.decodes import Decodes
from simserve.engine.kv import NO_EXTENTS, KvBlockPool, KvHold, added, blocks_for
from simserve.perf.base import amax, asum, context_sum, count_nonzero
from simserve.request import Request
from simserve.schedulers import FairShare, Fcfs, ReasoningAware, Scheduler

_EMPTY: Final = np.zeros(0, dtype=np.int64)
# A plan's lists start as these shared empty ones and get their own on their first item (`StepPlan.add_*`): most
# plans fill one or two of their six lists, and an empty list made and freed costs about 200 instructions. Never
# appended to (tests/test_planner.py checks they stay empty).
NO_REQUESTS: Final[list[Request]] = []
NO_CHUNKS: Final[list[tuple[Request, int, int]]] = []
_FORK_KEYS: Final = 1 << 64  # fork block keys lie in [2**64, 2**129): above every int64 key a workload gives


def fork_block_key(fork_key: int, block: int) -> int:
    """The prefix-cache key of block `block` (from 0) of the prompt shared by the requests forked under
    `fork_key` (non-zero, an int64). Workloads key prefix units with int64s (synthetic system prompts and
    sessions below 2**63, trace hash ids) and the pool keys a preempted request's own blocks with negative ints,
    so keys from 2**64 up cannot collide with them; (fork_key mod 2**64, block < 2**64) maps one to one onto
    [2**64, 2**129). Equal keys mean equal KV because forked requests share their whole prompt."""
    return _FORK_KEYS + ((fork_key % _FORK_KEYS) << 64) + block


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    """A replica's scheduler limits (vLLM's SchedulerConfig names)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    block_tokens: int
    chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    async_scheduling: bool = False
    reserve_full_isl: bool = True  # admit only if the whole known sequence fits (vLLM's scheduler_reserve_full_isl)
    hand_off_after_prompt: bool = False  # a prefill replica of a disaggregated cluster
    kv_bytes_per_token: float = 0.0  # for KV swapped to host memory (the reasoning_aware scheduler's swap mode)
    kv_compression: bool = False  # requests may keep less KV than their context (Request.kv_keep_tokens)


def _cacheable(req: Request, tokens: int) -> int:
    """Of a request's first `tokens` tokens, those whose full blocks may be cached: all of them, or under KV
    compression the prompt's only (the kept generated KV differs from an uncompressed sequence's)."""
    return min(tokens, req.prompt_tokens) if req.kv_keep_tokens else tokens


class StepPlan:
    """What one planned step computes and what it will deliver."""

    __slots__ = ("decode_context_tokens", "chunks", "preempted", "admitted", "sampled", "reasoning_done",
                 "finishing", "all_decodes", "swap_s", "decode_query_tokens", "_context_sum", "_context_max")

    def __init__(self) -> None:
        self.decode_context_tokens: np.ndarray = _EMPTY  # per scheduled decode, its new token included
        # Read-only lists (added to by `add_*` only, which give a plan its own list on the first item):
        self.chunks: list[tuple[Request, int, int]] = NO_CHUNKS  # (request, new tokens, tokens cached before)
        self.preempted: list[Request] = NO_REQUESTS
        self.admitted: list[Request] = NO_REQUESTS
        self.sampled: list[Request] = NO_REQUESTS  # chunks that complete their known tokens: each samples a token
        self.reasoning_done: list[Request] = NO_REQUESTS  # sample their last reasoning token in this step
        self.finishing: list[Request] = NO_REQUESTS  # sample their last token in this step
        self.all_decodes = False  # every running request is a decode and was scheduled, and nothing else
        self.swap_s = 0.0  # KV moved between host and GPU for this step (swap out and in), seconds of PCIe
        self.decode_query_tokens: np.ndarray | None = None  # speculative decoding: positions each decode verifies
        self._context_sum = -1  # decode_context_sum(), once read
        self._context_max = -1  # decode_context_max(), once read

    def add_chunk(self, req: Request, new_tokens: int, cached_tokens: int) -> None:
        self.chunks = added(self.chunks, NO_CHUNKS, (req, new_tokens, cached_tokens))

    def add_preempted(self, req: Request) -> None:
        self.preempted = added(self.preempted, NO_REQUESTS, req)

    def add_admitted(self, req: Request) -> None:
        self.admitted = added(self.admitted, NO_REQUESTS, req)

    def add_sampled(self, req: Request) -> None:
        self.sampled = added(self.sampled, NO_REQUESTS, req)

    def add_reasoning_done(self, req: Request) -> None:
        self.reasoning_done = added(self.reasoning_done, NO_REQUESTS, req)

    def add_finishing(self, req: Request) -> None:
        self.finishing = added(self.finishing, NO_REQUESTS, req)

    def decode_context_sum(self) -> int:
        """The sum of decode_context_tokens, computed on first read and kept: the step's timing and its KV
        integral both read it (read it once the plan is made: the contexts may be a view of the decode arrays)."""
        total = self._context_sum
        if total < 0:
            total = self._context_sum = context_sum(self.decode_context_tokens)
        return total

    def decode_context_max(self) -> int:
        """The largest of decode_context_tokens (0 if none), as decode_context_sum: given by the planner from the
        decodes' kept maximum, or computed on first read."""
        longest = self._context_max
        if longest < 0:
            dec = self.decode_context_tokens
            longest = self._context_max = int(amax(dec)) if len(dec) else 0
        return longest

    @property
    def num_decodes(self) -> int:
        return len(self.decode_context_tokens)

    @property
    def prefill_tokens(self) -> int:
        return sum(c for _, c, _ in self.chunks)

    @property
    def empty(self) -> bool:
        return not self.chunks and not len(self.decode_context_tokens)

    @property
    def decode_only(self) -> bool:
        """A step whose next steps can be fast-forwarded: decodes only, all of them, nothing admitted or
        preempted, and no request's last token in it."""
        return self.all_decodes and not self.finishing


@mypyc_attr(allow_interpreted_subclasses=True)  # speculative.py's SpecPlanner
class Planner:
    """A replica's scheduling state: the waiting queue, the running requests and the KV pool."""

    def __init__(self, config: PlannerConfig, kv: KvBlockPool, waiting: Scheduler) -> None:
        self.config = config
        self.kv = kv
        self.waiting = waiting
        # The queue's kind, tested once: an isinstance test against a class of an interpreted module is a global
        # lookup and a generic subclass check (about 400 instructions), and a plan made two of them.
        self.fair_share: FairShare | None = waiting if isinstance(waiting, FairShare) else None
        self.reasoning_aware: ReasoningAware | None = waiting if isinstance(waiting, ReasoningAware) else None
        self.decodes = Decodes(config.max_num_seqs, config.block_tokens, config.kv_compression)
        self.prefilling: list[Request] = []  # running, known tokens not all computed, in running order
        self.handing_off: list[Request] = []  # prefill role: prompt done, first token in flight
        self.transferring: dict[int, Request] = {}  # prefill role: KV on its way to a decode replica
        self._next_seq = 0
        self.block_buffer = np.zeros(config.block_tokens + 1, np.int64)  # scratch for Decodes.extra_blocks
        self.swap_bytes = 0.0  # KV bytes moved to and from host memory (both directions)
        # A plan of every decode carries their longest context (kept by the decodes, recounted when the longest
        # leaves) if the replica's step time reads it; else it is counted only if read.
        self.reads_context_max = True
        self._swapped: dict[Request, float] = {}  # waiting requests whose KV is in host memory, their bytes
        self._host_bytes = 0.0

    # ------------------------------------------------------------------------------------------ counts

    @property
    def num_running(self) -> int:
        return self.decodes.n + len(self.prefilling) + len(self.handing_off)

    def hold_of(self, req: Request) -> KvHold:
        """The request's KV hold on this replica (made on first use: its prompt units become its chain)."""
        hold: KvHold | None = req.kv  # typed: `Request.kv` is Any (the leaf module names no engine class)
        if hold is None:
            hold = KvHold(self._prompt_chain(req))
            req.kv = hold
        return hold

    def _prompt_chain(self, req: Request) -> list[tuple[object, int]]:
        """The prompt's cacheable units as (key, blocks): the full units of its prefix keys (when they are whole
        blocks), then, for a forked request (parallel sampling), one unit per further full block keyed by
        `fork_block_key(fork_key, block)`, so the samples of one prompt share its full blocks as vLLM's n
        children do (the last partial block is each sample's own). Nothing with prefix caching off."""
        if not self.kv.prefix_caching:
            return []
        keys, unit = req.prefix_keys, req.prefix_unit_tokens
        bt = self.config.block_tokens
        chain: list[tuple[object, int]] = []
        if keys and unit % bt == 0:
            per_unit = unit // bt
            chain = [(k, per_unit) for k in keys[: req.prompt_tokens // unit]]
        if req.fork_key:
            start = sum(b for _, b in chain)
            chain.extend((fork_block_key(req.fork_key, b), 1) for b in range(start, req.prompt_tokens // bt))
        return chain

    def prefix_hit_tokens(self, req: Request) -> int:
        """Prompt tokens of `req` the prefix cache would serve now (a forked request's siblings' blocks
        included)."""
        if not self.kv.prefix_caching or not (req.prefix_keys or req.fork_key):
            return 0
        hold = req.kv if req.kv is not None else KvHold(self._prompt_chain(req))
        _, hit, _ = self.kv.lookup(hold, (req.known_tokens - 1) // self.config.block_tokens)
        return hit * self.config.block_tokens

    # ------------------------------------------------------------------------------------------ the plan

    def schedule(self) -> StepPlan:
        """Plan one step: allocate its KV blocks, preempt and admit as vLLM would, and advance the computed
        tokens of everything scheduled."""
        plan = StepPlan()
        cfg = self.config
        dec = self.decodes
        waiting = self.waiting
        budget = cfg.max_num_batched_tokens
        threshold = cfg.long_prefill_token_threshold
        if threshold and dec.n + len(self.prefilling) + len(self.handing_off) + len(waiting) <= 1:
            threshold = 0  # nobody to starve (vLLM)
        fair = self.fair_share
        if fair is not None and fair:
            fair.charge({r: r.output_tokens - dec.left(j) for j, r in enumerate(dec.req[: dec.n]) if r})
        yielded = 0
        aware = self.reasoning_aware
        if aware is not None and aware.num_short_waiting and dec.n:
            yielded = self._yield_long(plan, aware)
        if not self._schedule_decodes_first(plan, budget):
            budget = self._schedule_running(plan, budget, threshold, self._running_order())
        else:
            q = plan.decode_query_tokens  # speculative decoding: each decode's verified positions
            budget -= len(plan.decode_context_tokens) if q is None else int(asum(q))
            if self.prefilling or self.handing_off:
                budget = self._schedule_running(plan, budget, threshold, self._running_order(decodes=False))
        if waiting and len(plan.preempted) == yielded:
            self._schedule_waiting(plan, budget, threshold)
        plan.all_decodes = (not plan.chunks and not plan.preempted and not self.prefilling and not self.handing_off
                            and len(plan.decode_context_tokens) == dec.n)
        return plan

    def _schedule_decodes_first(self, plan: StepPlan, budget: int) -> bool:
        """The common case, vectorised: every decode precedes every other running request in running order
        (prefills are the newest), none has its last token in flight, and their blocks and tokens fit: schedule
        them all. False (nothing done) when the general pass must decide."""
        dec, kv = self.decodes, self.kv
        n = dec.n
        if n == 0:
            return True
        if n > budget or dec.countdowns()[0] <= 0:  # async: some last token still in flight
            return False
        others = [*self.prefilling, *self.handing_off] if self.prefilling or self.handing_off else NO_REQUESTS
        if others and int(amax(dec.seq[:n])) > min(r.seq for r in others):
            return False
        need, needs = dec.schedule_all(self.config.block_tokens, kv.free_blocks)
        if need < 0:
            if not self.waiting.newest_victim:
                return False  # the general pass chooses the scheduler's victims
            self._schedule_decodes_preempting(plan, needs, others)
            return True
        if need:
            kv.allocate(need)
        if dec.events_due:
            self._decode_events(plan, *dec.events())
        self._every_decode_scheduled(plan)
        return True

    def _every_decode_scheduled(self, plan: StepPlan) -> None:
        """The plan's decode contexts once every decode slot was scheduled: the kept ones under KV compression, else
        the slots' (a view; a copy under async scheduling) with their sum and, if the replica's step time reads it,
        their maximum, both kept by the decodes."""
        dec = self.decodes
        if dec.compressed:
            plan.decode_context_tokens = dec.kept()
            return
        ctx = dec.ctx[: dec.n]
        plan.decode_context_tokens = ctx.copy() if self.config.async_scheduling else ctx
        plan._context_sum = dec.context_total()
        plan._context_max = dec.context_max() if self.reads_context_max else -1

    def _schedule_decodes_preempting(self, plan: StepPlan, needs: np.ndarray, others: list[Request]) -> None:
        """The decodes' blocks do not fit: vLLM's running pass over them, oldest first. Decodes take their blocks
        in order until one cannot; then the newest running request (the requests after the decodes first, newest
        first, then the newest decode) is preempted, and so on, until it fits or it preempted itself (the pass then
        stops).

        In closed form, without sorting the batch: each decode needs 0 or 1 block, so the decodes before the first
        that cannot get one take exactly the free blocks; the newest decode (the victim) always lies past them, and
        after the pass every decode not preempted is scheduled. The pool sees the same allocations and releases,
        in the same order, as the request-by-request pass."""
        dec, kv = self.decodes, self.kv
        remaining = int(count_nonzero(needs))  # blocks still wanted by decodes neither served nor preempted
        tail = sorted(others, key=lambda r: r.seq)
        gone: list[int] = []
        while remaining > kv.free_blocks:
            free = kv.free_blocks
            if free:
                kv.allocate(free)  # the oldest decodes take every free block, in running order
                remaining -= free
            if tail:
                r = tail.pop()
                self._preempt((r.seq, -2 if r in self.handing_off else -1, r), plan, gone)
                continue
            j = int(dec.seq[: dec.n].argmax())  # the newest decode: never among those just served
            bt = self.config.block_tokens
            have = dec.blocks_of(j)
            remaining -= int(dec.v_ctx[j] >= have * bt and (not dec.compressed or have < dec.v_cap[j]))
            self._preempt((dec.v_seq[j], j, None), plan, gone)
            dec.remove(j)
            gone.clear()
        if remaining:
            kv.allocate(remaining)
        if dec.n:
            n = dec.n
            blocks = dec.fresh_blocks()
            grow = dec.ctx[:n] >= blocks * self.config.block_tokens
            if dec.compressed:
                grow &= blocks < dec.cap[:n]
            dec.schedule_every(grow)
            self._every_decode_scheduled(plan)
            if not dec.events_due:  # the earliest last (reasoning) token, from tick counts kept per slot
                self._end_running_pass(gone)
                return
            finish, reasoning = dec.events()
            if len(finish) > 1:
                finish.sort(key=lambda j: dec.v_seq[j])  # running order, as the pass schedules them
            if len(reasoning) > 1:
                reasoning.sort(key=lambda j: dec.v_seq[j])
            self._decode_events(plan, finish, reasoning)
        self._end_running_pass(gone)

    def _end_running_pass(self, gone_slots: list[int]) -> None:
        """Take the requests preempted in this pass out of the running sets."""
        for j in sorted(gone_slots, reverse=True):
            self.decodes.remove(j)
        if self.prefilling:
            self.prefilling = [r for r in self.prefilling if r.slot != -3]

    def _decode_events(self, plan: StepPlan, finish: list[int], reasoning: list[int]) -> None:
        """Decodes (slots) whose last token, and whose last reasoning token, were just scheduled."""
        dec = self.decodes
        for j in finish:
            plan.add_finishing(dec.sync(j))
        for j in reasoning:
            req = dec.req[j]
            assert req is not None
            plan.add_reasoning_done(req)

    def _running_order(self, decodes: bool = True) -> list[tuple[int, int, Request | None]]:
        """Running requests in running order as (seq, slot, request): slot >= 0 a decode (request None), -1 a
        prefill, -2 a prompt done on a prefill replica (handing off) or a request whose last token is in flight."""
        dec = self.decodes
        order: list[tuple[int, int, Request | None]] = (
            [(int(s), j, None) for j, s in enumerate(dec.seq[: dec.n].tolist())] if decodes else [])
        order.extend((r.seq, -1, r) for r in self.prefilling)
        order.extend((r.seq, -2, r) for r in self.handing_off)
        order.sort(key=lambda e: e[0])
        return order

    def _schedule_running(self, plan: StepPlan, budget: int, threshold: int,
                          order: list[tuple[int, int, Request | None]]) -> int:
        """The general running pass, request by request in running order (prefills among the decodes, blocks
        short, or a request's last token in flight)."""
        dec, kv = self.decodes, self.kv
        bt = self.config.block_tokens
        tail = len(order)  # entries from `tail` on were preempted in this step
        newest = self.waiting.newest_victim
        sched_slots: list[int] = []
        gone_slots: list[int] = []
        i = 0
        while i < tail and budget > 0:
            _, slot, req = order[i]
            if slot == -2 or (slot >= 0 and dec.left(slot) == 0):
                i += 1  # its last token is in flight (async): nothing to compute
                continue
            if slot >= 0:
                new, have, computed = 1, dec.blocks_of(slot), dec.v_ctx[slot]
                keep = dec.v_keep[slot]
            else:
                assert req is not None
                new = req.known_tokens - req.computed_tokens
                if 0 < threshold < new:
                    new = threshold
                new = min(new, budget)
                hold: KvHold | None = req.kv
                assert hold is not None
                have, computed = hold.num_blocks, req.computed_tokens
                keep = req.kv_keep_tokens or computed + new
            need = max(blocks_for(min(computed + new, keep), bt) - have, 0)
            tail, scheduled = self._make_room(need, order, i, tail, newest, plan, gone_slots)
            if not scheduled:
                break
            kv.allocate(need)
            if slot >= 0:
                dec.v_blocks[slot] += need
                dec.schedule_one(slot)
                sched_slots.append(slot)
            else:
                assert req is not None and hold is not None  # the hold read above, this iteration
                hold.private_blocks += need
                self._advance_prefill(plan, req, new)
            budget -= new
            i += 1
        if sched_slots:
            slots = np.array(sched_slots, np.int64)
            plan.decode_context_tokens = dec.kept(slots) if dec.compressed else dec.ctx[slots]
            self._decode_events(plan, *dec.events(slots))
        self._end_running_pass(gone_slots)
        return budget

    def _entry_req(self, entry: tuple[int, int, Request | None]) -> Request:
        """The request of a running-order entry, its progress written back (for the scheduler's victim key)."""
        _, slot, req = entry
        return self.decodes.sync(slot) if slot >= 0 else req  # type: ignore[return-value]

    def _yield_long(self, plan: StepPlan, waiting: ReasoningAware) -> int:
        """The reasoning_aware scheduler's chunk boundaries: while a short request waits that could not be
        admitted as things are (max_num_seqs running, or the blocks of its known tokens not free), preempt
        decoding requests still reasoning whose generated tokens g > long_after_tokens are a multiple of
        chunk_tokens, the longest first, one per short request waiting. Returns how many were preempted."""
        cfg, dec = self.config, self.decodes
        short = waiting.peek()
        if self.num_running < cfg.max_num_seqs and blocks_for(short.known_tokens, cfg.block_tokens) <= \
                self.kv.free_blocks:
            return 0
        steps, _, gen = self.chunk_boundaries(waiting)
        at = (steps == 0).nonzero()[0].tolist()
        if not at:
            return 0
        at.sort(key=lambda j: (-int(gen[j]), dec.v_seq[j]))  # the most generated first, then the oldest
        gone: list[int] = []
        for j in at[: waiting.num_short_waiting]:
            self._preempt((dec.v_seq[j], j, None), plan, gone, yielded=True)
        self._end_running_pass(gone)
        return len(gone)

    def chunk_boundaries(self, waiting: ReasoningAware) -> tuple[np.ndarray, int, np.ndarray]:
        """Per decode slot, the schedules until its generated tokens g next reach a chunk boundary where the
        reasoning_aware scheduler may preempt it (g > long_after_tokens, g a multiple of chunk_tokens, g less than
        its reasoning tokens), 0 if it is at one now, -1 if none is ahead; the fewest of them (-1: none); and each
        slot's g. Called right after a plan (the replica's fast-forward), a slot whose count is c reaches its
        boundary at the start of the plan c + 1 steps later (the plan that would preempt it), so a run of decode
        steps must end there while a short request waits."""
        dec = self.decodes
        n = dec.n
        spec = waiting.spec
        chunk, long_after = spec.chunk_tokens, spec.long_after_tokens
        reasoning = np.fromiter((r.reasoning_tokens for r in dec.req[:n]), np.int64, n)  # type: ignore[union-attr]
        output = np.fromiter((r.output_tokens for r in dec.req[:n]), np.int64, n)  # type: ignore[union-attr]
        gen = output - (dec.finish_at[:n] - dec.tick)
        nxt = np.maximum(-(-gen // chunk), long_after // chunk + 1) * chunk  # the next boundary at or after gen
        out = np.where(nxt < reasoning, nxt - gen, -1)
        ahead = out[out >= 0]
        return out, int(ahead.min()) if len(ahead) else -1, gen

    def _make_room(self, need: int, order: list[tuple[int, int, Request | None]], i: int, tail: int,
                   newest: bool, plan: StepPlan, gone_slots: list[int]) -> tuple[int, bool]:
        """Preempt from the tail of `order` (entries i..tail-1 not yet scheduled) until `need` blocks are free: the
        newest entry, or the scheduler's victim among them moved to the tail. Returns the new tail and whether
        entry i can still be scheduled (False once it was preempted itself)."""
        kv = self.kv
        while need > kv.free_blocks:
            tail -= 1
            if not newest:  # the scheduler's victim among those not yet scheduled: moved to the tail
                v = max(range(i, tail + 1), key=lambda t: (self.waiting.victim_key(self._entry_req(order[t]))))
                order.insert(tail, order.pop(v))
                if v == i:
                    self._preempt(order[tail], plan, gone_slots)
                    return tail, False
            self._preempt(order[tail], plan, gone_slots)
            if tail == i:
                return tail, False
        return tail, True

    def _preempt(self, entry: tuple[int, int, Request | None], plan: StepPlan, gone_slots: list[int],
                 yielded: bool = False) -> None:
        """Preempt a running request by recompute: keep its full blocks cached (prefix caching), free its KV,
        put it back at the front of the waiting queue with the tokens it has generated. `yielded`: preempted by
        the reasoning_aware scheduler at a chunk boundary, its KV swapped to host memory if the scheduler says so
        (freed here, restored on readmission), and queued behind the short requests."""
        _, slot, req = entry
        dec = self.decodes
        if slot >= 0:
            req = dec.sync(slot)
            hold: KvHold | None = req.kv
            assert hold is not None
            hold.private_blocks = dec.blocks_of(slot) - hold.unit_blocks
            cached = self._cached_tokens(slot)
            gone_slots.append(slot)
        else:
            assert req is not None
            if slot == -2:
                self.handing_off.remove(req)
            else:
                req.slot = -3  # leaves `prefilling` at the end of the pass
            cached = _cacheable(req, req.computed_tokens)
            hold = req.kv
        assert hold is not None
        req.num_preemptions += 1
        plan.add_preempted(req)
        if yielded:
            waiting = self.waiting
            assert isinstance(waiting, ReasoningAware)
            spec = waiting.spec
            size = req.computed_tokens * self.config.kv_bytes_per_token
            cap = spec.host_capacity_bytes
            if spec.preempt_mode == "swap" and (cap is None or self._host_bytes + size <= cap):
                self.kv.release(hold, cached)  # its full blocks stay findable in the free queue, as at a finish
                req.kv = None  # readmitted with its computed tokens, as KV arriving from elsewhere
                self._swapped[req] = size
                self._host_bytes += size
                self.swap_bytes += size
                plan.swap_s += size / spec.pcie_bandwidth_bytes_per_s
                waiting.push_yielded(req)
                return
            self.kv.keep(hold, cached)
            self.kv.release(hold, cached)
            req.computed_tokens = 0
            waiting.push_yielded(req)
            return
        self.kv.keep(hold, cached)
        self.kv.release(hold, cached)
        req.computed_tokens = 0
        self.waiting.push_front(req)

    def _advance_prefill(self, plan: StepPlan, req: Request, new: int, admitted: bool = False) -> None:
        """A prefill chunk of `new` tokens was scheduled: advance, cache the blocks it fills, and sample a token
        if it completes the known tokens."""
        plan.add_chunk(req, new, req.computed_tokens)
        req.computed_tokens += new
        hold: KvHold | None = req.kv
        assert hold is not None
        self.kv.cache_computed(hold, _cacheable(req, req.computed_tokens) // self.config.block_tokens)
        if req.computed_tokens < req.known_tokens:
            if admitted:
                self.prefilling.append(req)
            return
        if not admitted:
            self.prefilling.remove(req)
        req.generated_tokens += 1
        plan.add_sampled(req)
        if req.generated_tokens == max(req.reasoning_tokens, 1):
            plan.add_reasoning_done(req)
        if req.generated_tokens >= req.output_tokens:
            plan.add_finishing(req)
            self.handing_off.append(req)  # holds its blocks and slot until the step's outputs are applied
        elif self.config.hand_off_after_prompt:
            self.handing_off.append(req)
        else:
            self.decodes.add(req, hold.num_blocks)

    def _schedule_waiting(self, plan: StepPlan, budget: int, threshold: int) -> None:
        cfg, kv = self.config, self.kv
        bt = cfg.block_tokens
        waiting = self.waiting
        while budget > 0 and waiting:
            if self.num_running >= cfg.max_num_seqs:
                break
            req = waiting[0] if isinstance(waiting, Fcfs) else waiting.peek()  # FCFS's head: no Python frame
            hold = self.hold_of(req)
            tokens = req.known_tokens
            units = NO_EXTENTS  # read only (acquire)
            if req.computed_tokens:  # its KV arrived from a prefill replica (disaggregation)
                hit = evictable = 0
                hit_tokens = req.computed_tokens
            else:
                units, hit, evictable = kv.lookup(hold, (tokens - 1) // bt)
                hit_tokens = hit * bt
            new = tokens - hit_tokens
            if 0 < threshold < new:
                new = threshold
            if not cfg.chunked_prefill and new > budget:
                break
            new = min(new, budget)
            admit_tokens = tokens if cfg.reserve_full_isl else hit_tokens + new
            if req.kv_keep_tokens:
                admit_tokens = min(admit_tokens, req.kv_keep_tokens)
            if blocks_for(admit_tokens, bt) - hit + evictable > kv.free_blocks:
                break
            waiting.pop()
            if self._swapped:
                self._swap_in(plan, req)
            kv.acquire(hold, units)
            keep = req.kv_keep_tokens or tokens
            if req.computed_tokens:
                kv.grow(hold, blocks_for(min(tokens, keep), bt))
            else:
                kv.grow(hold, blocks_for(min(hit_tokens + new, keep), bt) - hit)
                if req.num_preemptions == 0:
                    req.prefix_hit_tokens = hit_tokens
            req.computed_tokens = hit_tokens
            req.seq = self._next_seq
            self._next_seq += 1
            req.slot = -1
            plan.add_admitted(req)
            self._advance_prefill(plan, req, new, admitted=True)
            budget -= new

    def _swap_in(self, plan: StepPlan, req: Request) -> None:
        size = self._swapped.pop(req, None)
        if size is None:
            return
        waiting = self.waiting
        assert isinstance(waiting, ReasoningAware)
        self._host_bytes -= size
        self.swap_bytes += size
        plan.swap_s += size / waiting.spec.pcie_bandwidth_bytes_per_s

    def _done(self, req: Request) -> None:
        """The request leaves this replica: a fair-share scheduler charges the rest of its output."""
        fair = self.fair_share
        if fair is not None:
            fair.done(req)

    # ------------------------------------------------------------------------------------------ outputs

    def _cached_tokens(self, slot: int) -> int:
        """Tokens of a decoding request whose full blocks were cached when scheduled: vLLM caches up to the
        tokens known then, so under async scheduling a decode step's own input token (sampled by the step before,
        still in flight) is not among them."""
        dec = self.decodes
        ctx = dec.v_ctx[slot]
        if self.config.async_scheduling and ctx > dec.v_ctx0[slot]:
            ctx -= 1
        if dec.compressed:
            req = dec.req[slot]
            assert req is not None
            return _cacheable(req, ctx)
        return ctx

    def _leave_decodes(self, req: Request) -> int:
        """Take a decoding request out of the decode arrays (its blocks to its hold); returns the tokens whose full
        blocks were cached."""
        dec = self.decodes
        slot = req.slot
        hold: KvHold | None = req.kv
        assert hold is not None
        hold.private_blocks = dec.blocks_of(slot) - hold.unit_blocks
        cached = self._cached_tokens(slot)
        dec.remove(slot)
        return cached

    def finish(self, req: Request) -> None:
        """The step that sampled the request's last token has delivered it: free its KV."""
        if req.slot >= 0:
            cached = self._leave_decodes(req)
        elif req in self.handing_off:
            self.handing_off.remove(req)
            cached = _cacheable(req, req.computed_tokens)
        else:
            self.waiting.remove(req)  # preempted after its last token was scheduled (async): already freed
            self._done(req)
            return
        req.generated_tokens = req.output_tokens
        assert req.kv is not None
        self.kv.release(req.kv, cached)
        self._done(req)

    def abort(self, req: Request) -> bool:
        """Take `req` out wherever it is and free its KV now, as vLLM's `finish_requests(ids,
        FINISHED_ABORTED)`: a waiting request (new, or preempted) holds no blocks; a running one (prefilling,
        decoding, or with its last token in flight) releases its hold as a finished request does, its full
        computed blocks staying cached in the free queue. Its progress (`computed_tokens`, `generated_tokens`)
        is left as scheduled so far. False, and nothing done, if it is not here or its KV is in transfer to a
        decode replica (the transfer holds the blocks until `transfer_done`)."""
        dec = self.decodes
        if 0 <= req.slot < dec.n and dec.req[req.slot] is req:
            dec.sync(req.slot)
            cached = self._leave_decodes(req)
        elif req in self.prefilling:
            self.prefilling.remove(req)
            cached = _cacheable(req, req.computed_tokens)
        elif req in self.handing_off:
            self.handing_off.remove(req)
            cached = _cacheable(req, req.computed_tokens)
        elif req in self.waiting:
            self.waiting.remove(req)
            self._host_bytes -= self._swapped.pop(req, 0.0)
            self._done(req)
            return True
        else:
            return False
        assert req.kv is not None
        self.kv.release(req.kv, cached)
        self._done(req)
        return True

    def hand_off(self, req: Request) -> bool:
        """A prefill replica's request leaves for a decode replica: it stops running here; its blocks stay held
        until `transfer_done`. False if it was preempted meanwhile (it stays here)."""
        if req not in self.handing_off:
            return False
        self.handing_off.remove(req)
        self.transferring[req.request_id] = req
        self._done(req)
        return True

    def transfer_done(self, req: Request) -> None:
        del self.transferring[req.request_id]
        assert req.kv is not None
        self.kv.release(req.kv, _cacheable(req, req.computed_tokens))
        req.kv = None

    def check(self) -> None:
        """Block conservation: free + held units + every hold's private blocks = capacity."""
        dec, kv = self.decodes, self.kv
        private = 0
        holds: list[KvHold] = []  # every running request's
        dec.check()
        blocks = dec.fresh_blocks()
        for j in range(dec.n):
            req = dec.req[j]
            assert req is not None and req.kv is not None and req.slot == j
            holds.append(req.kv)
            private += int(blocks[j]) - req.kv.unit_blocks
            kept = min(int(dec.ctx[j]), req.kv_keep_tokens or int(dec.ctx[j]))
            assert blocks[j] * self.config.block_tokens >= kept
            if req.kv_keep_tokens:  # a compressed sequence never holds more than its prompt and budget need
                assert blocks[j] == blocks_for(kept, self.config.block_tokens), (j, kept, blocks[j])
        for req in [*self.prefilling, *self.handing_off, *self.transferring.values()]:
            assert req.kv is not None
            holds.append(req.kv)
            private += req.kv.private_blocks
            kept = min(req.computed_tokens, req.kv_keep_tokens or req.computed_tokens)
            assert req.kv.num_blocks * self.config.block_tokens >= kept
            if req.kv_keep_tokens:
                assert req.kv.num_blocks <= blocks_for(req.kv_keep_tokens, self.config.block_tokens)
        held = kv.held_unit_blocks(holds)
        assert private + held + kv.free_blocks == kv.capacity_blocks, (private, held, kv.free_blocks,
                                                                      kv.capacity_blocks)
        kv.check()
        assert self.num_running <= self.config.max_num_seqs
