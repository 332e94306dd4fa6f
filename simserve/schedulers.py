"""Per-replica schedulers: the order in which waiting requests are admitted. SCHEDULERS maps a scenario's
`scheduler.kind` to a class; each kind has a spec (its own fields) in the `SchedulerSpec` union, as routers do.

A scheduler owns a replica's waiting queue: the engine pushes arrivals, puts preempted requests back at the
front, and asks for the next request to admit. The planner (simserve.engine.planner) preempts the newest running
request, as vLLM's FCFS policy does; a scheduler with another victim order plugs in there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from simserve.request import Request

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Scheduler(Protocol):
    """A waiting queue in admission order, built from its spec."""

    def __init__(self, spec: SchedulerSpec) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Request]: ...

    def push(self, request: Request) -> None:
        """A new (routed) request."""

    def push_front(self, request: Request) -> None:
        """A preempted request, to be readmitted first."""

    def peek(self) -> Request: ...

    def pop(self) -> Request: ...

    def remove(self, request: Request) -> None:
        """Take a request out of the queue wherever it is."""


class Fcfs:
    """First come, first served; a preempted request goes back to the front of the queue (vLLM's default)."""

    def __init__(self, spec: FcfsSchedulerSpec | None = None) -> None:
        self._queue: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._queue)

    def push(self, request: Request) -> None:
        self._queue.append(request)

    def push_front(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Request:
        return self._queue[0]

    def pop(self) -> Request:
        return self._queue.popleft()

    def remove(self, request: Request) -> None:
        self._queue.remove(request)


class FcfsSchedulerSpec(BaseModel):
    """First come, first served (vLLM's default policy)."""

    model_config = _FROZEN
    kind: Literal["fcfs"] = Field(default="fcfs", description="first come, first served; the newest running "
                                  "request is preempted first")


SchedulerSpec = Annotated[FcfsSchedulerSpec, Field(discriminator="kind")]
SchedulerKind = Literal["fcfs"]  # kinds a scenario may give as a bare string (`scheduler: fcfs`)

SCHEDULERS: dict[str, type[Scheduler]] = {"fcfs": Fcfs}
