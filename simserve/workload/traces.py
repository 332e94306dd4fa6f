"""Replay of real public request traces, with their arrival times and lengths, read lazily in chunks.

Formats:
- `azure`: the Azure LLM inference trace 2023 CSV (Splitwise; columns TIMESTAMP, ContextTokens, GeneratedTokens).
- `requests`: a CSV of one request per row (arrival_s, input_tokens, output_tokens), the layout of the real
  vLLM runs in e2e-ground-truth (`engine_arrival_s`, when present, is used as the arrival: it is where those runs
  measure latency from). An optional `prefix_block_hashes` column gives each prompt's leading blocks as
  space-separated integers, one per `prefix_block_tokens` tokens, prefix-chained as vLLM hashes them (equal
  leading runs are shared KV); set `prefix_block_tokens` to the pools' `kv_block_tokens` for vLLM's per-block
  hashes.
- `mooncake`: the Mooncake FAST'25 JSONL (timestamp in ms, input_length, output_length, hash_ids of 512-token
  prompt blocks, prefix-chained: equal ids at the same position are the same KV prefix). The hash ids drive the
  replicas' prefix caches.

Options scale the rate (`rate_scale` 2 replays twice as fast) and take a time window of the trace (`start_s`,
`end_s`, in trace seconds from its first request). Trace outputs have no reasoning/answer split: all output
counts as answer unless `reasoning_share` is given.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simserve.request import BUILTIN_PREFIX, Request

if TYPE_CHECKING:
    import pandas as pd

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class TraceSpec(BaseModel):
    """A trace file to replay instead of a synthetic arrival process and mix."""

    model_config = _FROZEN
    format: Literal["azure", "mooncake", "requests"]
    path: str = Field(description="file, relative to the scenario's folder (or builtin:NAME)")
    rate_scale: float = Field(default=1.0, gt=0, description="2 replays the trace twice as fast")
    start_s: float = Field(default=0.0, ge=0, description="window start, trace seconds from its first request")
    end_s: float | None = Field(default=None, gt=0, description="window end (exclusive), trace seconds")
    max_requests: int | None = Field(default=None, gt=0)
    query_type: str = Field(default="trace", min_length=1)
    reasoning_share: float = Field(default=0.0, ge=0, le=1, description="share of output counted as reasoning")
    prefix_block_tokens: int = Field(default=512, gt=0, description="tokens per mooncake hash id")
    shared_prefix_tokens: int = Field(default=0, ge=0, description="every prompt starts with the same prefix of "
                                      "this many tokens (a shared system prompt; guidellm's prefix_tokens)")

    @model_validator(mode="after")
    def _window(self) -> TraceSpec:
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be > start_s ({self.start_s})")
        return self


def resolve_path(path: str, base_dir: Path | None) -> Path:
    if path.startswith(BUILTIN_PREFIX):
        from importlib import resources

        return Path(str(resources.files("simserve") / "data" / path[len(BUILTIN_PREFIX):]))
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else base_dir / p


def _split(output: int, share: float) -> tuple[int, int]:
    output = max(int(output), 1)
    answer = max(output - math.floor(output * share), 1)
    return output - answer, answer


def _raw_azure(path: Path) -> Iterator[tuple[float, int, int, None]]:
    import pandas as pd  # here, not at the top: a scenario without a trace loads no pandas (start-up time)

    t0: pd.Timestamp | None = None
    for chunk in pd.read_csv(path, chunksize=65536):
        missing = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"} - set(chunk.columns)
        if missing:
            raise ValueError(f"{path}: not an Azure LLM trace CSV, missing columns {sorted(missing)}")
        stamps = pd.to_datetime(chunk["TIMESTAMP"], format="mixed")
        if t0 is None:
            t0 = stamps.iloc[0]
        secs = ((stamps - t0) / pd.Timedelta(seconds=1)).to_numpy(float)
        ctx = chunk["ContextTokens"].to_numpy(np.int64)
        gen = chunk["GeneratedTokens"].to_numpy(np.int64)
        for i in range(len(chunk)):
            yield float(secs[i]), int(ctx[i]), int(gen[i]), None


def _raw_mooncake(path: Path) -> Iterator[tuple[float, int, int, tuple[int, ...] | None]]:
    with path.open() as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield (row["timestamp"] / 1000.0, int(row["input_length"]), int(row["output_length"]),
                       tuple(int(h) for h in row.get("hash_ids", ())) or None)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{line_no}: not a Mooncake trace line ({exc!s})") from None


def _raw_requests(path: Path) -> Iterator[tuple[float, int, int, tuple[int, ...] | None]]:
    import pandas as pd  # as in _raw_azure

    df = pd.read_csv(path, dtype={"prefix_block_hashes": "string"})
    missing = {"arrival_s", "input_tokens", "output_tokens"} - set(df.columns)
    if missing:
        raise ValueError(f"{path}: not a requests CSV, missing columns {sorted(missing)}")
    t = df["engine_arrival_s"] if "engine_arrival_s" in df.columns else df["arrival_s"]
    order = np.argsort(t.to_numpy(float), kind="stable")
    t0 = float(t.min())
    hashes = df["prefix_block_hashes"] if "prefix_block_hashes" in df.columns else None
    for i in order:
        keys = None
        if hashes is not None and not pd.isna(hashes.iloc[i]):
            try:
                keys = tuple(int(h) for h in str(hashes.iloc[i]).split()) or None
            except ValueError:
                raise ValueError(f"{path}: row {int(i) + 2}: prefix_block_hashes: expected space-separated "
                                 f"integers, got {hashes.iloc[i]!r}") from None
        yield float(t.iloc[i]) - t0, int(df["input_tokens"].iloc[i]), int(df["output_tokens"].iloc[i]), keys


def replay(spec: TraceSpec, base_dir: Path | None = None) -> Iterator[Request]:
    """Requests of the trace window in file order, arrival times shifted to the window start and divided by
    `rate_scale`; lengths exactly as recorded (outputs of 0 become 1 token)."""
    path = resolve_path(spec.path, base_dir)
    if not path.is_file():
        raise ValueError(f"trace file not found: {path}")
    readers = {"azure": _raw_azure, "mooncake": _raw_mooncake, "requests": _raw_requests}
    rows = readers[spec.format](path)
    end = math.inf if spec.end_s is None else spec.end_s
    count = 0
    for t, prompt, output, keys in rows:
        if t < spec.start_s:
            continue
        if t >= end or (spec.max_requests is not None and count >= spec.max_requests):
            return
        reasoning, answer = _split(output, spec.reasoning_share)
        req = Request(count, 0, spec.query_type, (t - spec.start_s) / spec.rate_scale, max(prompt, 1),
                      reasoning, answer)
        if keys is not None:
            req.prefix_keys = keys
            req.prefix_unit_tokens = spec.prefix_block_tokens
        elif spec.shared_prefix_tokens:
            req.prefix_keys = tuple(range(1, spec.shared_prefix_tokens // spec.prefix_block_tokens + 1))
            req.prefix_unit_tokens = spec.prefix_block_tokens
        count += 1
        yield req
