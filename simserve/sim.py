"""One simulated world: `Simulation(scenario)` owns the clock, the RNG tree, the replicas and the lifecycle hooks;
`run()` returns Results (flat records and a summary). No file IO here."""

from __future__ import annotations

import gc
import itertools
import math
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import simpy

from simserve.answers import Answers
from simserve.engine import Arrival, HookChain, Hooks, KvBlockPool, Planner, PlannerConfig, Replica, arrivals
from simserve.engine.events import Environment
from simserve.engine.speculative import SpecPlanner, SpecReplica
from simserve.hardware import GpuSpec, ModelSpec
from simserve.metrics import Frame, Recorder, busy_seconds, quality_summary, revenue_summary, service_summary, summarize
from simserve.perf import PerfContext, PerfModel, PerfSpec
from simserve.perf.speculative import build_timing
from simserve.quality import resolve
from simserve.request import Request
from simserve.reuse import ReplicaTraceReuse, TraceReuse
from simserve.routing import ROUTERS, ByDifficulty, StaleView
from simserve.schedulers import SCHEDULERS
from simserve.workload import Sessions, build_sessions, generate_requests, rng_streams

if TYPE_CHECKING:
    import pandas as pd

    from simserve.scenario import PoolSpec, Scenario


@dataclass
class Results:
    """What a run produced: the flat summary, and its records: one row per request (in the order requests ended;
    sort by request_id for arrival order) and one row per replica segment (a step, a fast-forwarded run of steps,
    or an idle gap), as two Parquet files, `requests_path` and `replicas_path`. `requests` and `replicas` read them
    into DataFrames on first use. Files in a temporary folder (no records_dir given) last as long as this object;
    a run whose rows fit one row group writes them there only when first asked for (until then its rows are held
    in memory, where its summary read them)."""

    summary: dict[str, Any]
    recorder: Recorder = field(repr=False, compare=False)  # the records' owner: rows in memory, or the files
    request_rows: Frame | Path = field(repr=False, compare=False)  # the request rows as the summaries read them
    pools: list[dict[str, Any]] = field(default_factory=list)

    @property
    def requests_path(self) -> Path:
        return self.recorder.paths()[0]

    @property
    def replicas_path(self) -> Path:
        return self.recorder.paths()[1]

    @cached_property
    def requests(self) -> pd.DataFrame:
        import pandas as pd  # not imported by a run (simserve.metrics)

        return pd.read_parquet(self.requests_path)

    @cached_property
    def replicas(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_parquet(self.replicas_path)


class _Record(Hooks):
    """Records out: every request that ends (completed or rejected) becomes one row (a request with parallel
    samples is one row, written when its answer is decided; its samples are not rows)."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def finished(self, req: Request) -> None:
        if req.parent is None:
            self.recorder.request(req)


class _FollowUps(Hooks):
    """Multi-turn sessions: a completed turn schedules the session's next turn, a think time later."""

    def __init__(self, sim: Simulation, sessions: Sessions) -> None:
        self.sim = sim
        self.sessions = sessions

    def finished(self, req: Request) -> None:
        if req.parent is not None:
            return
        follow = self.sessions.next_turn(req)
        if follow is not None:
            think_s, turn = follow
            self.sim.arrive_later(turn, think_s)


class _HandOff(Hooks):
    """Prefill/decode disaggregation: a prefill replica's request whose prompt is done sends its KV over the link
    and is queued, when it lands, at the decode replica with the fewest outstanding requests."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def prompt_done(self, req: Request, replica: Replica) -> None:
        if not replica.planner.config.hand_off_after_prompt or req.generated_tokens >= req.output_tokens:
            return
        if not replica.planner.hand_off(req):
            return
        sim = self.sim
        link = sim.scenario.cluster.kv_transfer
        delay = link.latency_s + req.computed_tokens * sim.kv_bytes_per_token[replica.index] / (
            link.bandwidth_bytes_per_s)
        sim.num_scheduled_events += 1
        Arrival(sim.env, delay).callbacks.append(partial(self._landed, replica, req))

    def _landed(self, source: Replica, req: Request, _event: object) -> None:
        source.transfer_done(req)
        target = min(self.sim.decoders, key=lambda r: r.num_outstanding)
        target.enqueue(req)


class _Accounting(Hooks):
    """Requests in the system, and the end of the run once the workload is exhausted and everything is out."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def arrived(self, req: Request) -> None:
        self.sim.in_system += 1

    def finished(self, req: Request) -> None:
        if req.parent is not None:  # a sample or a reward-model pass: its request is in the system
            return
        sim = self.sim
        sim.in_system -= 1
        sim.check_done()


class Simulation:
    """Build the cluster of a scenario and run its workload through it. `hooks` add features' lifecycle hooks
    (simserve.engine.hooks) after the built-in ones (recording, sessions, hand-off). Records stream to
    `records_dir` (requests.parquet, replicas.parquet), or to a temporary folder the Results keep alive."""

    def __init__(self, scenario: Scenario, base_dir: Path | None = None, hooks: Sequence[Hooks] = (),
                 records_dir: Path | None = None) -> None:
        self.scenario = scenario
        self.base_dir = base_dir
        self.env = Environment()
        self.rngs = rng_streams(scenario.seed)
        # Speculative decoding's accepted-token draws: a counter-based hash keyed once from its own stream.
        self._spec_key = int(self.rngs["speculative"].integers(1 << 63))
        mix = scenario.workload.mix or []
        self.quality = any(q.quality_on for q in mix)
        trace_cache, minting = scenario.workload.trace_cache, scenario.workload.minting
        self.recorder = Recorder(records_dir, quality=self.quality,
                                 reuse=trace_cache is not None or minting is not None)
        self.engine = scenario.engine
        self.sessions = build_sessions(scenario.workload, self.rngs, base_dir)
        chain: list[Hooks] = [_Record(self.recorder)]
        if self.sessions is not None:
            chain.append(_FollowUps(self, self.sessions))
        roles = [p.role for p in scenario.cluster.pools]
        if "prefill" in roles:
            chain.append(_HandOff(self))
        self.answers: Answers | None = None
        self._no_thinking = {p.name for p in scenario.cluster.pools if not p.thinking}
        reward_pools: dict[str, list[Replica]] = {name: [] for name in scenario.reward_pools}
        if self.quality:
            self.answers = Answers(self, reward_pools)
            chain.insert(0, self.answers)  # decides a request's answer before it is recorded
        self.reuse: TraceReuse | None = None
        self._lookup_latency_s = 0.0
        if trace_cache is not None or minting is not None:
            per_replica = trace_cache is not None and trace_cache.scope == "replica"
            self.reuse = (ReplicaTraceReuse if per_replica else TraceReuse)(self, trace_cache, minting)
            chain.insert(0, self.reuse)
            self._lookup_latency_s = trace_cache.lookup_latency if trace_cache is not None else 0.0
        chain.extend(hooks)
        chain.append(_Accounting(self))
        self.hooks = HookChain(chain)
        self._hook_routed = self.hooks.wants("routed")
        self.replicas: list[Replica] = []
        self.kv_bytes_per_token: list[float] = []
        self.pools: list[dict[str, Any]] = []
        entry: list[Replica] = []
        self.decoders: list[Replica] = []
        for pool in scenario.cluster.pools:
            self._build_pool(pool, reward_pools.get(pool.name, entry))
        self.router = ROUTERS[scenario.router.kind](scenario.router, self.rngs["routing"])
        staleness = scenario.router.staleness_s
        # The router sees the replicas that take new requests; decode-only replicas get them from prefill ones.
        self.entry = entry
        self._views: list[Any] = [StaleView(r, staleness) for r in entry] if staleness > 0 else []
        self._decode_max_tokens = max((r.max_tokens for r in self.decoders), default=0)
        self.num_arrived = 0
        self.num_scheduled_events = 0  # arrivals, follow-up turns and KV transfers
        self.in_system = 0
        self.num_rejected_too_long = 0  # rejected on arrival here: too long for every decode replica
        self._pending: dict[int, Request] = {}  # follow-up turns scheduled but not arrived, by id(request)
        self._next_id = 0
        self._exhausted = False
        self._all_done = self.env.event()
        self._stop_requested = False
        self._last_arrival_s = math.inf  # known once the workload is exhausted
        self._trace_horizon = self.env.event()  # an open-ended trace's horizon, set by its last arrival
        self._horizon_follows_trace = False
        self._backlog: list[tuple[float, float]] = []  # (time, requests waiting cluster-wide) at sampled arrivals
        self._backlog_every = 1

    def _build_pool(self, pool: PoolSpec, entry: list[Replica]) -> None:
        scenario = self.scenario
        gpu, model = scenario.gpu_of(pool), scenario.model_of(pool)
        blocks = scenario.kv_blocks_of(pool)
        perf = build_perf(scenario.perf, gpu, model, pool, self.base_dir)
        self.pools.append({"pool": pool.name, "gpu": gpu.name, "model": model.name,
                           "replicas": pool.replicas, "tensor_parallel": pool.tensor_parallel,
                           "kv_capacity_blocks": blocks, "usd_per_gpu_hour": gpu.usd_per_hour})
        config = PlannerConfig(
            max_num_seqs=pool.max_num_seqs, max_num_batched_tokens=pool.max_num_batched_tokens,
            block_tokens=pool.kv_block_tokens, chunked_prefill=pool.chunked_prefill,
            long_prefill_token_threshold=pool.long_prefill_token_threshold,
            async_scheduling=pool.async_scheduling, reserve_full_isl=pool.reserve_full_isl,
            hand_off_after_prompt=pool.role == "prefill", kv_bytes_per_token=model.kv_bytes_per_token,
            kv_compression=pool.kv_compression is not None)
        scheduler = SCHEDULERS[scenario.scheduler.kind]
        spec = pool.speculative
        for _ in range(pool.replicas):
            kv = KvBlockPool(blocks, pool.kv_block_tokens, pool.prefix_caching)
            waiting = scheduler(scenario.scheduler, self.rngs["scheduling"])
            args: dict[str, Any] = dict(
                pool=pool.name, index=len(self.replicas), perf=perf,
                max_model_len_tokens=pool.max_model_len_tokens or model.max_context_tokens,
                recorder=self.recorder, hooks=self.hooks, exact_steps=self.engine.exact_steps,
                check_invariants=self.engine.check_invariants,
                stop_at_reasoning_end=self.hooks.wants("reasoning_done"), kv_compression=pool.kv_compression)
            if spec is None:
                replica = Replica(self.env, planner=Planner(config, kv, waiting), **args)
            else:  # speculative decoding: its own decode pass and fast-forward (simserve/engine/speculative.py)
                timing = build_timing(spec, perf, scenario.perf, PerfContext(
                    gpu, model, pool.tensor_parallel, pool.expert_parallel, pool.data_parallel_attention,
                    self.base_dir))
                planner = SpecPlanner(config, kv, waiting, spec, self._spec_key)
                replica = SpecReplica(self.env, planner=planner, timing=timing, **args)
            self.replicas.append(replica)
            self.kv_bytes_per_token.append(model.kv_bytes_per_token)
            (self.decoders if pool.role == "decode" else entry).append(replica)

    # ------------------------------------------------------------------------------------------ arrivals

    def arrive(self, req: Request) -> None:
        """The one chokepoint every request passes on entering the system: number it, tell the hooks, route it
        (or reject it at once if no replica that must serve it can ever hold it)."""
        req.request_id = self._next_id  # ids in arrival order, follow-up turns included
        self._next_id += 1
        self.num_arrived += 1
        self.hooks.arrived(req)
        if self.num_arrived % self._backlog_every == 0:
            self._sample_backlog()
        if self.decoders and req.total_tokens > self._decode_max_tokens:
            self.num_rejected_too_long += 1
            req.status = "rejected"
            req.reason = (f"needs {req.total_tokens} tokens of KV; decode replicas hold at most "
                          f"{self._decode_max_tokens}")
            self.hooks.finished(req)
            return
        if self._views:
            for v in self._views:
                v.refresh(self.env.now)
            self._enqueue(self.entry[self.router.choose(req, self._views)], req)
        else:
            self._enqueue(self.entry[self.router.choose(req, self.entry)], req)

    def _enter(self, req: Request) -> None:
        """Where the workload's requests come in: a request with a concept first waits out the trace cache's
        lookup latency (a scheduled arrival, as a follow-up turn's), then arrives; the lookup is answered then."""
        if req.concept >= 0 and self._lookup_latency_s > 0.0:
            self.arrive_later(req, self._lookup_latency_s)
        else:
            self.arrive(req)

    def _enqueue(self, replica: Replica, req: Request) -> None:
        if self._hook_routed:
            self.hooks.routed(req, replica)
        if replica.pool in self._no_thinking and req.answer is None:
            req.reasoning_tokens = 0  # a pool that answers without reasoning
        if self.answers is not None:
            self.answers.enqueue(req, replica)  # itself, or its parallel samples
        else:
            replica.enqueue(req)

    def arrive_later(self, req: Request, delay_s: float) -> None:
        """Schedule a request made during the run (a follow-up turn) to arrive `delay_s` from now."""
        self.num_scheduled_events += 1
        self._pending[id(req)] = req
        Arrival(self.env, delay_s).callbacks.append(partial(self._arrive_pending, req))

    def _arrive_pending(self, req: Request, _event: object) -> None:
        del self._pending[id(req)]
        self.arrive(req)

    def _sample_backlog(self) -> None:
        """Keep about 512 samples of the cluster-wide waiting queue at arrivals (for the saturation test), in
        requests: parallel samples waiting count as the share of a request they are."""
        waiting: float = sum(r.num_waiting for r in self.replicas)
        if self.answers is not None and self.answers.num_samples > self.num_arrived > 0:
            waiting = waiting * self.num_arrived / self.answers.num_samples
        self._backlog.append((self.env.now, waiting))
        if len(self._backlog) >= 1024:
            self._backlog = self._backlog[1::2]
            self._backlog_every *= 2

    def check_done(self) -> None:
        if self._exhausted and self.in_system == 0 and not self._pending and not self._all_done.triggered:
            self._all_done.succeed()

    def _on_exhausted(self) -> None:
        self._exhausted = True
        self._last_arrival_s = self.env.now
        self._sample_backlog()
        if self._horizon_follows_trace:  # an open-ended trace: the horizon is set by its real last arrival
            self.env.timeout(self.horizon_s() - self.env.now).callbacks.append(self._reach_trace_horizon)
        self.check_done()

    def _reach_trace_horizon(self, _event: object) -> None:
        self._trace_horizon.succeed()

    def stop(self) -> None:
        """End the run at the current instant, as a user stopping it (Ctrl-C on the command line): run() then
        returns Results over the requests that ended so far plus those in flight (recorded as unfinished), its
        summary marked `partial`. Requests not yet arrived are not drained (the workload may be endless). Call it
        from a hook or a SimPy callback, where the engine's state is whole; the run stops before the next event."""
        if not self._stop_requested:
            self._stop_requested = True
            Arrival(self.env, 0.0).callbacks.append(simpy.core.StopSimulation.callback)

    def horizon_s(self) -> float:
        """Simulated time at which the run stops even if requests remain (they are reported unfinished):
        `engine.horizon_s`, or by default max(2 x span, span + 1 h), the span being the workload's expected last
        arrival. A trace with no end (no `end_s` or `duration_s`) is replayed whole: its span is its real last
        arrival, known once it has arrived (math.inf until then)."""
        if self.engine.horizon_s is not None:
            return self.engine.horizon_s
        span = self.scenario.workload.expected_span_s
        if not math.isfinite(span):
            span = self._last_arrival_s
        return max(2.0 * span, span + 3600.0)

    # ------------------------------------------------------------------------------------------ the run

    def run(self, requests: Iterable[Request] | None = None) -> Results:
        """Run to the end (all requests done), the horizon, or a `stop()`. `requests`, in arrival order, replaces
        the scenario's synthetic workload (replaying a list of requests made elsewhere)."""
        wall0 = time.perf_counter()
        env = self.env
        spec = self.scenario.workload
        history_s = spec.reuse_history_s if requests is None else None
        if history_s is not None:  # the generator runs through the history, then the run's own window
            spec = spec.model_copy(update={"num_requests": None, "duration_s": (
                history_s + spec.duration_s if spec.duration_s is not None else None)})
        workload: Iterator[Request] = iter(requests) if requests is not None else generate_requests(
            spec, self.rngs, self.base_dir, sessions=self.sessions,
            model=self.scenario.answer_model, variants=self.scenario.answer_variants(),
            kv_compression=self.scenario.answer_compression)
        if history_s is not None:
            assert self.reuse is not None
            workload = self.reuse.history(workload, history_s, self.scenario.workload.num_requests)
        counted = _Counted(workload)
        env.process(arrivals(env, counted, self._enter if self.reuse is not None else self.arrive,
                             self._on_exhausted))
        for r in self.replicas:
            env.process(r.process())
        horizon = self.horizon_s()
        self._horizon_follows_trace = not math.isfinite(horizon)
        stop = self._trace_horizon if self._horizon_follows_trace else env.timeout(horizon)
        try:
            with _fewer_collections():
                env.run(until=self._all_done | stop)
        except BaseException:
            self.recorder.abort()  # the .partial files stay as they are; nothing gets a final name
            raise
        end_s = env.now
        horizon = self.horizon_s()  # an open-ended trace's, known now if its last request arrived
        interrupted = self._stop_requested and not self._all_done.triggered
        stopped = not self._all_done.triggered and not interrupted  # at the horizon, fixed or the trace's
        where_s = f"when the run was stopped ({end_s:g} s)" if interrupted else f"at the horizon ({horizon:g} s)"
        for r in self.replicas:
            r.settle(end_s)
        left: Iterable[tuple[Request, str]] = (pair for r in self.replicas for pair in r.unfinished())
        if self.answers is not None:
            left = self.answers.at_end(list(left))  # samples' requests, once each, their tokens counted
        for req, where in left:
            req.status = "unfinished"
            req.reason = f"still {where} {where_s}"
            self.recorder.request(req)
        if stopped:
            for req in itertools.chain(list(self._pending.values()), counted.rest()):  # streamed, not listed
                req.request_id = self._next_id
                self._next_id += 1
                req.status = "not_arrived"
                req.reason = f"arrives after the horizon ({horizon:g} s)"
                self.recorder.request(req)
        request_rows, segment_rows = self.recorder.close()
        summary = self._summary(request_rows, segment_rows, end_s, time.perf_counter() - wall0, stopped)
        summary["partial"] = interrupted
        return Results(summary, self.recorder, request_rows, self.pools)

    def _saturation(self, stopped: bool) -> tuple[bool, float]:
        """Saturated: the run stopped at its horizon with work left, or the cluster-wide waiting queue grew over
        the second half of the arrivals by more than 2.5% of them (the offered load exceeds what it serves).
        Returns the verdict and the queue's growth rate over that half (requests per second)."""
        samples = self._backlog
        growth = 0.0
        grew = False
        if len(samples) >= 2:
            t0, t1 = samples[0][0], samples[-1][0]
            mid = next(q for t, q in samples if t >= (t0 + t1) / 2.0)
            end = samples[-1][1]
            if t1 > t0:
                growth = (end - mid) / ((t1 - t0) / 2.0)
            grew = end - mid > max(8.0, 0.025 * self.num_arrived)
        return stopped or grew, growth

    def _summary(self, requests: Frame | Path, segments: Frame | Path, end_s: float, wall_s: float,
                 stopped: bool) -> dict[str, Any]:
        span = max(end_s, 1e-12)
        util = [r.kv_area / span / r.kv.capacity_blocks for r in self.replicas]
        peak = [r.kv_peak / r.kv.capacity_blocks for r in self.replicas]
        busy = busy_seconds(segments)
        for p in self.pools:
            p["gpu_hours"] = p["replicas"] * p["tensor_parallel"] * end_s / 3600.0
            p["cost_usd"] = p["gpu_hours"] * p["usd_per_gpu_hour"]
            p["busy_share"] = busy.get(p["pool"], 0.0) / (p["replicas"] * span)
        gpu_hours = sum(p["gpu_hours"] for p in self.pools)
        num_gpus = sum(p["replicas"] * p["tensor_parallel"] for p in self.pools)
        cost = sum(p["cost_usd"] for p in self.pools)
        mint_extra: dict[str, Any] = {}
        mint = self.reuse.minting if self.reuse is not None else None
        if mint is not None:  # the minting jobs' GPU-hours, counted into the run's GPU-hours and cost
            mint.run_due(end_s)
            price = mint.spec.usd_per_gpu_hour
            price = self.pools[0]["usd_per_gpu_hour"] if price is None else price
            mint_extra = {"minting_gpu_hours": mint.gpu_hours, "minting_cost_usd": mint.gpu_hours * price}
            gpu_hours += mint.gpu_hours
            cost += mint.gpu_hours * price
        serving_cost = sum(p["cost_usd"] for p in self.pools)
        cache_costs = self.reuse.costs(end_s) if self.reuse is not None else {}
        if cache_costs:  # the trace cache's lookups and storage, counted into the run's cost
            cost += cache_costs["trace_cache_lookup_cost_usd"] + cache_costs["trace_cache_storage_cost_usd"]
        num_events = self.num_arrived + self.num_scheduled_events + sum(r.num_events for r in self.replicas)
        saturated, growth = self._saturation(stopped)
        extra = {
            "stopped_at_horizon": stopped,
            "num_rejected_too_long": self.num_rejected_too_long + sum(r.num_rejected_too_long for r in self.replicas),
            "queue_growth_requests_per_s": growth,
            # GPU utilisation as a busy share: time the replicas spent stepping over the makespan, per GPU
            "gpu_busy_share": sum(p["busy_share"] * p["replicas"] * p["tensor_parallel"] for p in self.pools)
            / num_gpus,
            "queue_len_mean": sum(r.waiting_mon.integral(end_s) for r in self.replicas) / span,
            "batch_size_mean": sum(r.running_mon.integral(end_s) for r in self.replicas) / span / len(self.replicas),
            "num_events": num_events,
            "events_per_request": num_events / max(self.recorder.num_recorded, 1),
            "wall_time_s": wall_s,
            "horizon_s": self.horizon_s(),
            "exact_steps": self.engine.exact_steps,
            "swap_bytes": sum(r.planner.swap_bytes for r in self.replicas),
            # KV tokens attended over (kept KV) per token of KV blocks reserved, time-weighted over all replicas
            "kv_memory_efficiency": sum(r.kv_token_area for r in self.replicas)
            / max(sum(r.kv_area * r.block_tokens for r in self.replicas), 1e-12),
            "peak_running": max(r.running_mon.peak for r in self.replicas),
        }
        if len(self.pools) > 1:
            for p in self.pools:
                extra[f"gpu_hours_{p['pool']}"] = p["gpu_hours"]
                extra[f"cost_usd_{p['pool']}"] = p["cost_usd"]
                extra[f"gpu_busy_share_{p['pool']}"] = p["busy_share"]
        slo = self.scenario.slo.model_dump() if self.scenario.slo else {}
        summary = summarize(requests, makespan_s=end_s, slo=slo,
                            kv_utilization_mean=float(np.mean(util)), kv_utilization_max=float(np.max(peak)),
                            gpu_hours=gpu_hours, cost_usd=cost, extra=extra)
        summary["saturated"] = saturated
        summary.update(service_summary(requests))
        if self.reuse is not None:
            summary.update(self.reuse.summary())
            summary.update(mint_extra)
            if cache_costs:
                summary.update(cache_costs)
                summary.update(_break_even(cache_costs, serving_cost, summary["output_tokens"]))
        if self.quality:
            summary.update(quality_summary(requests, cost))
            model = self.scenario.answer_model
            router = self.router
            if isinstance(router, ByDifficulty) and self.answers is not None:
                a = self.answers
                summary["routing_accuracy"] = router.num_right / router.num_classified if router.num_classified else (
                    math.nan)
                summary["routed_by_class"] = dict(router.routed)
                n = a.num_referenced
                summary["accuracy_reference"] = a.num_reference_correct / n if n else math.nan
                summary["accuracy_lost"] = (a.num_reference_correct - a.num_routed_correct) / n if n else math.nan
            summary["quality_sources"] = {  # where each query type's accuracy model came from: data or assumed
                q.query_type: resolve(q.quality, model, q.query_type, q.early_exit).source
                for q in self.scenario.workload.mix or [] if q.quality_on}
        pricing = self.scenario.pricing
        if pricing is not None:
            summary.update(revenue_summary(
                requests, input_usd_per_mtok=pricing.input_usd_per_mtok,
                output_usd_per_mtok=pricing.output_usd_per_mtok, bill_reused_reasoning=pricing.bill_reused_reasoning,
                cost_usd=cost, reuse_columns=self.recorder.reuse,
                step_prompt_tokens=self.reuse.step_prompt_tokens if self.reuse is not None else 0))
        return summary


def _break_even(costs: dict[str, Any], serving_cost_usd: float, output_tokens: int) -> dict[str, float]:
    """The trace cache's break-even hit ratio: the cost of one lookup over the GPU USD one hit saves, that is the
    reasoning tokens a hit saved on average x the run's GPU USD per generated token (its serving GPUs' cost over
    the output tokens they generated: idle time included, minting and the cache's own costs not). A hit ratio
    above it pays for the lookups. NaN with no hit or no token generated."""
    per_token = float(serving_cost_usd) / output_tokens if output_tokens else math.nan
    saved = costs["trace_cache_saved_tokens_per_hit"] * per_token
    return {"gpu_usd_per_generated_token": per_token, "trace_cache_usd_saved_per_hit": saved,
            "trace_cache_break_even_hit_ratio": costs["trace_cache_lookup_usd"] / saved if saved > 0 else math.nan}


class _Counted:
    """The workload's requests, lazily; what the arrivals process did not take can be drained at the end."""

    def __init__(self, requests: Iterator[Request]) -> None:
        self._it = requests
        self._held: Request | None = None

    def __iter__(self) -> Iterator[Request]:
        return self

    def __next__(self) -> Request:
        req = next(self._it)
        self._held = req
        return req

    def rest(self) -> Iterator[Request]:
        """Requests not yet routed: the one the arrivals process holds (waiting for its time), then the rest."""
        held = self._held
        if held is not None and held.pool == "" and held.status == "":
            yield held
        yield from self._it


def build_perf(spec: PerfSpec, gpu: GpuSpec, model: ModelSpec, pool: PoolSpec, base_dir: Path | None) -> PerfModel:
    """A pool's step-time model."""
    return spec.build(PerfContext(gpu, model, pool.tensor_parallel, pool.expert_parallel,
                                  pool.data_parallel_attention, base_dir))


# The cyclic garbage collector while runs are in flight: how many, and the state to restore when the last ends.
_gc_lock = threading.Lock()
_gc_runs = 0
_gc_saved: tuple[tuple[int, int, int], bool] = ((700, 10, 10), False)
RUN_GC_THRESHOLD = (100_000, 50, 100)


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run with fewer cyclic collections: a run allocates millions of short-lived objects (requests' records, plans,
    numpy temporaries), almost all freed by reference counting, and CPython's default threshold (a young-generation
    collection every 700 net allocations) spends 3-4% of a saturated run rescanning them. The objects made before the
    run (modules, the scenario, fitted tables) are frozen out of every collection and the young generation is
    collected every 100,000 allocations; cycles are still collected. The collector's settings come back when the
    last run in flight ends (runs in threads of one process share them); a caller's own frozen objects are left
    frozen. Collections do not touch simulated state, so results are the same."""
    global _gc_runs, _gc_saved
    with _gc_lock:
        if _gc_runs == 0:
            froze = gc.get_freeze_count() == 0
            _gc_saved = (gc.get_threshold(), froze)
            if froze:
                gc.freeze()
            gc.set_threshold(*RUN_GC_THRESHOLD)
        _gc_runs += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_runs -= 1
            if _gc_runs == 0:
                threshold, froze = _gc_saved
                gc.set_threshold(*threshold)
                if froze:
                    gc.unfreeze()


def run(scenario: Scenario, base_dir: Path | None = None) -> Results:
    """Simulate `scenario` once. `base_dir` resolves relative data files (defaults to the scenario's folder)."""
    return Simulation(scenario, base_dir if base_dir is not None else scenario.base_dir).run()

