"""Per-replica admission order of waiting requests. SCHEDULERS maps a scenario's `scheduler` name to a class.

A scheduler owns a replica's waiting queue: the engine pushes arrivals, puts preempted requests back, and asks
for the next request to admit. Preemption victims are the newest running requests (vLLM's recompute policy),
chosen by the engine.
"""

from __future__ import annotations

from collections import deque

from simserve.request import Request


class Fcfs:
    """First come, first served; a preempted request goes back to the front of the queue (vLLM's default)."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self):
        return iter(self._queue)

    def push(self, request: Request) -> None:
        self._queue.append(request)

    def push_front(self, request: Request) -> None:
        self._queue.appendleft(request)

    def peek(self) -> Request:
        return self._queue[0]

    def pop(self) -> Request:
        return self._queue.popleft()


SCHEDULERS: dict[str, type[Fcfs]] = {"fcfs": Fcfs}
