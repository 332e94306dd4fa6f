"""Cluster routers: which replica an arriving request goes to. ROUTERS maps a scenario's `router` name to a class.

A router is a small class with one public method, `choose(request, replicas) -> index`, reading the replicas'
public load figures (`num_outstanding`, `free_kv_blocks`). Randomised routers draw from the `routing` stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from simserve.workload import Request


class ReplicaView(Protocol):
    @property
    def num_outstanding(self) -> int: ...

    @property
    def free_kv_blocks(self) -> int: ...


class RoundRobin:
    """Replicas in turn, whatever their load."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._next = 0

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        index = self._next % len(replicas)
        self._next = index + 1
        return index


class LeastOutstanding:
    """Join the shortest queue: the replica with the fewest waiting plus running requests (lowest index on ties)."""

    def __init__(self, rng: np.random.Generator) -> None:
        pass

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        loads = [r.num_outstanding for r in replicas]
        return loads.index(min(loads))


ROUTERS: dict[str, type[RoundRobin] | type[LeastOutstanding]] = {
    "round_robin": RoundRobin,
    "least_outstanding": LeastOutstanding,
}
