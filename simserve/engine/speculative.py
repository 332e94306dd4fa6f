"""Speculative decoding in the engine (issue 23), a separate code path taken only by pools with `speculative`:
the decode arrays with per-step accepted tokens (`SpecDecodes`), the planner's decode pass verifying k+1 positions
per sequence within the token budget (`SpecPlanner`), and the replica's step time and fast-forwarded runs with the
accepted-token draws made up front (`SpecReplica`).

As vLLM V1: a decoding sequence with c computed tokens is scheduled 1 + d tokens (its last sampled token and d <= k
drafts), counted against max_num_batched_tokens (truncated to the budget left); blocks are allocated to cover
c + 1 + d positions; after the step it has c + 1 + a computed tokens (a accepted drafts; the rejected positions'
computed count rolled back, their block slots overwritten by the next step) and has committed 1 + a tokens. The
draw of a is known when the step is planned (a pure function of the request and its progress), so the step's
events (finish, reasoning end) are known at plan time as without speculation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from simserve.engine.decodes import _NEVER, NO_DEMAND, BlockDemand, Decodes
from simserve.engine.kv import KvBlockPool, blocks_for
from simserve.engine.planner import Planner, PlannerConfig, StepPlan
from simserve.engine.replica import Replica
from simserve.perf import Batch
from simserve.perf.base import ordered_dot
from simserve.perf.speculative import SpeculativeSpec, SpeculativeTiming, uniforms
from simserve.request import Request
from simserve.schedulers import FairShare, ReasoningAware, Scheduler

_EMPTY = np.zeros(0, dtype=np.int64)
MAX_RUN_STEPS = 512  # a fast-forwarded speculative run keeps a snapshot per step; longer runs are split


class SpecDecodes(Decodes):
    """Decode arrays whose slots commit 1 + a tokens a step (a accepted drafts): per slot also the request id,
    output and reasoning tokens (the draw's counter and phase) and the acceptance thresholds of both phases."""

    def __init__(self, capacity: int, block_tokens: int, spec: SpeculativeSpec, key: int) -> None:
        super().__init__(capacity, block_tokens, False, lazy_blocks=False)  # its own block pass
        self.spec = spec
        self.k = spec.num_speculative_tokens
        self.key = key
        self.rid = np.zeros(capacity, np.int64)
        self.out = np.zeros(capacity, np.int64)
        self.rsn = np.zeros(capacity, np.int64)
        self.p = np.zeros((2, capacity, self.k))  # P(at least j+1 accepted), [0] reasoning, [1] answer phase
        self._thresholds: dict[tuple[str, bool], np.ndarray] = {}
        self.run: tuple[np.ndarray, ...] | None = None  # snapshots of a fast-forwarded run (SpecReplica)

    def add(self, req: Request, num_blocks: int) -> None:
        super().add(req, num_blocks)
        j = req.slot
        self.rid[j], self.out[j], self.rsn[j] = req.request_id, req.output_tokens, req.reasoning_tokens
        for phase in (0, 1):
            key = (req.query_type, bool(phase))
            t = self._thresholds.get(key)
            if t is None:
                t = self._thresholds[key] = self.spec.thresholds(req.query_type, bool(phase))
            self.p[phase, j] = t

    def remove(self, j: int) -> Request:
        last = self.n - 1
        if j != last:
            self.rid[j], self.out[j], self.rsn[j] = self.rid[last], self.out[last], self.rsn[last]
            self.p[:, j] = self.p[:, last]
        return super().remove(j)

    def countdowns(self) -> tuple[int, int]:
        """Lower bounds, in steps, of super's token countdowns (a step commits up to k + 1 tokens); zero or less
        exactly when super's are."""
        to_finish, to_reasoning = super().countdowns()
        q = self.k + 1
        return (-(-to_finish // q) if to_finish < _NEVER // 2 else to_finish,
                -(-to_reasoning // q) if to_reasoning < _NEVER // 2 else to_reasoning)

    def accepted(self, slots: Any, drafts: np.ndarray, finish_at: np.ndarray | None = None,
                 tick: int | None = None) -> np.ndarray:
        """Accepted drafts of these slots in the step about to be scheduled (before it is): the leading run of
        successes, drawn from one uniform per (request, tokens generated) against the cumulative acceptance of
        the slot's phase (reasoning while generated < reasoning tokens)."""
        fin = self.finish_at[slots] if finish_at is None else finish_at
        gen = self.out[slots] - (fin - (self.tick if tick is None else tick))
        u = uniforms(self.key, self.rid[slots], gen)
        phase = (gen >= self.rsn[slots]).astype(np.int64)
        p = self.p[phase, slots] if not isinstance(slots, slice) else self.p[phase, np.arange(self.n)]
        hit = u[:, None] < p
        hit &= np.arange(self.k) < drafts[:, None]
        return hit.sum(axis=1).astype(np.int64)

    def commit(self, slots: Any, acc: np.ndarray) -> None:
        """After the slots' step was scheduled (one token each): their accepted drafts are computed and
        committed too; a reasoning end inside them comes at this tick."""
        self.ctx[slots] += acc
        self.ctx_sum = self.ctx_max = -1  # recounted when next read
        self.finish_at[slots] -= acc
        at = self.reasoning_at[slots]
        self.reasoning_at[slots] = np.where(at == _NEVER, _NEVER, np.maximum(at - acc, self.tick))
        self._min_finish = self._min_reasoning = None

    def advance(self, num_steps: int, block_tokens: int) -> None:
        """A fast-forwarded run's next `num_steps` steps, from the snapshots its draws made up front."""
        assert self.run is not None
        ctx, blocks, fin, rat, ticks = self.run
        n = self.n
        self.ctx[:n], self.blocks[:n] = ctx[num_steps], blocks[num_steps]
        self.ctx_sum = self.ctx_max = -1
        self.finish_at[:n], self.reasoning_at[:n] = fin[num_steps], rat[num_steps]
        self.tick = int(ticks[num_steps])
        self._min_finish = self._min_reasoning = None


class SpecPlanner(Planner):
    """vLLM's schedule() with speculative decodes: each decoding sequence asks for 1 + d tokens."""

    def __init__(self, config: PlannerConfig, kv: KvBlockPool, waiting: Scheduler, spec: SpeculativeSpec,
                 key: int) -> None:
        super().__init__(config, kv, waiting)
        self.decodes: SpecDecodes = SpecDecodes(config.max_num_seqs, config.block_tokens, spec, key)

    def _schedule_decodes_first(self, plan: StepPlan, budget: int) -> bool:
        dec, kv = self.decodes, self.kv
        n = dec.n
        if n == 0:
            return True
        if dec.countdowns()[0] <= 0:
            return False
        others = [*self.prefilling, *self.handing_off]
        if others and int(dec.seq[:n].max()) > min(r.seq for r in others):
            return False
        ctx, blocks = dec.ctx[:n], dec.blocks[:n]
        drafts = np.minimum(dec.k, dec.finish_at[:n] - dec.tick - 1)
        q = drafts + 1
        if int(q.sum()) > budget:
            return False  # the general pass truncates drafts to the budget, in running order
        needs = np.maximum(-(-(ctx + q) // self.config.block_tokens) - blocks, 0)
        need = int(needs.sum())
        if need > kv.free_blocks:
            return False  # the general pass preempts
        acc = dec.accepted(slice(0, n), drafts)
        plan.decode_context_tokens = ctx + 1
        plan.decode_query_tokens = q
        if need:
            kv.allocate(need)
            blocks += needs
        ctx += 1
        dec.tick += 1
        dec.commit(slice(0, n), acc)
        if dec.events_due:
            self._decode_events(plan, *dec.events())
        return True

    def _schedule_running(self, plan: StepPlan, budget: int, threshold: int,
                          order: list[tuple[int, int, Request | None]]) -> int:
        """Planner._schedule_running with a decode asking for 1 + d tokens (d drafts, cut to the budget left)."""
        dec, kv = self.decodes, self.kv
        bt = self.config.block_tokens
        tail = len(order)
        newest = self.waiting.newest_victim
        sched: list[tuple[int, int, int]] = []  # (slot, context of its first verified position, positions)
        gone_slots: list[int] = []
        i = 0
        while i < tail and budget > 0:
            _, slot, req = order[i]
            if slot == -2 or (slot >= 0 and dec.left(slot) == 0):
                i += 1
                continue
            if slot >= 0:
                new = 1 + min(dec.k, dec.left(slot) - 1, budget - 1)
                have, computed, keep = dec.v_blocks[slot], dec.v_ctx[slot], 1 << 62
            else:
                assert req is not None
                new = req.known_tokens - req.computed_tokens
                if 0 < threshold < new:
                    new = threshold
                new = min(new, budget)
                assert req.kv is not None
                have, computed = req.kv.num_blocks, req.computed_tokens
                keep = computed + new
            need = max(blocks_for(min(computed + new, keep), bt) - have, 0)
            tail, scheduled = self._make_room(need, order, i, tail, newest, plan, gone_slots)
            if not scheduled:
                break
            kv.allocate(need)
            if slot >= 0:
                acc = dec.accepted(np.array([slot]), np.array([new - 1]))
                dec.v_blocks[slot] += need
                dec.schedule_one(slot)
                dec.commit(np.array([slot]), acc)
                sched.append((slot, computed + 1, new))
            else:
                assert req is not None and req.kv is not None
                req.kv.private_blocks += need
                self._advance_prefill(plan, req, new)
            budget -= new
            i += 1
        if sched:
            slots = np.array([s for s, _, _ in sched], np.int64)
            plan.decode_context_tokens = np.array([c for _, c, _ in sched], np.int64)
            plan.decode_query_tokens = np.array([q for _, _, q in sched], np.int64)
            self._decode_events(plan, *dec.events(slots))
        self._end_running_pass(gone_slots)
        return budget


class SpecReplica(Replica):
    """A replica whose decodes verify k+1 positions a step: its step time adds the verified positions and the
    drafter, and a fast-forwarded run draws every step's accepted tokens up front (the same draws as stepping)."""

    chains_ok = False  # its decode pass is its own: runs end where blocks run out

    def __init__(self, *args: Any, timing: SpeculativeTiming, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timing = timing
        self._run_plan: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])  # a run's contexts and positions

    def _step_time_s(self, plan: StepPlan) -> float:
        q = plan.decode_query_tokens
        if q is None or plan.empty:
            return super()._step_time_s(plan)
        chunks = plan.chunks
        return self.timing.step_time_s(Batch(
            plan.decode_context_tokens,
            np.array([c for _, c, _ in chunks], np.int64) if chunks else _EMPTY,
            np.array([h for _, _, h in chunks], np.int64) if chunks else _EMPTY), q)

    def _run_times_s(self, contexts: np.ndarray, k: int, caps: np.ndarray | None, context_sum: int,
                     context_max: int) -> np.ndarray:
        ctxs, qs = self._run_plan
        return np.array([self.timing.step_time_s(Batch(c, _EMPTY, _EMPTY), q) for c, q in zip(ctxs[:k], qs[:k],
                                                                                               strict=True)])

    def _run_length(self, plan: StepPlan) -> tuple[int, BlockDemand]:
        """The steps after the one just planned, simulated on copies of the decode arrays with their accepted
        tokens drawn now: until a sequence schedules its last token (or, if a hook acts on it, its last reasoning
        token), the blocks or the token budget run out, or MAX_RUN_STEPS."""
        dec = self.planner.decodes
        assert isinstance(dec, SpecDecodes)
        waiting = self.planner.waiting
        if plan.decode_query_tokens is None or (self.stop_at_reasoning_end and plan.reasoning_done) or (
                isinstance(waiting, ReasoningAware) and waiting.num_short_waiting) or (
                isinstance(waiting, FairShare) and waiting.num_users_waiting > 1):
            return 1, NO_DEMAND  # (fair share: users' counters grow by the accepted tokens; each plan may reorder)
        n, bt, k = dec.n, self.block_tokens, dec.k
        budget, free = self.planner.config.max_num_batched_tokens, self.kv.free_blocks
        ctx, blocks = dec.ctx[:n].copy(), dec.blocks[:n].copy()
        fin, rat, tick = dec.finish_at[:n].copy(), dec.reasoning_at[:n].copy(), dec.tick
        snaps = [(ctx.copy(), blocks.copy(), fin.copy(), rat.copy(), tick)]
        ctxs, qs = [plan.decode_context_tokens.copy()], [plan.decode_query_tokens.copy()]
        extra = [0]
        slots = np.arange(n)
        while len(extra) < MAX_RUN_STEPS:
            drafts = np.minimum(k, fin - tick - 1)
            q = drafts + 1
            if int(q.sum()) > budget:
                break
            needs = np.maximum(-(-(ctx + q) // bt) - blocks, 0)
            total = extra[-1] + int(needs.sum())
            if total > free:
                break
            acc = dec.accepted(slots, drafts, fin, tick)
            ctxs.append(ctx + 1)
            qs.append(q)
            blocks += needs
            ctx += 1 + acc
            pending = (rat != _NEVER) & (rat > tick)
            tick += 1
            fin -= acc
            rat = np.where(pending, np.maximum(rat - acc, tick), rat)
            extra.append(total)
            snaps.append((ctx.copy(), blocks.copy(), fin.copy(), rat.copy(), tick))
            if (fin <= tick).any() or (self.stop_at_reasoning_end and (pending & (rat <= tick)).any()):
                break
        m = len(extra)
        if m <= 1:
            return 1, NO_DEMAND
        dec.run = tuple(np.array([s[f] for s in snaps]) for f in range(5))
        self._run_plan = (ctxs, qs)
        return m, BlockDemand(m, np.array(extra, np.int64))

    def _record_run(self, run: Any, done: int) -> None:
        """As Replica's, with the KV tokens the run's steps attend over taken from its snapshots (each decode's
        first verified position), as stepping counts them."""
        before = self.kv_token_area
        super()._record_run(run, done)
        if done:
            sums = np.array([float(c.sum()) for c in self._run_plan[0][:done]])
            self.kv_token_area = before + ordered_dot(sums, np.asarray(run.times[:done], dtype=float))
