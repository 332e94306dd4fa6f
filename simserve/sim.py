"""One simulated world: `Simulation(scenario)` owns the clock, the RNG tree and the replicas; `run()` returns
Results (flat records and a summary). No file IO here."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import simpy

from simserve.cluster import Arrival, Replica, arrivals
from simserve.hardware import GpuSpec, ModelSpec, kv_capacity_blocks
from simserve.metrics import Recorder, summarize
from simserve.perf import PerfContext, PerfModel, PerfSpec
from simserve.routing import ROUTERS, StaleView
from simserve.schedulers import SCHEDULERS
from simserve.workload import Request, build_sessions, generate_requests

if TYPE_CHECKING:
    from simserve.scenario import PoolSpec, Scenario

# One named child stream per source of randomness, in a fixed order: adding a stream at the end never changes
# the draws of the others.
STREAMS = ("arrivals", "mix", "lengths", "users", "routing", "sessions")


@dataclass
class Results:
    """What a run produced: one row per request, one row per replica segment (a step, a fast-forwarded run of
    steps, or an idle gap), and the flat summary."""

    requests: pd.DataFrame
    replicas: pd.DataFrame
    summary: dict[str, Any]
    pools: list[dict[str, Any]] = field(default_factory=list)


class Simulation:
    """Build the cluster of a scenario and run its workload through it."""

    def __init__(self, scenario: Scenario, base_dir: Path | None = None) -> None:
        self.scenario = scenario
        self.base_dir = base_dir
        self.env = simpy.Environment()
        seeds = np.random.SeedSequence(scenario.seed).spawn(len(STREAMS))
        self.rngs = {name: np.random.default_rng(s) for name, s in zip(STREAMS, seeds, strict=True)}
        self.recorder = Recorder()
        self.engine = scenario.engine
        self.replicas: list[Replica] = []
        self._roles: list[str] = []
        self._kv_bytes_per_token: list[float] = []
        self.pools: list[dict[str, Any]] = []
        for pool in scenario.cluster.pools:
            gpu, model = scenario.gpu_of(pool), scenario.model_of(pool)
            blocks = pool.num_kv_blocks or kv_capacity_blocks(
                gpu, model, pool.tensor_parallel, pool.gpu_memory_utilization, pool.kv_block_tokens,
                scenario.reserve_bytes_of(pool), pool.data_parallel_attention)
            perf = build_perf(scenario.perf, gpu, model, pool, base_dir)
            self.pools.append({"pool": pool.name, "gpu": gpu.name, "model": model.name,
                               "replicas": pool.replicas, "tensor_parallel": pool.tensor_parallel,
                               "kv_capacity_blocks": blocks, "usd_per_gpu_hour": gpu.usd_per_hour})
            handoff = self._handoff if pool.role == "prefill" else None
            for _i in range(pool.replicas):
                self.replicas.append(Replica(
                    self.env, pool=pool.name, index=len(self.replicas), perf=perf, kv_capacity_blocks=blocks,
                    kv_block_tokens=pool.kv_block_tokens, max_num_seqs=pool.max_num_seqs,
                    max_num_batched_tokens=pool.max_num_batched_tokens,
                    max_model_len_tokens=pool.max_model_len_tokens or model.max_context_tokens,
                    scheduler=SCHEDULERS[scenario.scheduler](), recorder=self.recorder, on_done=self._done,
                    exact_steps=self.engine.exact_steps, check_invariants=self.engine.check_invariants,
                    prefix_caching=pool.prefix_caching, on_prefilled=handoff))
                self._roles.append(pool.role)
                self._kv_bytes_per_token.append(model.kv_bytes_per_token)
        self.router = ROUTERS[scenario.router.kind](scenario.router, self.rngs["routing"])
        staleness = scenario.router.staleness_s
        # The router sees the replicas that take new requests; decode-only replicas get them from prefill ones.
        self.entry = [r for r, role in zip(self.replicas, self._roles, strict=True) if role != "decode"]
        self.decoders = [r for r, role in zip(self.replicas, self._roles, strict=True) if role == "decode"]
        self._views: list[Any] = [StaleView(r, staleness) for r in self.entry] if staleness > 0 else []
        self._transfer = scenario.cluster.kv_transfer
        self._arrived = [0]
        self._next_id = 0
        self._pending = 0  # follow-up turns scheduled but not yet arrived
        self.sessions = build_sessions(scenario.workload, self.rngs, base_dir)
        self._in_system = 0
        self._exhausted = False
        self._all_done = self.env.event()

    def _route(self, req: Request) -> None:
        req.request_id = self._next_id  # ids in arrival order, follow-up turns included
        self._next_id += 1
        self._in_system += 1
        if self._views:
            for v in self._views:
                v.refresh(self.env.now)
            self.entry[self.router.choose(req, self._views)].enqueue(req)
        else:
            self.entry[self.router.choose(req, self.entry)].enqueue(req)

    def _handoff(self, source: Replica, req: Request) -> None:
        """A prefill replica finished a request's prompt: send its KV over the link, then queue it for decoding
        at the decode replica with the fewest outstanding requests (chosen when the KV lands)."""
        tokens = req.computed_tokens
        delay = self._transfer.latency_s + tokens * self._kv_bytes_per_token[source.index] / (
            self._transfer.bandwidth_bytes_per_s)
        self._arrived[0] += 1
        Arrival(self.env, delay).callbacks.append(partial(self._kv_landed, source, req))

    def _kv_landed(self, source: Replica, req: Request, _event: object) -> None:
        source.transfer_done(req)
        req.kv_ready = True
        target = min(self.decoders, key=lambda r: r.num_outstanding)
        target.enqueue(req)

    def _done(self, req: Request) -> None:
        self.recorder.request(req)
        self._in_system -= 1
        if self.sessions is not None:
            follow = self.sessions.next_turn(req)
            if follow is not None:
                self._pending += 1
                self._arrived[0] += 1
                think_s, turn = follow
                Arrival(self.env, think_s).callbacks.append(partial(self._follow_up, turn))
        if self._exhausted and self._in_system == 0 and self._pending == 0 and not self._all_done.triggered:
            self._all_done.succeed()

    def _follow_up(self, req: Request, _event: object) -> None:
        self._pending -= 1
        self._route(req)

    def _on_exhausted(self) -> None:
        self._exhausted = True
        if self._in_system == 0 and self._pending == 0 and not self._all_done.triggered:
            self._all_done.succeed()

    def horizon_s(self) -> float:
        """Simulated time at which the run stops even if requests remain (they are reported unfinished)."""
        if self.engine.horizon_s is not None:
            return self.engine.horizon_s
        span = self.scenario.workload.expected_span_s
        return max(2.0 * span, span + 3600.0)

    def run(self, requests: Iterable[Request] | None = None) -> Results:
        """Run to the end (all requests done) or the horizon. `requests`, in arrival order, replaces the
        scenario's synthetic workload (replaying a list of requests made elsewhere)."""
        wall0 = time.perf_counter()
        env = self.env
        workload = iter(requests) if requests is not None else generate_requests(
            self.scenario.workload, self.rngs, self.base_dir, sessions=self.sessions)
        env.process(arrivals(env, workload, self._route, self._arrived, self._on_exhausted))
        for r in self.replicas:
            env.process(r.process())
        horizon = self.horizon_s()
        env.run(until=self._all_done | env.timeout(horizon))
        end_s = env.now
        for r in self.replicas:
            r.settle(end_s)
            for req in r.unfinished():
                req.status = "unfinished"
                req.reason = f"still {'running' if req.admit_seq >= 0 else 'waiting'} at the horizon ({horizon:g} s)"
                self.recorder.request(req)
        requests = self.recorder.requests_frame()
        replicas = self.recorder.segments_frame()
        summary = self._summary(requests, end_s, time.perf_counter() - wall0)
        return Results(requests, replicas, summary, self.pools)

    def _summary(self, requests: pd.DataFrame, end_s: float, wall_s: float) -> dict[str, Any]:
        span = max(end_s, 1e-12)
        util = [r.kv_area / span / r.kv.capacity_blocks for r in self.replicas]
        peak = [r.kv_peak / r.kv.capacity_blocks for r in self.replicas]
        for p in self.pools:
            p["gpu_hours"] = p["replicas"] * p["tensor_parallel"] * end_s / 3600.0
            p["cost_usd"] = p["gpu_hours"] * p["usd_per_gpu_hour"]
        gpu_hours = sum(p["gpu_hours"] for p in self.pools)
        cost = sum(p["cost_usd"] for p in self.pools)
        num_events = self._arrived[0] + sum(r.num_events for r in self.replicas)
        extra = {
            "queue_len_mean": sum(r.waiting_mon.integral(end_s) for r in self.replicas) / span,
            "batch_size_mean": sum(r.running_mon.integral(end_s) for r in self.replicas) / span / len(self.replicas),
            "num_events": num_events,
            "events_per_request": num_events / max(len(requests), 1),
            "wall_time_s": wall_s,
            "horizon_s": self.horizon_s(),
            "exact_steps": self.engine.exact_steps,
        }
        if len(self.pools) > 1:
            for p in self.pools:
                extra[f"gpu_hours_{p['pool']}"] = p["gpu_hours"]
                extra[f"cost_usd_{p['pool']}"] = p["cost_usd"]
        slo = self.scenario.slo.model_dump() if self.scenario.slo else {}
        return summarize(requests, makespan_s=end_s, slo=slo,
                         kv_utilization_mean=float(np.mean(util)), kv_utilization_max=float(np.max(peak)),
                         gpu_hours=gpu_hours, cost_usd=cost, extra=extra)


def build_perf(spec: PerfSpec, gpu: GpuSpec, model: ModelSpec, pool: PoolSpec, base_dir: Path | None) -> PerfModel:
    """A pool's step-time model."""
    return spec.build(PerfContext(gpu, model, pool.tensor_parallel, pool.expert_parallel,
                                  pool.data_parallel_attention, base_dir))


def run(scenario: Scenario, base_dir: Path | None = None) -> Results:
    """Simulate `scenario` once. `base_dir` resolves relative data files (defaults to the scenario's folder)."""
    return Simulation(scenario, base_dir if base_dir is not None else scenario.base_dir).run()



