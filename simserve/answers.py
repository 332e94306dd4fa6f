"""Answers at serve time: parallel samples forked into the engine, aggregated when they can decide, stopped when no
longer needed, scored by a reward model on its own pool; one record per request users sent (docs/quality.md).

A request with `n` samples is routed once; its samples are n engine requests enqueued together on that replica,
sharing its prompt's full KV blocks through the prefix cache as vLLM's n > 1 requests do (`fork_key`). They are
invisible to recording and accounting: the request itself is recorded when its answer is decided and every sample
has ended. Time to answer is when the aggregation can decide: every sample done (majority), the reward model's
scores in (best_of_n), or the m-th sample done (first_finished, which then cancels the others, freeing their KV).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from simserve.engine import Hooks
from simserve.quality import Answer
from simserve.request import Request
from simserve.routing import ByDifficultyRouterSpec

if TYPE_CHECKING:
    from simserve.engine import Replica
    from simserve.sim import Simulation


class Answers(Hooks):
    """Forks, aggregates, cancels and scores the samples of requests with answer quality."""

    def __init__(self, sim: Simulation, reward_pools: dict[str, list[Replica]]) -> None:
        self.sim = sim
        self.reward_pools = reward_pools
        self._next_child_id = -1
        self._children: dict[int, list[Request]] = {}  # id(parent) -> its samples
        self._scoring: dict[int, int] = {}  # id(parent) -> scoring passes still running
        self.num_samples = 0  # engine requests made for requests routed so far (1 per request without samples)
        self.num_referenced = self.num_reference_correct = self.num_routed_correct = 0

    # ------------------------------------------------------------------------------------------ forking

    def enqueue(self, req: Request, replica: Replica) -> None:
        """Queue a routed request on its replica: itself, or its n samples. A question drawn for several models
        and budgets (difficulty routing) takes the one of the pool it was routed to."""
        a: Answer | None = req.answer
        if a is not None and a.variants is not None:
            a = self._pick(req, a, replica.pool)
        if a is None or a.n == 1:
            self.num_samples += 1
            replica.enqueue(req)
            return
        self.num_samples += a.n
        req.pool, req.replica = replica.pool, replica.index
        children = [self._child(req, req.prompt_tokens, a.sample_reasoning_tokens(j), req.answer_tokens)
                    for j in range(a.n)]
        self._children[id(req)] = children
        for child in children:
            replica.enqueue(child)

    def _pick(self, req: Request, a: Answer, pool: str) -> Answer:
        scenario = self.sim.scenario
        variants = a.variants
        assert variants is not None
        chosen = variants[scenario.answer_key(pool, a.route_class)]
        chosen.route_class = a.route_class
        router = scenario.router
        if isinstance(router, ByDifficultyRouterSpec):
            ref = variants[scenario.answer_key(router.table[router.reference_class], router.reference_class)]
            chosen.reference_correct = ref.aggregate_all()
        req.answer = chosen
        req.reasoning_tokens = chosen.engine_reasoning_tokens
        return chosen

    def _child(self, parent: Request, prompt: int, reasoning: int, answer: int) -> Request:
        child = Request(self._next_child_id, parent.user_id, parent.query_type, self.sim.env.now, prompt,
                        reasoning, answer)
        self._next_child_id -= 1
        child.parent = parent
        child.priority = parent.priority
        child.fork_key = parent.request_id + 1
        child.prefix_keys, child.prefix_unit_tokens = parent.prefix_keys, parent.prefix_unit_tokens
        return child

    # ------------------------------------------------------------------------------------------ endings

    def finished(self, req: Request) -> None:
        parent = req.parent
        if parent is None:
            a = req.answer
            if a is not None and a.n == 1:  # a request that ran itself
                a.sample_ended(0, req.generated_tokens)
                if req.status == "completed":
                    a.completed.append(0)
                    a.decide(req.finish_s)
            if a is not None and req.status == "completed" and a.reference_correct is not None:
                self.num_referenced += 1  # difficulty routing: this answer against the reference pool's
                self.num_reference_correct += a.reference_correct
                self.num_routed_correct += bool(a.correct)
            return
        if id(parent) in self._scoring:
            self._scored(parent, req)
            return
        a = parent.answer
        assert a is not None
        children = self._children[id(parent)]
        j = children.index(req)
        a.resolved += 1
        a.sample_ended(j, req.generated_tokens)
        parent.num_preemptions += req.num_preemptions
        parent.prefix_hit_tokens = max(parent.prefix_hit_tokens, req.prefix_hit_tokens)
        if not math.isnan(req.first_token_s) and not req.first_token_s >= parent.first_token_s:
            parent.first_token_s = req.first_token_s
        now = self.sim.env.now
        if req.status == "completed":
            a.completed.append(j)
            if a.aggregate == "first_finished" and len(a.completed) == a.m and math.isnan(a.decided_s):
                a.decide(now)
                for other in children:
                    if not other.status:  # its end (now, or once its step in flight is out) comes back here;
                        # a sample in KV transfer (prefill/decode split) is not stopped: it runs to its end
                        self.sim.replicas[other.replica].cancel(other)
        if a.resolved < a.n or id(parent) not in self._children:
            return
        if a.aggregate == "best_of_n" and a.completed and math.isnan(a.decided_s):
            self._score(parent)
            return
        if math.isnan(a.decided_s):
            a.decide(now)
        self._close(parent)

    def _close(self, parent: Request) -> None:
        """Every sample has ended and the answer is decided: the request completes (or is rejected if no sample
        completed) and is recorded."""
        a = parent.answer
        assert a is not None
        children = self._children.pop(id(parent))
        _add_up(parent, children)
        if a.correct is None:
            parent.status = "rejected"
            reasons = sorted({c.reason for c in children if c.reason})
            parent.reason = "no sample completed" + (f": {reasons[0]}" if reasons else "")
        else:
            parent.status = "completed"
            parent.reasoning_end_s = parent.finish_s = a.decided_s
        a.recorded = True
        self.sim.hooks.finished(parent)

    # ------------------------------------------------------------------------------------------ reward model

    def _score(self, parent: Request) -> None:
        """best_of_n: one reward-model pass per completed sample (a prefill over prompt and sample, one token out)
        on the reward pool's least busy replica."""
        a = parent.answer
        assert a is not None and a.reward_pool is not None
        replicas = self.reward_pools[a.reward_pool]
        target = min(replicas, key=lambda r: r.num_outstanding)
        children = self._children[id(parent)]
        self._scoring[id(parent)] = len(a.completed)
        for j in a.completed:
            sample = children[j]
            target.enqueue(self._child(parent, sample.prompt_tokens + sample.output_tokens, 0, 1))

    def _scored(self, parent: Request, req: Request) -> None:
        left = self._scoring[id(parent)] - 1
        if left:
            self._scoring[id(parent)] = left
            return
        del self._scoring[id(parent)]
        a = parent.answer
        assert a is not None
        a.decide(self.sim.env.now)
        self._close(parent)

    # ------------------------------------------------------------------------------------------ the end

    def at_end(self, left: list[tuple[Request, Any]]) -> list[tuple[Request, Any]]:
        """At the end of a run, requests still in the engine: each sample's request once (what its samples
        generated counted), in place of the samples; a request that ran itself as it is."""
        out: list[tuple[Request, Any]] = []
        met: set[int] = set()
        for req, where in left:
            parent = req.parent
            if parent is None:
                if req.answer is not None:
                    req.answer.sample_ended(0, req.generated_tokens)
                out.append((req, where))
                continue
            a: Answer | None = parent.answer
            children = self._children.get(id(parent))
            if a is None or a.recorded and id(parent) not in met or children is None:
                continue  # recorded already (decided, its cancelled samples not yet out)
            if req in children:
                a.sample_ended(children.index(req), req.generated_tokens)
            if id(parent) not in met:
                met.add(id(parent))
                a.recorded = True
                out.append((parent, where))
        for parent, _ in out:
            if parent.answer is not None and parent.answer.n > 1:
                _add_up(parent, self._children.get(id(parent), []))
        return out


def _add_up(parent: Request, samples: list[Request]) -> None:
    """A request with parallel samples is recorded with its samples' tokens added up: reasoning (probes included),
    answer and generated tokens (so its TPOT is per token over all samples)."""
    parent.reasoning_tokens = sum(min(c.generated_tokens, c.reasoning_tokens) for c in samples)
    parent.answer_tokens = sum(max(c.generated_tokens - c.reasoning_tokens, 0) for c in samples)
    parent.generated_tokens = parent.reasoning_tokens + parent.answer_tokens
