"""Lifecycle hooks: what a feature may observe or change at each stage of a request's life.

`Hooks` has a no-op method per stage; a feature subclasses it and overrides what it needs, and the Simulation
composes every feature's hooks into one `HookChain` that replicas and the front end call. The stages:

- `arrived(req)`: every request entering the system (synthetic, trace rows, follow-up turns), before routing;
- `routed(req, replica)`: the router chose `replica` for it, before the replica (or its parallel samples'
  fan-out) enqueues it -- called only when some hook overrides it;
- `admitted(req, replica)`: scheduled for the first time on a replica (or again after a preemption);
- `prompt_done(req, replica)`: its prompt (or recomputation) is in the KV cache and a token was sampled;
- `reasoning_done(req, replica)`: its last reasoning token was sampled (`req.reasoning_end_s` is set);
- `finished(req)`: completed, rejected or cancelled (`req.status` says which).

Recording, multi-turn sessions and prefill/decode hand-off are hooks; so are the planned features (token budgets
and early exit at `reasoning_done`, trace reuse at `arrived`/`finished`). A hook that overrides
`reasoning_done` makes the engine end fast-forwarded decode runs where a sequence finishes its reasoning, so the
hook acts at that exact step; without one, reasoning ends are stamped in closed form inside a run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from simserve.request import Request

STAGES = ("arrived", "routed", "admitted", "prompt_done", "reasoning_done", "finished")


class Hooks:
    """No-op lifecycle hooks: override the stages a feature needs."""

    def arrived(self, req: Request) -> None:
        """A request enters the system (before routing)."""

    def routed(self, req: Request, replica: Any) -> None:
        """The router sent a request to `replica` (an entry replica), before the replica enqueues it."""

    def admitted(self, req: Request, replica: Any) -> None:
        """A request is scheduled on a replica (first admission or readmission after preemption)."""

    def prompt_done(self, req: Request, replica: Any) -> None:
        """A request's known tokens are all in the KV cache and it sampled a token."""

    def reasoning_done(self, req: Request, replica: Any) -> None:
        """A request sampled its last reasoning token (req.reasoning_end_s is set)."""

    def finished(self, req: Request) -> None:
        """A request completed, was rejected or was cancelled (req.status, req.reason)."""


def _overrides(hook: Hooks, stage: str) -> bool:
    return getattr(type(hook), stage) is not getattr(Hooks, stage)


class HookChain(Hooks):
    """Several hooks called in order; stages nobody overrides cost one empty loop."""

    def __init__(self, hooks: Sequence[Hooks]) -> None:
        self.hooks = list(hooks)
        self._calls: dict[str, list[Callable[..., None]]] = {
            stage: [getattr(h, stage) for h in self.hooks if _overrides(h, stage)] for stage in STAGES}

    def wants(self, stage: str) -> bool:
        """Whether some hook overrides `stage`."""
        return bool(self._calls[stage])

    def arrived(self, req: Request) -> None:
        for call in self._calls["arrived"]:
            call(req)

    def routed(self, req: Request, replica: Any) -> None:
        for call in self._calls["routed"]:
            call(req, replica)

    def admitted(self, req: Request, replica: Any) -> None:
        for call in self._calls["admitted"]:
            call(req, replica)

    def prompt_done(self, req: Request, replica: Any) -> None:
        for call in self._calls["prompt_done"]:
            call(req, replica)

    def reasoning_done(self, req: Request, replica: Any) -> None:
        for call in self._calls["reasoning_done"]:
            call(req, replica)

    def finished(self, req: Request) -> None:
        for call in self._calls["finished"]:
            call(req)
