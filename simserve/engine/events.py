"""The engine's SimPy events and the arrivals process. One tie-break orders same-time events: SimPy's
(time, priority, sequence) heap entry, with four priorities: arrivals (URGENT), step ends (NORMAL, then the
replicas' own step ends in replica order), plans (LATE), and what must come after every plan at an instant
(AFTER_PLANS: a cancel from outside a replica's loop)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from heapq import heappush
from typing import Any

import simpy
from simpy.core import NORMAL, URGENT

from simserve.request import Request


class Environment(simpy.Environment):
    """SimPy's environment, where an event can be scheduled at an absolute time (`_Scheduled`'s at_s). SimPy
    schedules at now + delay, and no delay need give a chosen time exactly: where it is more than twice now,
    now + d steps over it for some values (the two ulps differ). A fast-forwarded run must end at its last step
    end to the last bit, the sequential sum stepping makes, so that a tie with another replica's step end is a tie
    in both modes.

    The engine reads SimPy's state directly where it is read per event: the clock as `_now` (`now` is a
    Python-level property: a call of about 900 instructions a read, some 23 reads a request), an event's
    `triggered` as `_value is not PENDING`, and `peek()` from `_queue` (tests/test_engine.py checks these equal
    SimPy's own)."""


class _Scheduled(simpy.Event):
    """A timeout at a chosen priority: an event already triggered, processed `delay_s` from now in the heap
    position (time, priority, sequence) that priority gives it."""

    def __init__(self, env: simpy.Environment, delay_s: float, priority: float, at_s: float | None = None) -> None:
        # simpy.Event.__init__ and Environment.schedule, inlined (one of these per simulated event): the same
        # attributes and the same heap entry (now + delay, priority, sequence, event).
        self.env = env
        self.callbacks: list[Any] = []
        self._ok = True
        self._value = None
        if at_s is None:
            entry: Any = (env._now + delay_s, priority, next(env._eid), self)
        else:  # at an absolute time, exactly (delay_s is not read; see Environment)
            if at_s < env._now:
                raise ValueError(f"cannot schedule at {at_s!r}, before now ({env._now!r})")
            entry = (at_s, priority, next(env._eid), self)
        heappush(env._queue, entry)


class Arrival(_Scheduled):
    """A timeout with URGENT priority: an arrival at the same instant as a step boundary is processed first, so
    the scheduling decision at that boundary sees it, in fast-forward and step-by-step modes alike."""

    def __init__(self, env: simpy.Environment, delay_s: float) -> None:
        super().__init__(env, delay_s, URGENT)


LATE = 2  # after URGENT (0, arrivals) and NORMAL (1, step ends): a replica plans once its instant has settled


def step_end_priority(index: int) -> float:
    """The priority of replica `index`'s step ends: after NORMAL's other events, before LATE, in replica order."""
    if not 0 <= index < (1 << 20) - 1:
        raise ValueError(f"replica index {index} out of range")
    return NORMAL + (index + 1) / (1 << 20)


class StepEnd(_Scheduled):
    """A replica's step (or fast-forwarded run) ending `delay_s` from now (or at `at_s`: a run's last step end,
    to the last bit), at its `step_end_priority`. Same-time
    step ends of different replicas are processed in replica order, not in the order they were scheduled: a run
    is scheduled at its start, a step at its own, so that order differs between fast-forward and step-by-step,
    and the outputs a step delivers (a completion whose hook cancels a sibling sample on another replica) must
    reach the hooks in the same order in both."""


class Settle(_Scheduled):
    """Resume at the current instant, after every arrival and step end scheduled for it. A plan at time t must
    see every request that arrives at t, including a follow-up turn created by another replica's step ending at
    the same t; without this, the order of same-time events (which differs between fast-forward and
    step-by-step) would decide."""

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__(env, 0, LATE)  # a third priority, below NORMAL


def arrivals(env: simpy.Environment, requests: Iterator[Request], arrive: Callable[[Request], None],
             on_exhausted: Callable[[], None]) -> Generator[simpy.Event, Any, None]:
    """The front end: wait for each request's arrival time and hand it to `arrive` (the Simulation's one
    chokepoint for every arrival)."""
    for req in requests:
        yield Arrival(env, max(0.0, req.arrival_s - env._now))
        arrive(req)
    on_exhausted()


AFTER_PLANS = 3  # after LATE: every replica that plans at this instant has planned


class AfterPlans(_Scheduled):
    """Resume at the current instant, after every replica that plans at it has planned. A cancel made at time t
    from outside a replica's loop (another replica's hook, a timer) acts here, so a replica that also plans at t
    has always planned first, whichever order same-time step ends happen to be processed in (which differs
    between fast-forward and step-by-step)."""

    def __init__(self, env: simpy.Environment) -> None:
        super().__init__(env, 0, AFTER_PLANS)  # a fourth priority, below LATE
