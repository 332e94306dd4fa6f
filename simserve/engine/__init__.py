"""The engine: one replica's continuous batching over paged KV memory, as vLLM V1 runs it.

`planner` decides each step (plain code, vLLM's schedule()), `kv` keeps the blocks and the prefix cache,
`decodes` holds decoding sequences as arrays and advances runs of decode steps in closed form, `replica` is the
SimPy loop that times steps with a perf model, `events` the SimPy events and the arrivals process, `hooks` the
lifecycle seams features plug into.
"""

from simserve.engine.decodes import Decodes, FastForwardRun
from simserve.engine.events import Arrival, Settle, arrivals
from simserve.engine.hooks import HookChain, Hooks
from simserve.engine.kv import Extent, KvBlockPool, KvHold, blocks_for
from simserve.engine.planner import Planner, PlannerConfig, StepPlan
from simserve.engine.replica import Replica

__all__ = [
    "Arrival", "Decodes", "Extent", "FastForwardRun", "HookChain", "Hooks", "KvBlockPool", "KvHold", "Planner",
    "PlannerConfig", "Replica", "Settle", "StepPlan", "arrivals", "blocks_for",
]
