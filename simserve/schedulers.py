"""Per-replica schedulers: the order in which waiting requests are admitted, and which running request is
preempted when KV blocks run out. SCHEDULERS maps a scenario's `scheduler.kind` to a class; each kind has a spec
(its own fields) in the `SchedulerSpec` union, as routers do.

A scheduler owns a replica's waiting queue: the engine pushes arrivals, puts preempted requests back, and asks for
the next request to admit. The planner (simserve.engine.planner) preempts the newest running request, as vLLM's
FCFS policy does, when the scheduler's `newest_victim` is True; otherwise it preempts the running request with the
largest `victim_key` (vLLM's priority policy: `max(running, key=(priority, arrival_time))`).

Kinds: `fcfs` (vLLM's default), `priority` (vLLM's priority policy, classes from the workload),
`shortest_predicted_first` (a noisy length predictor with aging), `fair_share` (the Virtual Token Counter of
Sheng et al., OSDI'24) and `reasoning_aware` (long reasoning preempted at chunk boundaries while short requests
wait, its KV swapped to host or recomputed). docs/model.md gives each one's formula.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from itertools import count
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from simserve.request import Request

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


class Scheduler(Protocol):
    """A waiting queue in admission order, built from its spec (and the run's `scheduling` random stream)."""

    newest_victim: bool  # the planner preempts the newest running request (vLLM's FCFS); else max victim_key

    def __init__(self, spec: Any, rng: np.random.Generator | None = None) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Request]: ...

    def push(self, request: Request) -> None:
        """A new (routed) request."""

    def push_front(self, request: Request) -> None:
        """A preempted request, to be readmitted first (FCFS) or in its place in the queue's order."""

    def peek(self) -> Request: ...

    def pop(self) -> Request: ...

    def remove(self, request: Request) -> None:
        """Take a request out of the queue wherever it is."""

    def victim_key(self, request: Request) -> Any:
        """With `newest_victim` False: the running request with the largest key is preempted first."""


class Fcfs(deque[Request]):
    """First come, first served; a preempted request goes back to the front of the queue (vLLM's default).

    The queue is a deque itself, its methods deque's own under the protocol's names: the planner asks a queue's
    length several times a plan, and a deque answers (and pushes and pops) without a Python frame."""

    newest_victim = True

    def __init__(self, spec: Any = None, rng: np.random.Generator | None = None) -> None:
        super().__init__()

    push = deque.append
    push_front = deque.appendleft
    pop = deque.popleft  # type: ignore[assignment]  # the head, not deque's right end

    def peek(self) -> Request:
        return self[0]

    def victim_key(self, request: Request) -> Any:
        return request.seq


class _Ordered:
    """A waiting queue ordered by a key fixed when a request is pushed (a heap; ties in push order). A preempted
    request is pushed back with its key recomputed (vLLM's priority policy puts it back in the heap)."""

    newest_victim = False

    def __init__(self, spec: Any = None, rng: np.random.Generator | None = None) -> None:
        self._heap: list[tuple[Any, int, Request]] = []
        self._tie = count()

    def key(self, request: Request) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (r for _, _, r in sorted(self._heap, key=lambda e: e[:2]))

    def push(self, request: Request) -> None:
        heapq.heappush(self._heap, (self.key(request), next(self._tie), request))

    def push_front(self, request: Request) -> None:
        self.push(request)

    def peek(self) -> Request:
        return self._heap[0][2]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def remove(self, request: Request) -> None:
        self._heap = [e for e in self._heap if e[2] is not request]
        heapq.heapify(self._heap)

    def victim_key(self, request: Request) -> Any:
        return request.seq


class Priority(_Ordered):
    """vLLM's priority policy: admit by (priority, arrival), lower value first; preempt the running request with
    the largest (priority, arrival): the least urgent class, newest first."""

    def key(self, request: Request) -> Any:
        return (request.priority, request.arrival_s)

    def victim_key(self, request: Request) -> Any:
        return (request.priority, request.arrival_s)


class ShortestPredictedFirst(_Ordered):
    """Admit the request with the smallest predicted remaining output, aged so that none starves.

    Each request gets one standard normal z from the `scheduling` stream (on its first push). Its predicted output
    is output_tokens x exp(log_error x z), or x exp(log_error x refine_factor x z) once it has generated
    `refine_after_tokens` tokens (0: never refined); the predicted remaining output is max(predicted output -
    generated tokens, 1). Queue key (smallest first): predicted remaining - aging_tokens_per_s x (now - arrival_s),
    which orders like predicted remaining + aging_tokens_per_s x arrival_s, fixed at push. Victim: the running
    request with the longest predicted remaining output."""

    def __init__(self, spec: ShortestPredictedFirstSchedulerSpec, rng: np.random.Generator | None = None) -> None:
        super().__init__(spec, rng)
        self.spec = spec
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def predicted_remaining(self, request: Request) -> float:
        spec = self.spec
        z = request.length_z
        if math.isnan(z):
            z = request.length_z = float(self.rng.standard_normal())
        sigma = spec.log_error
        if spec.refine_after_tokens and request.generated_tokens >= spec.refine_after_tokens:
            sigma *= spec.refine_factor
        predicted = request.output_tokens * math.exp(sigma * z)
        return max(predicted - request.generated_tokens, 1.0)

    def key(self, request: Request) -> Any:
        return self.predicted_remaining(request) + self.spec.aging_tokens_per_s * request.arrival_s

    def victim_key(self, request: Request) -> Any:
        return (self.predicted_remaining(request), request.seq)


class FairShare:
    """The Virtual Token Counter (Sheng et al., "Fairness in Serving Large Language Models", OSDI'24).

    Each user u has a counter c_u of service received: prompt_weight x prompt tokens (charged once, when its
    request is first admitted here) + output_weight x output tokens generated. The next request admitted is the
    oldest waiting request of the user with the smallest counter (ties: the user whose request came first). When a
    user with nothing waiting gets a request, its counter is lifted to max(c_u, min of the counters of users with
    requests waiting), or, if nobody waits, of the last user admitted (VTC's rule: an idle user cannot bank
    service; the lift is applied at the next plan, when every counter is current). Output tokens are charged in
    bulk (`charge`): the planner calls it before each plan that has requests waiting, and `done` when a request
    leaves, so a fast-forwarded decode run is charged at once, at the next plan after it: O(running requests) per
    plan with a queue, nothing per fast-forwarded step."""

    newest_victim = True
    charges = True

    def __init__(self, spec: FairShareSchedulerSpec, rng: np.random.Generator | None = None) -> None:
        self.spec = spec
        self.counters: dict[int, float] = {}
        self._queues: dict[int, deque[Request]] = {}  # users with requests waiting, each in FCFS order
        self._n = 0
        self._charged: dict[Request, int] = {}  # admitted here and not done: output tokens charged so far
        self._last_user: int | None = None
        self._new_users: list[int] = []  # users whose queue was empty: lifted at the next charge (a plan)

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[Request]:
        for q in self._queues.values():
            yield from q

    def _lift(self) -> None:
        """VTC's rule for the users that got a request while none of theirs waited (applied at the plan, when
        every counter is current, so fast-forwarded runs lift exactly as single steps do)."""
        new = set(self._new_users)
        self._new_users.clear()
        old = [self.counters.get(u, 0.0) for u in self._queues if u not in new]
        if old:
            floor = min(old)
        elif self._last_user is not None:
            floor = self.counters.get(self._last_user, 0.0)
        else:
            floor = 0.0
        for user in new:
            self.counters[user] = max(self.counters.get(user, 0.0), floor)

    def _add(self, request: Request, front: bool) -> None:
        user = request.user_id
        q = self._queues.get(user)
        if q is None:
            self._new_users.append(user)
            q = self._queues[user] = deque()
        if front:
            q.appendleft(request)
        else:
            q.append(request)
        self._n += 1

    def push(self, request: Request) -> None:
        self._add(request, front=False)

    def push_front(self, request: Request) -> None:
        self._add(request, front=True)

    def _next_user(self) -> int:
        return min(self._queues, key=lambda u: (self.counters.get(u, 0.0), self._queues[u][0].arrival_s))

    def peek(self) -> Request:
        return self._queues[self._next_user()][0]

    def pop(self) -> Request:
        user = self._next_user()
        q = self._queues[user]
        req = q.popleft()
        if not q:
            del self._queues[user]
        self._n -= 1
        self._last_user = user
        if req not in self._charged:
            self.counters[user] = self.counters.get(user, 0.0) + self.spec.prompt_weight * req.prompt_tokens
            self._charged[req] = req.generated_tokens
        return req

    def remove(self, request: Request) -> None:
        user = request.user_id
        q = self._queues[user]
        q.remove(request)
        if not q:
            del self._queues[user]
        self._n -= 1

    def victim_key(self, request: Request) -> Any:
        return request.seq

    def charge(self, generated: dict[Request, int]) -> None:
        """Charge output tokens generated since the last charge; `generated` gives the current count of running
        decodes (others' `generated_tokens` are current)."""
        w = self.spec.output_weight
        counters = self.counters
        for req, done in self._charged.items():
            g = generated.get(req, req.generated_tokens)
            if g > done:
                counters[req.user_id] = counters.get(req.user_id, 0.0) + w * (g - done)
                self._charged[req] = g
        if self._new_users:
            self._lift()

    @property
    def num_users_waiting(self) -> int:
        return len(self._queues)

    def steps_until_reorder(self, decoding_per_user: dict[int, int]) -> int:
        """Decode-only steps after a plan (every running request a decode, `decoding_per_user` of them per user)
        before a later plan may pick another user's request first: each step adds output_weight x its decodes
        to a user's counter, so a user behind the first may catch up. A lower bound (the plan that many steps
        later is the first that may differ: a fast-forwarded run must end by then); -1 if the order cannot
        change."""
        if len(self._queues) < 2:
            return -1
        w = self.spec.output_weight
        head = self._next_user()
        c_head = self.counters.get(head, 0.0)
        r_head = decoding_per_user.get(head, 0)
        soonest = -1
        for user in self._queues:
            rate = w * (r_head - decoding_per_user.get(user, 0))
            if user == head or rate <= 0:
                continue
            steps = max(int((self.counters.get(user, 0.0) - c_head) // rate), 1)
            if soonest < 0 or steps < soonest:
                soonest = steps
        return soonest

    def done(self, request: Request) -> None:
        """The request left this replica (finished, cancelled, handed off): charge the rest of its output."""
        done = self._charged.pop(request, None)
        if done is not None and request.generated_tokens > done:
            user = request.user_id
            self.counters[user] = self.counters.get(user, 0.0) + self.spec.output_weight * (
                request.generated_tokens - done)


class ReasoningAware:
    """Short requests before long reasoning: a running request still reasoning that has generated more than
    `long_after_tokens` is preempted at each multiple of `chunk_tokens` generated tokens while a short request
    waits that could not be admitted otherwise (the replica at max_num_seqs, or its blocks not free); its KV is
    swapped to host memory (`swap`: restored on readmission, the transfer time added to the steps that move it) or
    dropped and recomputed (`recompute`). Queue: waiting requests not preempted by this rule first, FCFS
    (preempted ones back at the front), then the long ones it preempted, FCFS. Memory preemptions: the newest
    running request, as FCFS."""

    newest_victim = True

    def __init__(self, spec: ReasoningAwareSchedulerSpec, rng: np.random.Generator | None = None) -> None:
        self.spec = spec
        self._short: deque[Request] = deque()
        self._long: deque[Request] = deque()
        self.host_used_bytes = 0.0

    def __len__(self) -> int:
        return len(self._short) + len(self._long)

    def __iter__(self) -> Iterator[Request]:
        yield from self._short
        yield from self._long

    def is_long(self, request: Request) -> bool:
        return request.generated_tokens > self.spec.long_after_tokens

    @property
    def num_short_waiting(self) -> int:
        return len(self._short)

    def push(self, request: Request) -> None:
        self._short.append(request)

    def push_front(self, request: Request) -> None:
        self._short.appendleft(request)

    def push_yielded(self, request: Request) -> None:
        """A long request preempted at a chunk boundary: behind every short one."""
        self._long.append(request)

    def peek(self) -> Request:
        return self._short[0] if self._short else self._long[0]

    def pop(self) -> Request:
        return self._short.popleft() if self._short else self._long.popleft()

    def remove(self, request: Request) -> None:
        if request in self._short:
            self._short.remove(request)
        else:
            self._long.remove(request)

    def victim_key(self, request: Request) -> Any:
        return request.seq


class FcfsSchedulerSpec(BaseModel):
    """First come, first served (vLLM's default policy)."""

    model_config = _FROZEN
    kind: Literal["fcfs"] = Field(default="fcfs", description="first come, first served; the newest running "
                                  "request is preempted first")


class PrioritySchedulerSpec(BaseModel):
    """vLLM's priority policy: classes from the workload mix's `priority` (lower value first)."""

    model_config = _FROZEN
    kind: Literal["priority"] = Field(description="admit by (priority, arrival), lower priority value first; "
                                      "preempt the largest (priority, arrival) first (vLLM's priority policy)")


class ShortestPredictedFirstSchedulerSpec(BaseModel):
    """Shortest predicted remaining output first, with a lognormal predictor error and aging."""

    model_config = _FROZEN
    kind: Literal["shortest_predicted_first"] = Field(description="admit the smallest predicted remaining "
                                                      "output (aged); preempt the largest predicted remaining")
    log_error: float = Field(default=0.0, ge=0, description="sigma of the predictor's lognormal error: the "
                             "prediction is the true output length x exp(log_error x z), z standard normal per "
                             "request; 0 is a perfect predictor")
    refine_after_tokens: int = Field(default=0, ge=0, description="after this many generated tokens the "
                                     "prediction is refined (0: never)")
    refine_factor: float = Field(default=0.5, ge=0, le=1, description="the error's sigma is multiplied by this "
                                 "once refined (0: exact after refinement)")
    aging_tokens_per_s: float = Field(default=0.0, ge=0, description="aging: each second waited counts as this "
                                      "many fewer predicted tokens (0: no aging; long requests may starve)")


class FairShareSchedulerSpec(BaseModel):
    """Fair share across users: the Virtual Token Counter (Sheng et al., OSDI'24)."""

    model_config = _FROZEN
    kind: Literal["fair_share"] = Field(description="admit the oldest request of the user with the least "
                                        "weighted service (VTC)")
    prompt_weight: float = Field(default=1.0, ge=0, description="service counted per prompt token")
    output_weight: float = Field(default=2.0, ge=0, description="service counted per output token (VTC's "
                                 "default weights input 1, output 2)")


class ReasoningAwareSchedulerSpec(BaseModel):
    """Long reasoning runs in chunks and yields to short requests at chunk boundaries."""

    model_config = _FROZEN
    kind: Literal["reasoning_aware"] = Field(description="preempt long reasoning at chunk boundaries while short "
                                             "requests wait")
    chunk_tokens: int = Field(default=1024, gt=0, description="reasoning runs in chunks of this many generated "
                              "tokens; preemption only at a multiple of it")
    long_after_tokens: int = Field(default=2048, ge=0, description="a request is long once it has generated "
                                   "more than this many tokens (still reasoning)")
    preempt_mode: Literal["swap", "recompute"] = Field(default="recompute", description="swap: KV to host "
                                                       "memory and back; recompute: KV dropped and recomputed "
                                                       "on readmission (vLLM V1)")
    pcie_bandwidth_bytes_per_s: float = Field(default=25e9, gt=0, description="host<->GPU bandwidth for swap "
                                              "(bytes/s), per replica")
    host_capacity_bytes: float | None = Field(default=None, gt=0, description="host memory for swapped KV per "
                                              "replica (None: unlimited); a swap that does not fit recomputes")


SchedulerSpec = Annotated[
    FcfsSchedulerSpec | PrioritySchedulerSpec | ShortestPredictedFirstSchedulerSpec | FairShareSchedulerSpec
    | ReasoningAwareSchedulerSpec, Field(discriminator="kind")]
# kinds a scenario may give as a bare string (`scheduler: fcfs`)
SchedulerKind = Literal["fcfs", "priority", "shortest_predicted_first", "fair_share", "reasoning_aware"]

SCHEDULERS: dict[str, type[Scheduler]] = {
    "fcfs": Fcfs,
    "priority": Priority,
    "shortest_predicted_first": ShortestPredictedFirst,
    "fair_share": FairShare,
    "reasoning_aware": ReasoningAware,
}
