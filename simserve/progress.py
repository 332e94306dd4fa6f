"""Watching a run from the command line: a size estimate before it starts, progress while it goes, and Ctrl-C.

- Before: the expected number of requests over a measured rate of requests per wall second gives a rough run
  time; `simserve run` asks for --yes above CONFIRM_ABOVE_S of it.
- During: a thread samples the simulation's own counters (simulated time, requests ended, events) four times a
  second and draws a rich progress bar on a terminal, or writes a plain line to stderr every LOG_EVERY_S seconds
  when stderr is not one; nothing shows for runs shorter than SHOW_AFTER_S. The engine's loop does no clock check
  at all: the thread reads plain attributes that the engine updates anyway.
- Ctrl-C: the first one asks the run to stop at the next request arrival or completion, where the engine's state
  is whole (Simulation.stop() from a lifecycle hook); the run then returns partial Results. A second Ctrl-C stops
  at once (KeyboardInterrupt, nothing kept).

- Many runs (sweep, compare, plan): BatchProgress counts runs done of those due, with the requests and simulated
  seconds of the runs done and the time left, as a bar on a terminal or a plain line every LOG_EVERY_S.

Part of the command line (with cli.py and report.py, the only modules that write to the terminal)."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from simserve.engine.hooks import Hooks
from simserve.report import count, number

if TYPE_CHECKING:
    from simserve.request import Request
    from simserve.scenario import Scenario
    from simserve.sim import Simulation

# Requests simulated per wall second: bench/bench_core.py's 10,000-request run (8 x H100, llama-3.1-8b, 4,000
# output tokens per request, fast-forward) on one core of the 2-core development machine made 6,651/s, its
# 2,000-request run with exact steps 351/s; rounded down. Other clusters and workloads differ (long outputs, big
# batches and preemptions are slower): an estimate, which the progress line replaces with the measured rate.
REQUESTS_PER_WALL_S = 6000.0
EXACT_STEPS_REQUESTS_PER_WALL_S = 350.0
CONFIRM_ABOVE_S = 3600.0  # estimated wall time above which `simserve run` wants --yes
ANNOUNCE_ABOVE_S = 60.0  # estimated wall time above which the estimate is printed before the run
SHOW_AFTER_S = 2.0  # no progress display for runs shorter than this
LOG_EVERY_S = 5.0  # a progress line this often when stderr is not a terminal
SAMPLE_EVERY_S = 0.25


def expected_requests(scenario: Scenario) -> float | None:
    """Requests the scenario will offer, by its own numbers: num_requests, or duration x rate, whichever is
    fewer, times the mean turns of a session; for a trace, num_requests if given (None: unknown)."""
    w = scenario.workload
    if w.trace is not None:
        return float(w.num_requests) if w.num_requests is not None else None
    assert w.arrival is not None
    n = float(w.num_requests) if w.num_requests is not None else math.inf
    if w.duration_s is not None:
        n = min(n, w.duration_s / w.arrival_process.mean_gap_s)
    if w.sessions is not None:
        n *= max(1.0, w.sessions.turns.build(scenario.base_dir).mean)
    return n


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h', '4 days', '5,285 years'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 730 * 86400:
        return f"{seconds / 86400:.0f} days"
    return f"{count(seconds / (365.25 * 86400))} years"


@dataclass(frozen=True)
class Estimate:
    requests: float
    requests_per_wall_s: float

    @property
    def wall_s(self) -> float:
        return self.requests / self.requests_per_wall_s

    def describe(self) -> str:
        return (f"about {count(self.requests)} requests: roughly {duration(self.wall_s)} of wall time at "
                f"~{count(self.requests_per_wall_s)} requests per second (an estimate from the speed benchmark; "
                "the progress line shows the real rate)")


def estimate(scenario: Scenario, requests: float | None = None) -> Estimate | None:
    """The run's size and rough wall time, for `requests` if given (a trace's, counted by reading it), else by
    the scenario's own numbers; None when the number of requests is not known before the run (a trace without
    num_requests, not read)."""
    n = requests if requests is not None else expected_requests(scenario)
    if n is None or not math.isfinite(n):
        return None
    rate = EXACT_STEPS_REQUESTS_PER_WALL_S if scenario.engine.exact_steps else REQUESTS_PER_WALL_S
    return Estimate(n, rate)


@dataclass(frozen=True)
class Snapshot:
    """Where a run stands: simulated time, requests arrived and ended (completed or rejected), events."""

    sim_s: float
    arrived: int
    ended: int
    events: int

    @classmethod
    def of(cls, sim: Simulation, ended: int) -> Snapshot:
        # Plain attribute reads, safe from another thread: each is one int or float the engine keeps anyway.
        return cls(sim.env.now, sim.num_arrived, ended,
                   sim.num_arrived + sim.num_scheduled_events + sum(r.num_events for r in sim.replicas))

    def where(self) -> str:
        return (f"{number(self.sim_s)} s simulated, {count(self.ended)} requests finished "
                f"({count(self.arrived)} arrived)")


class RunMonitor(Hooks):
    """Progress and Ctrl-C for one Simulation: pass it in `hooks` and run the simulation inside `watching(sim)`.
    `stop_requested` tells afterwards whether the user pressed Ctrl-C."""

    def __init__(self, expected: float | None, horizon_s: float, *, stream: Any = None) -> None:
        self.expected = expected
        self.horizon_s = horizon_s
        self.stream = stream if stream is not None else sys.stderr
        self.stop_requested = False
        self.ended = 0  # requests completed or rejected (the unfinished rows a stopped run adds are not counted)
        self.sim: Simulation | None = None
        self._stopping = False
        self._done = threading.Event()

    # -------------------------------------------------------------------- hooks: the safe points to stop at

    def arrived(self, req: Request) -> None:
        if self.stop_requested and not self._stopping:
            self._stop()

    def finished(self, req: Request) -> None:
        if req.parent is None:  # a request users sent, not one of its parallel samples
            self.ended += 1
        if self.stop_requested and not self._stopping:
            self._stop()

    def _stop(self) -> None:
        self._stopping = True
        if self.sim is not None:
            self.sim.stop()

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_requested:  # the second Ctrl-C: at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.stop_requested = True

    # -------------------------------------------------------------------- the run

    @contextmanager
    def watching(self, sim: Simulation) -> Iterator[None]:
        """Ctrl-C stops `sim` cleanly while inside; progress shows from SHOW_AFTER_S on."""
        self.sim = sim
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        thread = threading.Thread(target=self._show, args=(sim,), name="simserve-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join()
            signal.signal(signal.SIGINT, previous)

    def fraction(self, snap: Snapshot) -> float:
        """Share of the run done: requests ended of those expected, or simulated time of the horizon, whichever
        is further (a run ends at whichever comes first)."""
        by_time = snap.sim_s / self.horizon_s if self.horizon_s > 0 else 0.0
        by_requests = snap.ended / self.expected if self.expected else 0.0
        return min(1.0, max(by_time, by_requests))

    def status(self, snap: Snapshot, elapsed_s: float) -> str:
        f = self.fraction(snap)
        of = f" of {count(self.expected)}" if self.expected else ""
        left = f", about {duration(elapsed_s * (1 - f) / f)} left" if f > 0.001 else ""
        stopping = "; stopping at the next request (Ctrl-C again: at once)" if self.stop_requested else ""
        return (f"{number(snap.sim_s)} s simulated, {count(snap.ended)}{of} requests finished, "
                f"{count(snap.events / elapsed_s if elapsed_s > 0 else 0)} events/s{left}{stopping}")

    def _show(self, sim: Simulation) -> None:
        from rich.console import Console

        console = Console(file=self.stream, highlight=False)
        t0 = time.perf_counter()
        if self._done.wait(SHOW_AFTER_S):
            return
        if console.is_terminal:
            self._bar(sim, console, t0)
            return
        last, told_stop = -math.inf, False
        while True:
            now = time.perf_counter()
            if now - last >= LOG_EVERY_S or (self.stop_requested and not told_stop):
                print(f"simserve: {self.status(Snapshot.of(sim, self.ended), now - t0)}", file=self.stream, flush=True)
                last, told_stop = now, self.stop_requested
            if self._done.wait(SAMPLE_EVERY_S):
                return

    def _bar(self, sim: Simulation, console: Any, t0: float) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        with Progress(TextColumn("simserve"), BarColumn(), TaskProgressColumn(), TextColumn("{task.description}"),
                      console=console, transient=True, auto_refresh=False) as bar:
            task = bar.add_task("", total=1.0)
            while True:
                snap = Snapshot.of(sim, self.ended)
                bar.update(task, completed=self.fraction(snap),
                           description=self.status(snap, time.perf_counter() - t0))
                bar.refresh()
                if self._done.wait(SAMPLE_EVERY_S):
                    return


class BatchProgress:
    """Progress of many runs (sweep, compare, plan): runs done of those due (cached ones count as done), the
    requests and simulated seconds of the runs done, and the time left at the rate of the runs made so far. A rich
    bar on a terminal; otherwise a plain line when the batch starts, every `every_s` seconds and at the end.
    Give `done` as the batch's on_done callback and run the batch inside `watching()`."""

    def __init__(self, label: str, total: int = 0, *, stream: Any = None, every_s: float = LOG_EVERY_S) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.runs = self.cached = self.requests = 0
        self.sim_s = 0.0
        self._t0 = time.perf_counter()
        self._done = threading.Event()

    def done(self, task: Any, result: dict[str, Any], cached: bool) -> None:
        self.runs += 1
        self.total = max(self.total, self.runs)  # a search's total is an estimate (more seeds where undecided)
        self.cached += cached
        figures = result["figures"]
        self.requests += int(figures.get("num_requests", 0))
        self.sim_s += float(figures.get("makespan_s", 0.0))

    def status(self) -> str:
        elapsed = time.perf_counter() - self._t0
        ran = self.runs - self.cached
        left = self.total - self.runs
        eta = f", about {duration(elapsed / ran * left)} left" if ran and left > 0 else ""
        cached = f" ({count(self.cached)} from the cache)" if self.cached else ""
        return (f"{count(self.runs)}/{count(self.total)} runs{cached}, {count(self.requests)} requests and "
                f"{number(self.sim_s)} s simulated, {duration(elapsed)} elapsed{eta}")

    @contextmanager
    def watching(self) -> Iterator[None]:
        from rich.console import Console

        console = Console(file=self.stream, highlight=False)
        self._t0 = time.perf_counter()
        thread = threading.Thread(target=self._bar if console.is_terminal else self._log, args=(console,),
                                  name="simserve-batch-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._done.set()
            thread.join()
            print(f"{self.label}: {self.status()}", file=self.stream, flush=True)

    def _log(self, console: Any) -> None:
        while True:
            print(f"{self.label}: {self.status()}", file=self.stream, flush=True)
            if self._done.wait(self.every_s):
                return

    def _bar(self, console: Any) -> None:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        with Progress(TextColumn(self.label), BarColumn(), TaskProgressColumn(), TextColumn("{task.description}"),
                      console=console, transient=True, auto_refresh=False) as bar:
            task = bar.add_task("", total=1.0)
            while True:
                bar.update(task, completed=self.runs / self.total if self.total else 0.0, description=self.status())
                bar.refresh()
                if self._done.wait(SAMPLE_EVERY_S):
                    return
