"""Shared builders for engine tests: tiny scenarios as dicts, and hand-made request lists."""

from __future__ import annotations

import copy
from typing import Any

import pandas as pd

from simserve import Scenario, parse_scenario
from simserve.request import Request


def tiny(pool: dict[str, Any] | None = None, perf: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    """A one-replica scenario with a linear step-time model; override any part."""
    data: dict[str, Any] = {
        "name": "tiny",
        "seed": 1,
        "model": "llama-3.1-8b",
        "cluster": {"pools": [{"name": "main", "gpu": "h100-sxm", "replicas": 1, "max_num_seqs": 8,
                               "max_num_batched_tokens": 8192, "kv_block_tokens": 16, **(pool or {})}]},
        "perf": perf or {"kind": "linear", "step_overhead_s": 0.01},
        "workload": {"num_requests": 10, "arrival": {"process": "poisson", "rate_per_s": 1.0},
                     "mix": [{"query_type": "t", "prompt_tokens": {"dist": "constant", "value": 10},
                              "reasoning_tokens": {"dist": "constant", "value": 5},
                              "answer_tokens": {"dist": "constant", "value": 1}}]},
    }
    data.update(copy.deepcopy(top))
    return data


def scenario(data: dict[str, Any], **engine: Any) -> Scenario:
    d = copy.deepcopy(data)
    d["engine"] = {**d.get("engine", {}), **engine}
    return parse_scenario(d)


def by_id(df: pd.DataFrame) -> pd.DataFrame:
    """Request rows in arrival order (request_id): the records come in the order requests ended."""
    return df.sort_values("request_id", ignore_index=True)


def req(i: int, arrival_s: float, prompt: int, reasoning: int, answer: int, user: int = 0) -> Request:
    return Request(i, user, "t", arrival_s, prompt, reasoning, answer)
