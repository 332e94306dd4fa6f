"""Cluster routers: which replica an arriving request goes to. ROUTERS maps a scenario's `router.kind` to a class.

A router is a small class with one public method, `choose(request, replicas) -> index`, reading the replicas'
load figures through `ReplicaView` (`pool`, `num_outstanding`, `free_kv_blocks`, `prefix_hit_tokens(request)`).
Randomised routers draw from the simulation's `routing` stream. Staleness (routers acting on load figures that
are up to `staleness_s` old, as real routers polling metrics do) is applied by `StaleView`, not by each router.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simserve.request import Request

_FROZEN = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ReplicaView(Protocol):
    @property
    def pool(self) -> str: ...

    @property
    def num_outstanding(self) -> int: ...

    @property
    def free_kv_blocks(self) -> int: ...

    def prefix_hit_tokens(self, request: Request) -> int: ...


class Router(Protocol):
    """A routing policy: built from its spec and the `routing` random stream, it picks a replica per request."""

    def __init__(self, spec: Any, rng: np.random.Generator) -> None: ...

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        """Index into `replicas` of the replica that gets `request`."""
        ...


def _least_loaded(replicas: Sequence[ReplicaView], candidates: Sequence[int]) -> int:
    """The candidate with the fewest outstanding requests (the first on ties)."""
    return min(candidates, key=lambda i: replicas[i].num_outstanding)


class RoundRobin:
    """Replicas in turn, whatever their load."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        self._next = 0

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        index = self._next % len(replicas)
        self._next = index + 1
        return index


class Random:
    """A replica drawn uniformly at random."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        self._rng = rng

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        return int(self._rng.integers(len(replicas)))


class LeastOutstanding:
    """Join the shortest queue: the fewest waiting plus running requests (the lowest index on ties)."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        pass

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        return _least_loaded(replicas, range(len(replicas)))


class LeastKv:
    """The most free KV blocks (free plus evictable cached blocks); the fewest outstanding on ties."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        pass

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        return max(range(len(replicas)), key=lambda i: (replicas[i].free_kv_blocks, -replicas[i].num_outstanding))


class PowerOfTwo:
    """Two distinct replicas drawn at random; the one with fewer outstanding requests (Mitzenmacher's
    power of two choices)."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        self._rng = rng

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        if len(replicas) == 1:
            return 0
        a, b = (int(x) for x in self._rng.choice(len(replicas), size=2, replace=False))
        return a if replicas[a].num_outstanding <= replicas[b].num_outstanding else b


class PrefixAffinity:
    """Send a request where the longest part of its prompt is cached, among replicas whose load is within a bound
    (consistent hashing with bounded loads: outstanding <= load_factor x mean outstanding + 1), so a popular prefix
    cannot flood one replica. Without any cached prefix, the least loaded replica."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        assert isinstance(spec, PrefixAffinityRouterSpec)
        self._load_factor = spec.load_factor

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        loads = [r.num_outstanding for r in replicas]
        bound = self._load_factor * sum(loads) / len(loads) + 1.0
        eligible = [i for i, load in enumerate(loads) if load <= bound]
        hits = {i: replicas[i].prefix_hit_tokens(request) for i in eligible}
        best = max(hits.values())
        if best <= 0:
            return _least_loaded(replicas, eligible)
        return _least_loaded(replicas, [i for i in eligible if hits[i] == best])


class ByQueryType:
    """A table from query type to pool; within the pool, the least loaded replica. Query types not in the table
    go to the `default` pool if given, else to the least loaded replica of the cluster."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        assert isinstance(spec, ByQueryTypeRouterSpec)
        self._table = dict(spec.table)
        self._default = spec.default

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        pool = self._table.get(request.query_type, self._default)
        candidates = [i for i, r in enumerate(replicas) if pool is None or r.pool == pool]
        return _least_loaded(replicas, candidates)


class StaleView:
    """A replica's load figures as a router sees them: sampled when the router looks and at least `staleness_s`
    has passed since the last sample, then held (sample-and-hold, as routers polling a metrics endpoint see)."""

    __slots__ = ("_replica", "_staleness_s", "_sampled_s", "_outstanding", "_free_kv", "pool")

    def __init__(self, replica: Any, staleness_s: float) -> None:
        self._replica = replica
        self._staleness_s = staleness_s
        self._sampled_s = -float("inf")
        self._outstanding = 0
        self._free_kv = 0
        self.pool = replica.pool

    def refresh(self, now_s: float) -> None:
        if now_s - self._sampled_s >= self._staleness_s:
            self._sampled_s = now_s
            self._outstanding = self._replica.num_outstanding
            self._free_kv = self._replica.free_kv_blocks

    @property
    def num_outstanding(self) -> int:
        return self._outstanding

    @property
    def free_kv_blocks(self) -> int:
        return self._free_kv

    def prefix_hit_tokens(self, request: Request) -> int:
        return self._replica.prefix_hit_tokens(request)


class _RouterBase(BaseModel):
    model_config = _FROZEN
    staleness_s: float = Field(default=0.0, ge=0, description="age of the load figures the router acts on")


class SimpleRouterSpec(_RouterBase):
    kind: Literal["round_robin", "random", "least_outstanding", "least_kv", "power_of_two"] = Field(
        description="round_robin: in turn; random; least_outstanding: fewest running plus waiting; least_kv: most "
        "free KV blocks; power_of_two: the less loaded of two drawn at random")


class PrefixAffinityRouterSpec(_RouterBase):
    kind: Literal["prefix_affinity"] = Field(description="the replica caching the longest prefix of the prompt, "
                                             "among those not overloaded")
    load_factor: float = Field(default=1.25, ge=1.0, description="eligible if load <= factor x mean + 1")


class ByQueryTypeRouterSpec(_RouterBase):
    kind: Literal["by_query_type"] = Field(description="a pool per query type (table), least outstanding within "
                                           "it")
    table: dict[str, str] = Field(description="query type -> pool name")
    default: str | None = Field(default=None, description="pool for query types not in the table")


RouterSpec = Annotated[SimpleRouterSpec | PrefixAffinityRouterSpec | ByQueryTypeRouterSpec,
                       Field(discriminator="kind")]
# The kinds whose spec needs no other field: a scenario may give them as a bare string (`router: least_kv`).
RouterKind = Literal["round_robin", "random", "least_outstanding", "least_kv", "power_of_two", "prefix_affinity"]

ROUTERS: dict[str, type[Router]] = {
    "round_robin": RoundRobin,
    "random": Random,
    "least_outstanding": LeastOutstanding,
    "least_kv": LeastKv,
    "power_of_two": PowerOfTwo,
    "prefix_affinity": PrefixAffinity,
    "by_query_type": ByQueryType,
}
