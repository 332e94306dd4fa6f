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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simserve.request import Request

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


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


class ByDifficulty:
    """Difficulty routing: a classifier of set quality predicts each question's difficulty class (its true class
    with probability `classifier_accuracy`, else one of the other classes uniformly; or a `confusion` matrix) and the
    request goes to that class's pool, least outstanding within it. Requests whose query type has no difficulty
    go to `default`. The predicted class is kept on the request's answer (its thinking budget, if the class has one,
    applies there), and the router counts how often it was right."""

    def __init__(self, spec: RouterSpec, rng: np.random.Generator) -> None:
        assert isinstance(spec, ByDifficultyRouterSpec)
        self._rng = rng
        self._table = dict(spec.table)
        self._default = spec.default
        self._names = list(spec.classes)
        self._class_of = {level: name for name, levels in spec.classes.items() for level in levels}
        k = len(self._names)
        matrix = np.zeros((k, k))
        for i, true in enumerate(self._names):
            if spec.confusion is not None:
                row = spec.confusion[true]
                matrix[i] = [row.get(pred, 0.0) for pred in self._names]
            else:
                matrix[i] = (1.0 - spec.classifier_accuracy) / max(k - 1, 1)
                matrix[i, i] = spec.classifier_accuracy if k > 1 else 1.0
        self._cdf = np.cumsum(matrix / matrix.sum(axis=1, keepdims=True), axis=1)
        self.num_classified = 0
        self.num_right = 0
        self.routed: dict[str, int] = dict.fromkeys(self._names, 0)

    def classify(self, difficulty: int) -> str | None:
        """The predicted class of a question of this difficulty level (None: no class for it)."""
        true = self._class_of.get(difficulty)
        if true is None:
            return None
        i = self._names.index(true)
        j = min(int(np.searchsorted(self._cdf[i], self._rng.random(), side="right")), len(self._names) - 1)
        self.num_classified += 1
        self.num_right += j == i
        self.routed[self._names[j]] += 1
        return self._names[j]

    def choose(self, request: Request, replicas: Sequence[ReplicaView]) -> int:
        answer = request.answer
        cls = self.classify(answer.difficulty) if answer is not None else None
        if answer is not None:
            answer.route_class = cls or ""
        pool = self._table[cls] if cls is not None else self._default
        candidates = [i for i, r in enumerate(replicas) if pool is None or r.pool == pool]
        return _least_loaded(replicas, candidates or range(len(replicas)))


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


class ByDifficultyRouterSpec(_RouterBase):
    kind: Literal["by_difficulty"] = Field(description="a classifier of set quality predicts each question's "
                                           "difficulty class; a pool per class (table), least outstanding within it")
    classes: dict[str, list[int]] = Field(min_length=1, description="class name -> the difficulty levels in it "
                                          "(MATH-500's 1-5), e.g. {easy: [1, 2, 3], hard: [4, 5]}")
    table: dict[str, str] = Field(description="class -> pool name")
    default: str | None = Field(default=None, description="pool for requests without a difficulty (query types "
                                "without quality or levels); default: the least loaded replica")
    classifier_accuracy: float = Field(default=1.0, ge=0, le=1, description="probability the classifier predicts "
                                       "the true class (its errors spread evenly over the other classes)")
    confusion: dict[str, dict[str, float]] | None = Field(
        default=None, description="true class -> predicted class -> probability (overrides classifier_accuracy)")
    budgets: dict[str, int] = Field(default_factory=dict, description="class -> thinking budget "
                                    "(max_reasoning_tokens) for requests routed as that class")
    reference: str | None = Field(default=None, description="the class whose pool answers every question in the "
                                  "counterfactual of accuracy_lost (default: the last class)")

    @model_validator(mode="after")
    def _consistent(self) -> ByDifficultyRouterSpec:
        names = list(self.classes)
        levels = [lv for lv_list in self.classes.values() for lv in lv_list]
        if len(levels) != len(set(levels)):
            raise ValueError(f"a difficulty level is in two classes: {self.classes}")
        for field, keys in (("table", self.table), ("budgets", self.budgets)):
            unknown = sorted(set(keys) - set(names))
            if unknown:
                raise ValueError(f"{field}: unknown classes {unknown}; classes: {names}")
        missing = sorted(set(names) - set(self.table))
        if missing:
            raise ValueError(f"table: no pool for classes {missing}")
        if self.confusion is not None:
            if set(self.confusion) != set(names):
                raise ValueError(f"confusion: give a row for each class {names}")
            for true, row in self.confusion.items():
                if set(row) - set(names) or any(v < 0 for v in row.values()) or abs(sum(row.values()) - 1) > 1e-6:
                    raise ValueError(f"confusion.{true}: probabilities over the classes {names}, summing to 1")
        if self.reference is not None and self.reference not in names:
            raise ValueError(f"reference: {self.reference!r} is not a class ({names})")
        if any(b < 0 for b in self.budgets.values()):
            raise ValueError("budgets: token budgets must be >= 0")
        return self

    @property
    def reference_class(self) -> str:
        return self.reference or list(self.classes)[-1]


RouterSpec = Annotated[SimpleRouterSpec | PrefixAffinityRouterSpec | ByQueryTypeRouterSpec | ByDifficultyRouterSpec,
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
    "by_difficulty": ByDifficulty,
}
