"""A replica's SimPy process: plan -> step end (or wake, when idle) -> apply outputs -> record. Time lives here;
every decision is the planner's (simserve.engine.planner), every step time the perf model's.

A run of decode steps whose batch cannot change (no request can be admitted or preempted, none finishes before
its end) is advanced in one event, in closed form (simserve.engine.decodes.FastForwardRun), giving exactly the
times that stepping one iteration at a time gives (`engine.exact_steps` turns it off).

Sync scheduling plans step s+1 after step s's outputs are applied; async scheduling (vLLM's two-deep batch
queue) plans step s+1 first and applies step s's outputs after it, at the same instant. `cancel` takes a request
out between steps, as vLLM's abort.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Generator, Iterator
from functools import partial
from typing import Any, Final

import numpy as np
import simpy
from mypy_extensions import mypyc_attr
from simpy.events import PENDING

from simserve.engine.decodes import (
    NO_DEMAND,
    BlockDemand,
    ChainPiece,
    FastForwardRun,
    ends_before,
    ends_by,
    periodic_demand,
)
from simserve.engine.events import AfterPlans, Environment, Settle, StepEnd, step_end_priority
from simserve.engine.hooks import HookChain, Hooks
from simserve.engine.kv import Extent, blocks_for
from simserve.engine.planner import NO_REQUESTS, Planner, StepPlan
from simserve.metrics import LevelMonitor, Recorder
from simserve.perf import Batch, PerfModel
from simserve.perf.base import StepTimes, accumulate_sum, asum
from simserve.quality.compression import KvCompressionSpec
from simserve.request import Request
from simserve.schedulers import Fcfs

_ONE_STEP: Final = np.zeros(1, dtype=np.int64)
_MAX_PIECES: Final = 256  # preempting plans one run may span (it is predicted whole at its start)


def _add_step_ends(ends: list[float], end_s: float, times: list[float]) -> float:
    """Append to `ends` the step ends that follow `end_s` by `times`; returns the last. Sequential sums, as numpy's
    accumulate adds them and as steps add: the same bits."""
    for t in times:
        end_s += t
        ends.append(end_s)
    return end_s


@mypyc_attr(allow_interpreted_subclasses=True)  # speculative.py's SpecReplica
class Replica:
    """One model instance on `tensor_parallel` GPUs, driven by its planner, timed by its perf model."""

    chains_ok = True  # a subclass with its own decode pass turns runs across preemptions off

    def __init__(self, env: Environment, *, pool: str, index: int, perf: PerfModel, planner: Planner,
                 max_model_len_tokens: int, recorder: Recorder, hooks: Hooks, exact_steps: bool = False,
                 check_invariants: bool = False, stop_at_reasoning_end: bool = False,
                 kv_compression: KvCompressionSpec | None = None) -> None:
        self.env = env
        self.pool = pool
        self.index = index
        self.perf = perf
        self.planner = planner
        self.kv = planner.kv
        self.block_tokens = planner.config.block_tokens
        self.async_scheduling = planner.config.async_scheduling
        self.max_tokens = min(max_model_len_tokens, self.kv.capacity_tokens)
        self.max_model_len_tokens = max_model_len_tokens
        self.kv_compression = kv_compression
        self.recorder = recorder
        self.hooks = hooks
        self.exact_steps = exact_steps
        self.check_invariants = check_invariants
        self.stop_at_reasoning_end = stop_at_reasoning_end
        # The stages some hook acts on (a chain's empty stages are not called: a call into it is a Python frame).
        self._hook_admitted = not isinstance(hooks, HookChain) or hooks.wants("admitted")
        self._hook_prompt_done = not isinstance(hooks, HookChain) or hooks.wants("prompt_done")
        self._hook_reasoning_done = not isinstance(hooks, HookChain) or hooks.wants("reasoning_done")
        self._fifo = type(planner.waiting) is Fcfs  # only the head of the queue can be admitted next
        # A run may span the plans that preempt the newest decode when blocks run out (see _predict_chain) where
        # those plans are vLLM's FCFS decode pass and nothing else: no compression, sync scheduling, no hook on
        # reasoning ends, whole sequences reserved at admission.
        cfg = planner.config
        self._chains = (self.chains_ok and self._fifo and not exact_steps and not cfg.async_scheduling
                        and not stop_at_reasoning_end and kv_compression is None and not cfg.kv_compression
                        and cfg.reserve_full_isl and not cfg.hand_off_after_prompt)
        self._chain: deque[ChainPiece] = deque()  # the predicted preempting plans ahead in the run in flight
        self._run_start = 0  # the run's step (from 0) at which the piece in flight began
        self._chain_bounds: StepTimes = [0.0]  # the run's step ends (bounds[0] its start)
        self._now_0d = np.zeros(())  # a time as numpy's operand for a search (a Python float costs it more)
        self._chain_first: list[Request] = []  # reasoning ends sampled by the run's first step
        self._longest_context = getattr(perf, "reads_longest_context", True)  # decode_run_stats_s's context_max
        planner.reads_context_max = self._longest_context  # and its step_time_s's (kept by the decodes if read)
        self.num_chained_plans = 0  # preempting plans made inside fast-forwarded runs (not events of their own)
        self.wake = env.event()
        self._end_priority = step_end_priority(index)  # same-time step ends in replica order (events.StepEnd)
        self.num_events = 0
        self.running_mon = LevelMonitor(env._now)
        self.waiting_mon = LevelMonitor(env._now)
        self.kv_area = 0.0  # integral of used blocks over time
        self.kv_token_area = 0.0  # integral of KV tokens the running steps attend over (kept KV) over time
        self.kv_peak = 0
        self._run: FastForwardRun | None = None  # the fast-forwarded run in flight
        self._run_end: simpy.Event | None = None  # the event its loop waits on (None once cut, or between runs)
        self._run_steps = 0  # the steps of the run in flight to take (fewer once cut)
        self._run_waiting = 0
        self.num_rejected_too_long = 0  # requests rejected on arrival: they could never fit here
        # Cancellation (`cancel`): running requests cancelled while a step is in flight wait here for its end.
        self._stepping = False  # the loop waits for a step (or a fast-forwarded run) to end
        self._cancels: dict[Request, str] = {}  # with their reasons, in call order
        self._delivered: StepPlan | None = None  # a step that has ended, its outputs being (or to be) applied
        self._changed = False  # a cancel changed the running set after this step's plan
        self._cut_after_now = False  # the wake came after the plans of its instant (a run keeps its step now)
        self._process: simpy.Process | None = None

    # ------------------------------------------------------------------------------------------ public surface

    @property
    def waiting(self) -> Any:
        self._sync_run()
        return self.planner.waiting

    @property
    def num_waiting(self) -> int:
        """len(self.waiting), without bringing a fast-forwarded run up to now: the queue, plus the decodes that the
        run's preempting plans made before now put back at its front (which `_sync_run` would make)."""
        n = len(self.planner.waiting)
        if self._run is not None:
            now = self.env._now
            for piece in self._chain:
                if self._chain_bounds[piece.start] >= now:
                    break
                n += len(piece.victims)
        return n

    @property
    def num_running(self) -> int:
        self._sync_run()
        return self.planner.num_running

    @property
    def num_outstanding(self) -> int:
        self._sync_run()
        return self.planner.num_running + len(self.planner.waiting)

    @property
    def free_kv_blocks(self) -> int:
        """Blocks a new request could get now: free plus cached blocks nobody holds."""
        self._sync_run()
        return self.kv.free_blocks

    def prefix_hit_tokens(self, req: Request) -> int:
        """Prompt tokens of `req` that would be served from this replica's prefix cache now."""
        self._sync_run()
        return self.planner.prefix_hit_tokens(req)

    def fits(self, req: Request) -> bool:
        """Whether the request's whole sequence can ever be held here (under KV compression: its kept KV)."""
        if req.kv_keep_tokens:
            return (req.total_tokens <= self.max_model_len_tokens
                    and min(req.total_tokens, req.kv_keep_tokens) <= self.kv.capacity_tokens)
        return req.total_tokens <= self.max_tokens

    def enqueue(self, req: Request) -> None:
        """Accept a routed request now: queue it, or reject it at once if it could never fit. Under KV
        compression the request keeps its prompt and at most the budget's generated tokens here."""
        req.pool, req.replica = self.pool, self.index
        comp = self.kv_compression
        req.kv_keep_tokens = 0 if comp is None else req.prompt_tokens + comp.budget_of(req.reasoning_tokens)
        if not self.fits(req):
            self.num_rejected_too_long += 1
            req.status = "rejected"
            req.reason = (f"needs {req.total_tokens} tokens of KV; replica holds at most {self.max_tokens} "
                          f"(KV capacity {self.kv.capacity_tokens}, max_model_len)")
            self.hooks.finished(req)
            return
        self._sync_run()
        waiting = self.planner.waiting
        # A fast-forwarded run is planned so that the head of a first-come-first-served queue cannot be admitted
        # before it ends (its blocks only get scarcer; see _run_length): a request joining behind it changes no
        # plan of the run, so the run goes on (stepping one iteration at a time gives the same steps).
        behind = self._run is not None and self._fifo and len(waiting) > 0
        waiting.push(req)
        self.waiting_mon.set(self.env._now, len(waiting))
        if not behind:
            self._rouse()

    def transfer_done(self, req: Request) -> None:
        """The request's KV has left for a decode replica: free its blocks here (which may let a waiting request
        in, so wake the loop as an arrival would)."""
        self._sync_run()
        self.planner.transfer_done(req)
        self._rouse()

    def cancel(self, req: Request, reason: str = "cancelled") -> bool:
        """Cancel a request queued or running here (a sample no longer needed), as vLLM aborts one
        (`finish_requests(ids, FINISHED_ABORTED)`, between steps): it leaves the waiting queue or the running
        batch, its KV blocks are freed (its full computed blocks stay cached, as when a request finishes), and it
        ends with `status` "cancelled", `reason`, `finish_s` = when it was taken out, and one
        `hooks.finished(req)`; no later stage fires for it, and the outputs of a step in flight that included it
        are dropped.

        When. From a hook this replica runs (its `_apply`, `admitted`): at once, before the call returns. From
        anywhere else (another replica's hook, a timer): at this instant but after this replica has planned at
        it (an `AfterPlans` event), so same-time step ends on two replicas cannot order it differently in
        fast-forward and step-by-step modes; then a waiting request (new or preempted) is taken out at once, and
        a running one, if a step (or a fast-forwarded run) is in flight, once that step has ended and its outputs
        are applied (the run is cut there), as vLLM's engine core handles aborts between steps: before the next
        plan under sync scheduling, right after it under async scheduling.

        A no-op for a request that has ended, is not queued or running here, has its KV in transfer to a decode
        replica (cancel it once it is queued there), or whose last token was sampled by a step that has ended
        (it completes). Returns False for a no-op seen now; True when cancelled (from this replica's hooks) or
        when the cancel is under way (from elsewhere: `req.status` says how it ended, once it has)."""
        if req.status or req.replica != self.index:
            return False
        if self.env.active_process is not self._process or self._process is None:
            AfterPlans(self.env).callbacks.append(partial(self._cancel_after_plans, req, reason))
            return True
        return self._cancel_now(req, reason)

    def _cancel_after_plans(self, req: Request, reason: str, _event: object) -> None:
        self._sync_run()  # a request preempted by a plan of the run made before now is waiting
        p = self.planner
        if req.status or req.replica != self.index:
            return
        if not self._stepping:
            self._cancel_now(req, reason)
            return
        # A step (or a run) started at or before now is in flight: a fast-forwarded run ends with it.
        if req.slot >= 0 or req in p.prefilling or req in p.handing_off:
            self._cancels.setdefault(req, reason)
        else:
            before, self._cut_after_now = self._cut_after_now, True  # read by the cut that _cancel_now makes
            if not self._cancel_now(req, reason):
                self._cut_after_now = before
                return
        self._cut_after_now = True
        self._rouse()

    def _cancel_now(self, req: Request, reason: str) -> bool:
        if req.status:
            return False
        ended = self._delivered
        if ended is not None and req in ended.finishing:
            return False  # its last token is delivered by a step that has ended: it completes
        if not self.planner.abort(req):
            return False
        now = self.env._now
        req.status = "cancelled"
        req.reason = reason
        req.finish_s = now
        self._changed = True
        self.running_mon.set(now, self.planner.num_running)
        self.waiting_mon.set(now, len(self.planner.waiting))
        self._rouse()  # freed blocks may let a waiting request in
        if self.check_invariants and self._run is None:  # a run's blocks are counted when it ends
            self.planner.check()
        self.hooks.finished(req)
        return True

    def _cancel_pending(self) -> None:
        """The cancels held while a step was in flight, once its outputs are applied: before the next plan under
        sync scheduling, after it under async scheduling (vLLM's engine core handles aborts after
        `update_from_output`, the next batch already scheduled; what that batch computes for them is dropped)."""
        cancels, self._cancels = self._cancels, {}
        for req, reason in cancels.items():
            self._cancel_now(req, reason)

    def unfinished(self) -> Iterator[tuple[Request, str]]:
        """Requests still queued or running (at the end of a run that stopped at its horizon), with where."""
        p = self.planner
        yield from ((r, "waiting") for r in p.waiting)
        yield from ((r, "running") for r in (*p.prefilling, *p.handing_off))
        yield from ((r, "in KV transfer") for r in p.transferring.values())
        for j in range(p.decodes.n):
            yield p.decodes.sync(j), "running"

    def settle(self, now: float) -> None:
        """At the horizon: account for a fast-forwarded run in flight as stepping one at a time would have: the
        steps completed before `now` (their KV over time and a segment) and the step in flight (planned: its
        tokens scheduled and blocks taken)."""
        if self._run is None:
            return
        self._sync_run()
        run = self._run
        assert run is not None
        done = ends_before(run.bounds, now, run.num_steps, self._now_0d)
        g = self._run_start
        self._finish_run(g + min(done + 1, run.num_steps), g + done, at_horizon=True)
        self._record_run(run, done)
        self._run = None
        self._chain.clear()

    # ------------------------------------------------------------------------------------------ the process

    def process(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        planner = self.planner
        self._process = env.active_process
        inflight: StepPlan | None = None  # async: the step whose outputs are not applied yet
        while True:
            queue: list[Any] = env._queue  # env.peek() == env.now, without SimPy's Python-level method and property
            if queue and queue[0][0] == env._now:
                self.num_events += 1
                yield Settle(env)
            if self.wake._value is not PENDING:
                self.wake = env.event()
                self._cut_after_now = False
            if self._cancels and not self.async_scheduling:
                self._cancel_pending()  # the step in flight ended and its outputs were applied
            running = planner.num_running
            if inflight is None and running == 0 and not planner.waiting:
                yield from self._idle(0, 0.0, 0)
                continue
            now = env._now
            num_waiting = len(planner.waiting)
            plan = planner.schedule() if running or planner.waiting else StepPlan()
            self._changed = False
            self.kv_peak = max(self.kv_peak, self.kv.used_blocks)
            calm = True  # the outputs applied now changed nothing the next plan would see
            if inflight is not None:
                calm = not inflight.finishing and not (self.stop_at_reasoning_end and inflight.reasoning_done)
                self._apply(inflight)
                inflight = self._delivered = None
                if self._cancels:
                    self._cancel_pending()  # after the outputs, with the next step planned (vLLM's order)
            self._after_plan(plan)
            if plan.empty and not (self.async_scheduling and running):
                # Nothing can run: what waits needs blocks held by KV transfers in flight. Wait, as when idle,
                # for a transfer or an arrival to wake the loop.
                yield from self._idle(num_waiting, float(self.kv.used_blocks), None)
                continue
            used = self.kv.used_blocks
            if plan.decode_only and calm and not self._changed and not self.exact_steps:
                k, extra = self._run_length(plan)
                if k > 1 or (self._chains and extra.num_steps > k):
                    inflight = self._delivered = yield from self._fast_forward(plan, k, extra, now, used,
                                                                               num_waiting)
                    continue
            chunks = plan.chunks
            dt = self._step_time_s(plan)
            dt += plan.swap_s  # KV swapped to or from host memory in this step (blocking, as vLLM's swap was)
            self.num_events += 1
            self._stepping = True
            yield StepEnd(env, dt, self._end_priority)
            self._stepping = False
            self.kv_area += used * dt
            self.kv_token_area += dt * float(plan.decode_context_sum() + sum(c + h for _, c, h in chunks))
            if self.async_scheduling:
                inflight = self._delivered = plan
            else:
                self._apply(plan)
            self.recorder.segment(pool=self.pool, replica=self.index, start_s=now, end_s=env._now, num_steps=1,
                                  batch_size=plan.num_decodes + len(chunks), num_waiting=num_waiting,
                                  kv_blocks_mean=float(used), kv_blocks_end=self.kv.used_blocks,
                                  prefill_tokens=plan.prefill_tokens, decode_tokens=plan.num_decodes)

    def _step_time_s(self, plan: StepPlan) -> float:
        """Seconds of one planned step (the perf model's; a speculative replica times its verified positions)."""
        if plan.empty:
            return self.perf.overhead_s  # async: every running request's last token is in flight
        chunks = plan.chunks
        longest = float(plan.decode_context_max()) if self._longest_context else -1.0  # -1: not read
        return self.perf.step_time_s(Batch(plan.decode_context_tokens, [c for _, c, _ in chunks],
                                           [h for _, _, h in chunks], float(plan.decode_context_sum()), longest))

    def _run_times_s(self, contexts: np.ndarray, k: int, caps: np.ndarray | None, context_sum: int,
                     context_max: int) -> StepTimes:
        """Seconds of each step of a fast-forwarded run of k decode steps (the perf model's closed form; uncapped,
        from the contexts' sum and maximum, given: the maximum is 0 for a model that does not read it)."""
        if caps is not None:
            return self.perf.decode_run_times_s(contexts, k, caps)
        return self.perf.decode_run_stats_s(len(contexts), context_sum, context_max, k)

    def _idle(self, num_waiting: int, kv_mean: float, kv_end: int | None) -> Generator[simpy.Event, Any, None]:
        """Wait until an arrival or a finished KV transfer wakes the loop; record the gap as one segment (its
        final KV blocks as read on waking when kv_end is None)."""
        start = self.env._now
        self.num_events += 1
        yield self.wake
        end = self.kv.used_blocks if kv_end is None else kv_end
        self.recorder.segment(pool=self.pool, replica=self.index, start_s=start, end_s=self.env._now, num_steps=0,
                              batch_size=0, num_waiting=num_waiting, kv_blocks_mean=kv_mean, kv_blocks_end=end,
                              prefill_tokens=0, decode_tokens=0)

    def _after_plan(self, plan: StepPlan, now: float | None = None, check: bool = True) -> None:
        now = self.env._now if now is None else now
        if plan.admitted or plan.preempted:
            if self._hook_admitted:
                for req in plan.admitted:
                    if not req.status:  # not cancelled by an earlier hook
                        self.hooks.admitted(req, self)
            self.waiting_mon.set(now, len(self.planner.waiting))
            self.running_mon.set(now, self.planner.num_running)
        if self.check_invariants and check:
            self.planner.check()

    def _apply(self, plan: StepPlan, reasoning_done: bool = True) -> None:
        """A step's outputs arrive: first tokens, reasoning ends, hand-offs and finished requests."""
        if not (plan.sampled or plan.reasoning_done or plan.finishing):
            return
        now = self.env._now
        hooks = self.hooks
        self._delivered = plan
        for req in plan.sampled:
            if req.status:
                continue  # cancelled after this step was planned: its outputs are dropped
            if math.isnan(req.first_token_s):
                req.first_token_s = now
            if self._hook_prompt_done:
                hooks.prompt_done(req, self)
        for req in plan.reasoning_done:
            if not req.status:
                self._reasoning_done(req, now)
        for req in plan.finishing:
            if req.status:
                continue
            self.planner.finish(req)
            req.finish_s = now
            req.status = "completed"
            hooks.finished(req)
        self._delivered = None
        if plan.finishing or plan.sampled:
            self.running_mon.set(now, self.planner.num_running)
            self.waiting_mon.set(now, len(self.planner.waiting))

    def _reasoning_done(self, req: Request, time_s: float) -> None:
        if math.isnan(req.reasoning_end_s):
            req.reasoning_end_s = time_s
            if self._hook_reasoning_done:
                self.hooks.reasoning_done(req, self)

    # ------------------------------------------------------------------------------------------ fast-forward

    def _run_length(self, plan: StepPlan) -> tuple[int, BlockDemand]:
        """Steps of the decode-only batch just planned that can run as one event: until a sequence schedules its
        last token (or its last reasoning token, if a hook acts on it), or blocks run out; and the blocks the
        decodes need beyond those held for each prefix of the run."""
        dec = self.planner.decodes
        to_finish, to_reasoning_end = dec.countdowns()
        k = 1 + to_finish
        if self.stop_at_reasoning_end:
            if plan.reasoning_done:
                return 1, NO_DEMAND
            k = min(k, 1 + to_reasoning_end)
        aware = self.planner.reasoning_aware
        if aware is not None and aware.num_short_waiting:
            ahead = self.planner.chunk_boundaries(aware)[1]
            if ahead >= 0:
                k = min(k, ahead + 1)  # the run ends before the plan at which the scheduler may preempt
        fair = self.planner.fair_share
        if fair is not None and fair:
            per_user = Counter(r.user_id for r in dec.req[: dec.n] if r is not None)
            ahead = fair.steps_until_reorder(per_user)
            if ahead >= 1:
                k = min(k, ahead)  # the plan at which another user's request may come first is not skipped
        if k <= 1:
            return 1, NO_DEMAND
        extra = dec.extra_blocks(self.block_tokens, k, self.planner.block_buffer)
        return extra.steps_within(self.kv.free_blocks), extra

    def _fast_forward(self, plan: StepPlan, k: int, extra: BlockDemand, now: float, used: int,
                      num_waiting: int) -> Generator[simpy.Event, Any, StepPlan | None]:
        """Run k decode steps (the first one planned) as one event, or fewer if something arrives; where blocks
        run out first, on across the plans that preempt (the pieces `_predict_chain` finds)."""
        env = self.env
        dec = self.planner.decodes
        if dec.compressed:  # every slot was scheduled: kept contexts and caps in slot order
            contexts, caps = dec.kept(), dec.keep[: dec.n].copy()
        else:  # the plan's contexts (a view of the decode arrays: read now, not kept)
            contexts, caps = plan.decode_context_tokens, None
        context_sum = int(asum(contexts)) if caps is not None else plan.decode_context_sum()
        longest = plan.decode_context_max() if caps is None and self._longest_context else 0
        times = self._run_times_s(contexts, k, caps, context_sum, longest)
        pieces = self._predict_chain(k, extra) if self._chains and extra.num_steps > k else []
        total = k + sum(p.num_steps for p in pieces)
        # Each piece a run of its own over its steps, timed as one (its first step's batch).
        piece_times = [self.perf.decode_run_stats_s(p.num_decodes, p.context_sum, p.context_max, p.num_steps)
                       for p in pieces]
        chain_bounds: StepTimes  # the whole run's step ends, its pieces' included (they follow one another)
        if isinstance(times, list) and all(isinstance(t, list) for t in piece_times):
            # Short runs' times as lists (StepTimes): the step ends a list.
            chain_bounds = [now]
            end_s = _add_step_ends(chain_bounds, now, times)
            for ptimes in piece_times:
                assert isinstance(ptimes, list)
                end_s = _add_step_ends(chain_bounds, end_s, ptimes)
        else:
            array = np.empty(total + 1)
            array[0] = now
            array[1: k + 1] = times
            for i, p in enumerate(pieces):
                array[p.start + 1: p.start + p.num_steps + 1] = piece_times[i]
            accumulate_sum(array, out=array)  # sequential sums: bounds[i] = bounds[i - 1] + times[i - 1]
            end_s = float(array[total])
            chain_bounds = array
        for i, p in enumerate(pieces):  # each piece a run of its own over its part (an array's view, a list's copy)
            p.run = FastForwardRun(chain_bounds[p.start: p.start + p.num_steps + 1], piece_times[i], p.extra,
                                   p.num_steps, p.num_decodes, 0, context_sum=float(p.context_sum))
        run = FastForwardRun(chain_bounds[: k + 1] if pieces else chain_bounds, times, extra, k, dec.n, used,
                             context_sum=float(context_sum), contexts=contexts if caps is not None else None,
                             caps=caps)
        self._chain.extend(pieces)
        self._chain_bounds = chain_bounds
        self._chain_first = plan.reasoning_done
        self._run = run
        self._run_start = 0
        self._run_waiting = num_waiting
        end: simpy.Event = StepEnd(env, 0.0, self._end_priority, end_s)  # at_s
        self._run_end, self._run_steps = end, total  # `_rouse` may cut the run: it moves the end earlier
        self.num_events += 1
        self._stepping = True
        if self.wake._value is not PENDING:  # woken since the loop's top (by its own hooks): cut at the first step
            end = self._cut_run(waiting=False)
        yield end
        m = self._run_steps
        self._run_end = None
        self._stepping = False
        chain = self._chain
        while chain and chain[0].start < m:  # the preempting plans made within the first m steps
            self._next_piece()
        chain.clear()
        run = self._run
        assert run is not None
        last = self._finish_run(m, m)
        self._run = None
        if not self.async_scheduling:
            self._apply(last)
        self._record_run(run, m - self._run_start)
        return last if self.async_scheduling else None

    def _predict_chain(self, k: int, extra: BlockDemand) -> list[ChainPiece]:
        """The pieces of a run that goes on across preempting plans: a saturated replica's decodes eat the free
        blocks, the plan that cannot give them theirs preempts the newest decode (vLLM's FCFS running pass),
        and the decodes go on, until one of them schedules its last token. Predicted in closed form, changing
        nothing; the plans are made for real, at their instants, by `_next_piece` (which checks them).

        After the run's first k steps (`extra` as `_run_length` gives it, k < extra.num_steps: blocks run out first),
        each piece is its plan (its victims, their progress and the allocations around them), its steps, the
        blocks its decodes need beyond those held at its start (as `extra`), and its first step's batch. The
        chain stops before a plan that would
        schedule a last token or preempt every decode, and after a plan whose victim, now the head of the queue,
        might be admitted by the plan that follows (its whole sequence's blocks, less an upper bound on its prefix
        hits held by running requests, fit in the blocks free then); later plans of a piece cannot admit it, its
        blocks only getting scarcer.

        The closed form: after the run's first step, slot j has `room_j` = blocks * B - context further steps in
        the blocks it holds (0 <= room_j < B), so it takes a block at further step u exactly when u = room_j + 1
        (mod B), u >= 1; a further step's demand is a count per residue, B steps always take one block per decode,
        a victim leaves its residue, and its blocks at step u follow from its room."""
        dec, kv, bt = self.planner.decodes, self.kv, self.block_tokens
        n = dec.n
        ctx = dec.ctx[:n]
        below = extra.before
        if extra.array is not None or len(below) != bt or extra.n != n:
            return []  # a decode holds a spare block (not vLLM's FCFS pass here): runs end where blocks run out
        # Decodes needing a block at further steps u = r (mod B): those with room r - 1 (room B - 1 at r = 0),
        # room = blocks * B - context (0 <= room < B, the run's closed form: `below[p]` counts the rooms below p),
        # counted by room and rotated by one.
        cnt = [n - below[bt - 1], *[below[r + 1] - below[r] for r in range(bt - 1)]]
        finish = dec.finish_at[:n]
        # Victims, newest first: the largest running-order key (keys are distinct, >= 0) of those left, taken
        # one at a time (a chain preempts a few decodes; sorting them all cost more than the few maxima). A victim's
        # key becomes -1: the decodes left are those with a key >= 0.
        newest = dec.seq[:n].copy()
        first_out = int(finish.argmin())  # the decode that schedules its last token first (recounted if preempted)
        longest = int(ctx.argmax()) if self._longest_context else -1  # the calibrated model reads it
        tick0 = dec.tick  # the run's first step scheduled
        alive, ctx_sum = n, dec.context_total()
        free = kv.free_blocks - extra.at(k - 1)
        released: dict[Extent, int] = {}
        pieces: list[ChainPiece] = []
        start = k  # the run's step at which the piece begins
        u = k  # the further step (after the run's first) whose plan preempts
        while len(pieces) < _MAX_PIECES:
            remaining = cnt[u % bt]
            head: Request | None = None
            head_tokens = 0
            victims: list[tuple[int, Request, int, int, int]] = []
            while remaining > free:  # _schedule_decodes_preempting, in closed form
                before = free  # the oldest decodes take every free block
                remaining -= free
                free = 0
                j = int(newest.argmax())
                newest[j] = -1
                c0, b0 = dec.v_ctx[j], dec.blocks_of(j)
                due = b0 * bt - c0 + 1  # its first further step taking a block (its room + 1)
                if due % bt == u % bt:
                    remaining -= 1
                held = b0 + ((u - 1 - due) // bt + 1 if u - 1 >= due else 0)
                head = dec.req[j]
                assert head is not None and head.kv is not None
                free += kv.releasable_blocks(head.kv, held, released)
                head_tokens = head.prompt_tokens + head.output_tokens - (dec.v_finish_at[j] - tick0 - u + 1)
                victims.append((before, head, c0 + u - 1, held, u - 1))
                cnt[due % bt] -= 1
                ctx_sum -= c0
                alive -= 1
                if not alive:
                    return pieces
                if j == first_out or j == longest:  # rare: recount among the decodes left
                    left = np.flatnonzero(newest >= 0)
                    first_out = int(left[finish[left].argmin()])
                    if longest >= 0:
                        longest = int(left[ctx[left].argmax()])
            free -= remaining
            to_finish = dec.v_finish_at[first_out] - tick0 - u  # further steps after u to the first last token
            if to_finish <= 0:
                return pieces  # the plan schedules a last token: the loop makes it
            first_sum, first_max = ctx_sum + alive * u, dec.v_ctx[longest] + u if longest >= 0 else 0
            assert head is not None
            following = cnt[(u + 1) % bt]
            if following <= free and (blocks_for(head_tokens, bt) - kv.held_hit_bound(head.kv, released)
                                      <= free - following):  # the next plan may admit the head: the run ends
                pieces.append(ChainPiece(start, 1, BlockDemand(1, _ONE_STEP), alive, first_sum, first_max, victims,
                                         remaining, free))
                return pieces
            laps = free // alive
            rem = free - laps * alive
            at = (u + 1) % bt
            order = cnt[at:] + cnt[:at]  # the demand of further steps u + 1, ..., u + B
            r, part = 0, 0
            for c in order:  # the first partial lap's step whose demand exceeds what is left
                r += 1
                if part + c > rem:
                    break
                part += c
            steps = min(laps * bt + r, to_finish + 1)  # to the next preempting plan, or through the last token
            # Further step u + 1 + i needs order[i % B] blocks, the alive decodes every B steps: the piece's demand
            # after s steps is (s // B) * alive + (order's first s % B summed), in closed form as a run's.
            demand = periodic_demand(order, alive, steps)
            pieces.append(ChainPiece(start, steps, demand, alive, first_sum, first_max, victims, remaining,
                                     free))
            if steps == to_finish + 1:
                return pieces
            free -= demand.at(steps - 1)
            u += steps
            start += steps
        return pieces

    def _next_piece(self) -> None:
        """The piece in flight has ended: take the rest of its blocks and record it, then make the preempting plan
        predicted at its end, which begins the next piece. The decodes that go on are not advanced here (their
        arrays lag the run until it ends, when `_finish_run` advances them at once); each victim's progress is
        the prediction's, written into its slot before it is preempted as the planner's pass would."""
        run = self._run
        assert run is not None
        piece = self._chain.popleft()
        kv = self.kv
        self.kv_peak = max(self.kv_peak, run.used_at_start + self._take_blocks(run, run.num_steps))
        self._record_run(run, run.num_steps)
        t = float(run.bounds[run.num_steps])
        planner = self.planner
        dec = planner.decodes
        num_waiting = len(planner.waiting)
        plan = StepPlan()
        tick0 = dec.tick  # the run's first step's: the arrays lag until the run ends
        self._first_step_reasoning_ends()  # before any victim leaves (it could be cancelled, and recorded, waiting)
        for before, req, ctx, blocks, behind in piece.victims:
            if before:
                kv.allocate(before)
            j = req.slot
            dec.set_progress(j, ctx, blocks)
            dec.v_finish_at[j] -= behind  # its tokens left after the schedules it took (the arrays lag)
            at = dec.v_reasoning_at[j]
            if at - tick0 <= behind:  # its last reasoning token was scheduled inside the run
                self._reasoning_done(req, float(self._chain_bounds[at - tick0 + 1]))
            planner._preempt((dec.v_seq[j], j, None), plan, [])
            dec.remove(j)
        if piece.final_alloc:
            kv.allocate(piece.final_alloc)
        self.num_chained_plans += 1
        self.kv_peak = max(self.kv_peak, kv.used_blocks)
        self._after_plan(plan, t, check=False)  # the arrays lag: blocks are checked when the run ends
        if self.check_invariants:
            assert kv.free_blocks == piece.free_blocks, (kv.free_blocks, piece)
        nxt = piece.run
        assert nxt is not None
        nxt.used_at_start = kv.used_blocks
        self._run = nxt
        self._run_start = piece.start
        self._run_waiting = num_waiting

    def _first_step_reasoning_ends(self) -> None:
        """Stamp the reasoning ends sampled by the run's first step (it has ended), once."""
        for first in self._chain_first:
            self._reasoning_done(first, float(self._chain_bounds[1]))
        self._chain_first = NO_REQUESTS

    def _finish_run(self, m: int, done: int, at_horizon: bool = False) -> StepPlan:
        """Apply the run's first m planned steps (its preempting plans up to then made, by `_next_piece`): the
        blocks of the piece in flight, the m-1 schedules after the first for the decodes that went on, reasoning
        ends inside the first `done`. Returns the outputs of its last step (to apply now, or after the next plan
        when async); at the horizon, nothing more is applied."""
        run = self._run
        assert run is not None
        self.kv_peak = max(self.kv_peak, run.used_at_start + self._take_blocks(run, m - self._run_start))
        dec = self.planner.decodes
        first_tick = dec.tick  # the tick of the run's first step (planned)
        to_finish, to_reasoning_end = dec.countdowns()
        if m > 1:
            dec.advance(m - 1, self.block_tokens)
        if self.check_invariants:
            assert (dec.fresh_blocks() * self.block_tokens >= dec.kept()).all()
        bounds = self._chain_bounds
        last = StepPlan()
        if done >= 1:  # the first step's reasoning ends, delivered at its end (not if the horizon cut it)
            self._first_step_reasoning_ends()
        if m - 1 >= to_reasoning_end:
            for j, tick in dec.reasoning_ended():
                i = tick - first_tick + 1  # its step in the run, from 1
                req = dec.req[j]
                assert req is not None
                if i == m and not at_horizon:
                    last.add_reasoning_done(req)
                elif i <= done:
                    self._reasoning_done(req, float(bounds[i]))
        if not at_horizon and m - 1 >= to_finish:
            for j in dec.finished():
                last.add_finishing(dec.sync(j))
        return last

    def _record_run(self, run: FastForwardRun, done: int) -> None:
        """The first `done` steps of a run as one segment, and their KV over time."""
        start_s, end_s = float(run.bounds[0]), float(run.bounds[done])
        span = end_s - start_s
        extra_area, token_area = run.kv_integrals(done)
        area = run.used_at_start * span + extra_area
        self.kv_area += area
        self.kv_token_area += token_area
        if done == 0:
            return
        self.recorder.segment(pool=self.pool, replica=self.index, start_s=start_s, end_s=end_s, num_steps=done,
                              batch_size=run.num_decodes,
                              num_waiting=self._run_waiting, kv_blocks_mean=area / span if span > 0 else float(
                                  run.used_at_start), kv_blocks_end=self.kv.used_blocks, prefill_tokens=0,
                              decode_tokens=run.num_decodes * done)

    def _rouse(self) -> None:
        """Something the next plan must see happened now (an arrival, freed blocks, a cancel): wake the loop, or,
        inside a fast-forwarded run, cut the run at the end of its step in flight (or at now, if a step ends now and
        the plans of the instant have not been made), as stepping would plan the next step there. The run's end is
        moved, not waited for beside a wake: the loop resumes once, at the end of the step in flight, in the heap
        position of that step end (time, then replica order)."""
        if self._run_end is None:
            if self.wake._value is PENDING:
                self.wake.succeed()
            return
        self._cut_run()

    def _cut_run(self, waiting: bool = True) -> simpy.Event:
        """Cut the fast-forwarded run in flight (see `_rouse`); returns the event that now ends it, which the loop
        waits on (`waiting`: the loop's resumption moves there) or is about to."""
        end = self._run_end
        assert end is not None
        self._run_end = None
        t = self.env._now
        bounds = self._chain_bounds
        total = self._run_steps
        j = ends_by(bounds, t, total, self._now_0d)  # boundaries at or before t
        if j >= 1 and bounds[j] == t and not self._cut_after_now:
            m = j  # an arrival at a step boundary: stepping would plan the next step after it
        else:
            m = j + 1  # let the step in flight finish
            self.num_events += 1
        self._cut_after_now = False
        if m >= total:
            return end  # the step in flight is the run's last: it ends as planned
        self._run_steps = m
        cut = StepEnd(self.env, 0.0, self._end_priority, float(bounds[m]))  # at_s
        if waiting:
            process = self._process
            assert process is not None
            end.callbacks.remove(process._resume)  # type: ignore[union-attr]  # the loop waits on the run's end
            cut.callbacks.append(process._resume)  # type: ignore[union-attr]
            process._target = cut
        return cut

    def _sync_run(self) -> None:
        """Bring KV allocation up to now inside a fast-forwarded run: blocks for every step planned by now (and
        the evictions they force), exactly as stepping one iteration at a time would have allocated them."""
        run = self._run
        if run is None:
            return
        now = self.env._now
        chain = self._chain
        while chain and self._chain_bounds[chain[0].start] < now:  # a preempting plan of the run made before now
            self._next_piece()
            run = self._run
            assert run is not None
        self._take_blocks(run, run.steps_started(now, self._now_0d))

    def _take_blocks(self, run: FastForwardRun, steps: int) -> int:
        """Allocate what the run's first `steps` steps need beyond its start, if not yet taken; returns that."""
        target = run.extra.at(steps - 1)
        if target > run.allocated:
            self.kv.allocate(target - run.allocated)
            run.allocated = target
        return target
