"""Shared builders for engine tests: tiny scenarios as dicts, and hand-made request lists."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
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


def assert_same_records(now: Path, before: Path) -> None:
    """A records file (Parquet) equals one a fixture holds: the same schema (with its pandas metadata) and the same
    values. Not byte for byte: since issue 21's stage 12 the writer keeps dictionary pages for strings and integers
    only, not for floats, so the same table is encoded differently from a fixture written before. Since issue 21 a
    fast-forwarded run's step times equal single steps' to the last bit (they had been the roofline's affine closed
    form), so a time-weighted mean over a run may move by an ulp against a fixture written before: float columns
    agree to 4e-16 relative, everything else exactly. The KV time integrals (a segment's `kv_blocks_mean`) are sums
    of products over a run's steps, added in step order since issue 21's stage 9 (before, np.dot's BLAS kernel added
    them in an order of its own, which depends on the CPU): they agree to KV_INTEGRAL_RTOL."""
    import pyarrow.parquet as pq

    a, b = pq.read_table(now), pq.read_table(before)
    assert a.schema.equals(b.schema, check_metadata=True)
    if a.equals(b):
        return
    for col in a.column_names:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        if x.dtype.kind == "f":
            rtol = KV_INTEGRAL_RTOL if col in KV_INTEGRALS else 4e-16
            np.testing.assert_allclose(x, y, rtol=rtol, atol=0, err_msg=col)
        else:
            assert np.array_equal(x, y), col


ENGINE_EVENTS = ("num_events", "events_per_request")  # what the engine did, not what it simulated
# Figures that are time integrals of KV use over fast-forwarded runs (sums of products over the run's steps): the
# order of their additions changed in issue 21's stage 9 (step order, on every machine, where np.dot's BLAS kernel
# had chosen one by CPU), which moves them by a few ulps against fixtures written before. A sum of a run's products
# in another order differs by at most (steps - 1) x 2^-53 relative; runs here have at most a few thousand steps.
KV_INTEGRALS = ("kv_blocks_mean", "kv_utilization_mean", "kv_memory_efficiency")
KV_INTEGRAL_RTOL = 1e-12


def assert_equal_figures(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two summaries hold the same figures, NaN equal to NaN (a dict's == holds for NaN only where both sides are one
    float object, which neither a JSON file nor the compiled engine promises)."""
    assert set(a) == set(b)
    differ = {k: (a[k], b[k]) for k in a if not (a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float)
                                                                  and math.isnan(a[k]) and math.isnan(b[k])))}
    assert not differ, differ


def assert_same_summary(now: dict[str, Any], before: dict[str, Any]) -> None:
    """A summary equals one written by an older commit: every simulated figure exactly but the KV time integrals
    (to KV_INTEGRAL_RTOL, see there); the engine's event counts no higher (an engine change may take fewer events
    for the same simulation, never more)."""
    assert set(now) == set(before)
    for key in ENGINE_EVENTS:
        assert now[key] <= before[key], (key, now[key], before[key])
    for key in KV_INTEGRALS:
        if key in now:
            assert math.isclose(now[key], before[key], rel_tol=KV_INTEGRAL_RTOL), (key, now[key], before[key])
    skip = (*ENGINE_EVENTS, *KV_INTEGRALS)
    assert {k: v for k, v in now.items() if k not in skip} == {k: v for k, v in before.items() if k not in skip}
