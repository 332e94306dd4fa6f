"""Records out, analysis after: columnar per-request and per-segment rows, time-weighted level monitors, and the
summary computed from them (percentiles, goodput against SLOs, KV utilisation, GPU-hours and cost)."""

from __future__ import annotations

import math
from array import array
from typing import Any

import numpy as np
import pandas as pd

REQUEST_COLUMNS = (
    "request_id", "user_id", "query_type", "pool", "replica", "arrival_s", "first_token_s", "reasoning_end_s",
    "finish_s", "prompt_tokens", "prefix_hit_tokens", "reasoning_tokens", "answer_tokens", "generated_tokens",
    "num_preemptions", "status", "reason", "ttft_s", "time_to_answer_s", "tpot_s", "e2e_s",
)
SEGMENT_COLUMNS = (
    "pool", "replica", "start_s", "end_s", "num_steps", "batch_size", "num_waiting", "kv_blocks_mean",
    "kv_blocks_end", "prefill_tokens", "decode_tokens",
)
PERCENTILES = (50, 90, 99)


class LevelMonitor:
    """A piecewise-constant level (queue length, batch size) and its time integral, updated only on change."""

    __slots__ = ("level", "last_s", "area", "peak")

    def __init__(self, start_s: float = 0.0) -> None:
        self.level = 0
        self.last_s = start_s
        self.area = 0.0
        self.peak = 0

    def set(self, now_s: float, level: int) -> None:
        self.area += self.level * (now_s - self.last_s)
        self.last_s = now_s
        self.level = level
        if level > self.peak:
            self.peak = level

    def integral(self, now_s: float) -> float:
        """Integral of the level from the start to `now_s`."""
        return self.area + self.level * (now_s - self.last_s)


class Recorder:
    """Append-only columnar buffers; a finished request becomes one row and its object can be dropped."""

    def __init__(self) -> None:
        self._req: dict[str, Any] = {
            "request_id": array("q"), "user_id": array("q"), "query_type": [], "pool": [],
            "replica": array("q"), "arrival_s": array("d"), "first_token_s": array("d"),
            "reasoning_end_s": array("d"), "finish_s": array("d"),
            "prompt_tokens": array("q"), "prefix_hit_tokens": array("q"), "reasoning_tokens": array("q"),
            "answer_tokens": array("q"),
            "generated_tokens": array("q"), "num_preemptions": array("q"), "status": [], "reason": [],
        }
        self._seg: dict[str, Any] = {
            "pool": [], "replica": array("q"), "start_s": array("d"), "end_s": array("d"),
            "num_steps": array("q"), "batch_size": array("q"), "num_waiting": array("q"),
            "kv_blocks_mean": array("d"), "kv_blocks_end": array("q"), "prefill_tokens": array("q"),
            "decode_tokens": array("q"),
        }
        self.num_recorded = 0

    def request(self, r: Any) -> None:
        """Record a request that has completed, been rejected, or is unfinished at the end of the run."""
        c = self._req
        c["request_id"].append(r.request_id)
        c["user_id"].append(r.user_id)
        c["query_type"].append(r.query_type)
        c["pool"].append(r.pool)
        c["replica"].append(r.replica)
        c["arrival_s"].append(r.arrival_s)
        c["first_token_s"].append(r.first_token_s)
        c["reasoning_end_s"].append(r.reasoning_end_s)
        c["finish_s"].append(r.finish_s)
        c["prompt_tokens"].append(r.prompt_tokens)
        c["prefix_hit_tokens"].append(r.prefix_hit_tokens)
        c["reasoning_tokens"].append(r.reasoning_tokens)
        c["answer_tokens"].append(r.answer_tokens)
        c["generated_tokens"].append(r.generated_tokens)
        c["num_preemptions"].append(r.num_preemptions)
        c["status"].append(r.status)
        c["reason"].append(r.reason)
        self.num_recorded += 1

    def segment(self, *, pool: str, replica: int, start_s: float, end_s: float, num_steps: int, batch_size: int,
                num_waiting: int, kv_blocks_mean: float, kv_blocks_end: int, prefill_tokens: int,
                decode_tokens: int) -> None:
        """Record one stretch of a replica's time: a step, a fast-forwarded run of steps, or an idle gap."""
        c = self._seg
        c["pool"].append(pool)
        c["replica"].append(replica)
        c["start_s"].append(start_s)
        c["end_s"].append(end_s)
        c["num_steps"].append(num_steps)
        c["batch_size"].append(batch_size)
        c["num_waiting"].append(num_waiting)
        c["kv_blocks_mean"].append(kv_blocks_mean)
        c["kv_blocks_end"].append(kv_blocks_end)
        c["prefill_tokens"].append(prefill_tokens)
        c["decode_tokens"].append(decode_tokens)

    def requests_frame(self) -> pd.DataFrame:
        df = pd.DataFrame({k: np.asarray(v) if isinstance(v, array) else v for k, v in self._req.items()})
        df = df.sort_values("request_id", kind="stable").reset_index(drop=True)
        df["ttft_s"] = df["first_token_s"] - df["arrival_s"]
        df["time_to_answer_s"] = df["reasoning_end_s"] - df["arrival_s"]
        df["e2e_s"] = np.where(df["status"] == "completed", df["finish_s"] - df["arrival_s"], np.nan)
        output = df["reasoning_tokens"] + df["answer_tokens"]
        decode_span = df["finish_s"] - df["first_token_s"]
        df["tpot_s"] = np.where((df["status"] == "completed") & (output > 1), decode_span / (output - 1), np.nan)
        for col in ("query_type", "pool", "status", "reason"):
            df[col] = df[col].astype("string")
        return df[list(REQUEST_COLUMNS)]

    def segments_frame(self) -> pd.DataFrame:
        df = pd.DataFrame({k: np.asarray(v) if isinstance(v, array) else v for k, v in self._seg.items()})
        df["pool"] = df["pool"].astype("string")
        return df[list(SEGMENT_COLUMNS)]


def _stats(prefix: str, values: pd.Series) -> dict[str, float]:
    v = values.dropna().to_numpy(float)
    out = {f"{prefix}_mean": float(v.mean()) if len(v) else math.nan}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = float(np.percentile(v, p)) if len(v) else math.nan
    return out


def summarize(requests: pd.DataFrame, *, makespan_s: float, slo: dict[str, float | None],
              kv_utilization_mean: float, kv_utilization_max: float, gpu_hours: float, cost_usd: float,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Flat summary of one run. Goodput is the share of all arrived requests that completed within every SLO
    given (ttft_s, tpot_s, e2e_s; a missing SLO is not checked). Throughput counts every output token generated
    within the run, including those of requests still unfinished at its end."""
    status = requests["status"]
    completed = requests[status == "completed"]
    n = len(requests)
    ok = status == "completed"
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        limit = slo.get(key)
        if limit is not None:
            ok &= requests[key].fillna(0.0) <= limit
    span = makespan_s if makespan_s > 0 else math.nan
    output_tokens = int(requests["generated_tokens"].sum())
    summary: dict[str, Any] = {
        "num_requests": n,
        "num_completed": int(len(completed)),
        "num_rejected": int((status == "rejected").sum()),
        "num_unfinished": int((status == "unfinished").sum()),
        "num_not_arrived": int((status == "not_arrived").sum()),
        "saturated": bool((status == "unfinished").any()),
        "makespan_s": float(makespan_s),
        "output_tokens": output_tokens,
        "throughput_output_tokens_per_s": output_tokens / span,
        "requests_per_s": len(completed) / span,
    }
    summary.update(_stats("ttft_s", completed["ttft_s"]))
    summary.update(_stats("time_to_answer_s", completed["time_to_answer_s"]))
    summary.update(_stats("tpot_s", completed["tpot_s"]))
    summary.update(_stats("e2e_s", completed["e2e_s"]))
    summary.update({
        "kv_utilization_mean": kv_utilization_mean,
        "kv_utilization_max": kv_utilization_max,
        "num_preemptions": int(requests["num_preemptions"].sum()),
        "prefix_cache_hit_ratio": (float(completed["prefix_hit_tokens"].sum() / completed["prompt_tokens"].sum())
                                   if len(completed) else math.nan),
        "goodput": float(ok.sum() / n) if n else math.nan,
        "goodput_requests_per_s": float(ok.sum()) / span,
        "gpu_hours": gpu_hours,
        "cost_usd": cost_usd,
        "cost_usd_per_1k_completed": cost_usd / len(completed) * 1000 if len(completed) else math.nan,
    })
    if extra:
        summary.update(extra)
    return summary
