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

Every format is checked row by row as it is read (TraceError names the file, the line and what was expected):
timestamps must not decrease (a trace is replayed in file order, never reordered), token counts are whole
numbers >= 0, and every required column or key is there.
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

# pandas is imported inside the readers that use it, not here: this module is loaded with every scenario (its
# TraceSpec is part of the schema), and a scenario without a trace, `simserve check` of one included, loads no
# pandas (start-up time).

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


class TraceSpec(BaseModel):
    """A trace file to replay instead of a synthetic arrival process and mix."""

    model_config = _FROZEN
    format: Literal["azure", "mooncake", "requests"] = Field(description="azure: Azure LLM 2023 CSV; mooncake: "
                                                             "Mooncake JSONL; requests: arrival_s, input_tokens, "
                                                             "output_tokens CSV")
    path: str = Field(description="file, relative to the scenario's folder (or builtin:NAME)")
    rate_scale: float = Field(default=1.0, gt=0, description="2 replays the trace twice as fast")
    start_s: float = Field(default=0.0, ge=0, description="window start, trace seconds from its first request")
    end_s: float | None = Field(default=None, gt=0, description="window end (exclusive), trace seconds")
    max_requests: int | None = Field(default=None, gt=0, description="replay at most this many requests")
    query_type: str = Field(default="trace", min_length=1, description="query type given to every request")
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


class TraceError(ValueError):
    """A trace file that cannot be replayed as it is; the message names the file, the line and what was expected."""


Row = tuple[float, int, int, tuple[int, ...] | None]
CHUNK_ROWS = 65536
_COUNT = "a whole number of tokens >= 0"
_SORTED = "timestamps must not decrease (a trace is replayed in file order: sort it by time)"


def _shown(value: object) -> str:
    import pandas as pd

    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA or value == "":
        return "an empty field"
    return repr(value.item() if isinstance(value, np.generic) else value)


def _csv_chunks(path: Path, required: tuple[str, ...], kind: str,
                dtype: dict[str, str] | None = None) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """A CSV trace a chunk at a time, with each row's line number in the file; blank lines are skipped, a missing
    column or a malformed line is a TraceError."""
    import pandas as pd

    first = 2
    try:
        for chunk in pd.read_csv(path, chunksize=CHUNK_ROWS, dtype=dtype, skip_blank_lines=False):
            if first == 2:
                missing = [c for c in required if c not in chunk.columns]
                if missing:
                    raise TraceError(f"{path}: line 1: not {kind}: missing column(s) {', '.join(missing)} (the "
                                     f"header has {', '.join(map(str, chunk.columns))})")
            lines = np.arange(first, first + len(chunk))
            first += len(chunk)
            blank = chunk.isna().all(axis=1).to_numpy()
            if blank.any():
                chunk, lines = chunk[~blank], lines[~blank]
            yield lines, chunk
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: empty file: expected {kind} with columns {', '.join(required)}") from None
    except pd.errors.ParserError as exc:
        raise TraceError(f"{path}: not a well-formed CSV ({str(exc).strip()}): expected {kind}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not a UTF-8 text file (byte {exc.start}): expected {kind}") from None


def _counts(col: pd.Series, lines: np.ndarray, path: Path) -> np.ndarray:
    """A column of token counts as int64; anything else is a TraceError naming the first bad row."""
    import pandas as pd

    if pd.api.types.is_integer_dtype(col.dtype):
        values = col.to_numpy(np.int64)
        bad = values < 0
    else:
        f = pd.to_numeric(col, errors="coerce").to_numpy(float, na_value=np.nan)
        bad = ~(np.isfinite(f) & (f >= 0) & (f == np.floor(f)))
        values = np.where(bad, 0, f).astype(np.int64)
    if bad.any():
        i = int(np.argmax(bad))
        raise TraceError(f"{path}: line {lines[i]}: {col.name}: expected {_COUNT}, got {_shown(col.iloc[i])}")
    return values


class _Order:
    """Checks that a trace's timestamps never decrease, across chunks."""

    def __init__(self, path: Path, column: str) -> None:
        self.path, self.column = path, column
        self.last, self.last_line = -math.inf, 0
        self.last_raw: object = ""

    def check(self, times: np.ndarray, lines: np.ndarray, raw: pd.Series | list[object]) -> None:
        if not len(times):
            return
        prev = np.concatenate(([self.last], times[:-1]))
        bad = times < prev
        if bad.any():
            i = int(np.argmax(bad))
            before, before_line = (self.last_raw, self.last_line) if i == 0 else (raw[i - 1], lines[i - 1])
            raise TraceError(f"{self.path}: line {lines[i]}: {self.column}: {raw[i]!s} is earlier than line "
                             f"{before_line}'s {before!s}: {_SORTED}")
        self.last, self.last_line, self.last_raw = float(times[-1]), int(lines[-1]), raw[len(times) - 1]

    def check_one(self, t: float, line: int, raw: object) -> None:
        if t < self.last:
            raise TraceError(f"{self.path}: line {line}: {self.column}: {raw!s} is earlier than line "
                             f"{self.last_line}'s {self.last_raw!s}: {_SORTED}")
        self.last, self.last_line, self.last_raw = t, line, raw


def _raw_azure(path: Path) -> Iterator[Row]:
    import pandas as pd

    t0: pd.Timestamp | None = None
    order = _Order(path, "TIMESTAMP")
    for lines, chunk in _csv_chunks(path, ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
                                    "an Azure LLM trace CSV"):
        stamps = pd.to_datetime(chunk["TIMESTAMP"], format="mixed", errors="coerce")
        if stamps.isna().any():
            i = int(np.argmax(stamps.isna().to_numpy()))
            raise TraceError(f"{path}: line {lines[i]}: TIMESTAMP: expected a date and time such as "
                             f"2023-11-16 18:15:46.6805900, got {_shown(chunk['TIMESTAMP'].iloc[i])}")
        if t0 is None and len(stamps):
            t0 = stamps.iloc[0]
        secs = ((stamps - t0) / pd.Timedelta(seconds=1)).to_numpy(float)
        order.check(secs, lines, chunk["TIMESTAMP"].tolist())
        ctx = _counts(chunk["ContextTokens"], lines, path)
        gen = _counts(chunk["GeneratedTokens"], lines, path)
        for i in range(len(chunk)):
            yield float(secs[i]), int(ctx[i]), int(gen[i]), None


def _whole(value: object) -> int | None:
    """A JSON token count as an int, or None if it is not a whole number >= 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not (math.isfinite(value) and value >= 0 and value == math.floor(value)):
        return None
    return int(value)


def _hashes(value: object) -> tuple[int, ...] | None:
    """Prefix-chained block hashes as a tuple (None for none); raises ValueError if not a list of integers."""
    if value is None:
        return None
    if not isinstance(value, list) or any(isinstance(h, bool) or not isinstance(h, int) for h in value):
        raise ValueError
    return tuple(value) or None


MOONCAKE_LINE = "a JSON object per line with timestamp (ms), input_length, output_length and optional hash_ids"


def _mooncake_row(path: Path, line_no: int, line: str) -> tuple[Row, object]:
    """One line of a Mooncake trace, and its timestamp as written."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}: line {line_no}: not valid JSON ({exc.msg} at column {exc.pos + 1}): expected "
                         f"{MOONCAKE_LINE}") from None
    if not isinstance(row, dict):
        raise TraceError(f"{path}: line {line_no}: expected {MOONCAKE_LINE}, got {type(row).__name__}")
    missing = [k for k in ("timestamp", "input_length", "output_length") if k not in row]
    if missing:
        raise TraceError(f"{path}: line {line_no}: missing {', '.join(missing)}: expected {MOONCAKE_LINE}")
    stamp = row["timestamp"]
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise TraceError(f"{path}: line {line_no}: timestamp: expected a number of milliseconds, got {stamp!r}")
    counts = []
    for key in ("input_length", "output_length"):
        n = _whole(row[key])
        if n is None:
            raise TraceError(f"{path}: line {line_no}: {key}: expected {_COUNT}, got {row[key]!r}")
        counts.append(n)
    try:
        keys = _hashes(row.get("hash_ids"))
    except ValueError:
        raise TraceError(f"{path}: line {line_no}: hash_ids: expected a list of integer block hashes, got "
                         f"{row['hash_ids']!r}") from None
    return (stamp / 1000.0, counts[0], counts[1], keys), stamp


def _raw_mooncake(path: Path) -> Iterator[Row]:
    order = _Order(path, "timestamp")
    with path.open(encoding="utf-8") as f:
        try:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                row, stamp = _mooncake_row(path, line_no, line)
                order.check_one(row[0], line_no, stamp)
                yield row
        except UnicodeDecodeError as exc:
            raise TraceError(f"{path}: not a UTF-8 text file (byte {exc.start}): expected {MOONCAKE_LINE}") from None


def _block_hashes(col: pd.Series, lines: np.ndarray, path: Path) -> list[tuple[int, ...] | None]:
    import pandas as pd

    out: list[tuple[int, ...] | None] = []
    for i, text in enumerate(col):
        if pd.isna(text):
            out.append(None)
            continue
        try:
            out.append(tuple(int(h) for h in str(text).split()) or None)
        except ValueError:
            raise TraceError(f"{path}: line {lines[i]}: prefix_block_hashes: expected space-separated integers, "
                             f"got {text!r}") from None
    return out


def _raw_requests(path: Path) -> Iterator[Row]:
    import pandas as pd

    t0: float | None = None
    order: _Order | None = None
    for lines, chunk in _csv_chunks(path, ("arrival_s", "input_tokens", "output_tokens"), "a requests CSV",
                                    dtype={"prefix_block_hashes": "string"}):
        col = "engine_arrival_s" if "engine_arrival_s" in chunk.columns else "arrival_s"
        order = order or _Order(path, col)
        t = pd.to_numeric(chunk[col], errors="coerce").to_numpy(float, na_value=np.nan)
        if not np.isfinite(t).all():
            i = int(np.argmax(~np.isfinite(t)))
            raise TraceError(f"{path}: line {lines[i]}: {col}: expected a time in seconds, got "
                             f"{_shown(chunk[col].iloc[i])}")
        if t0 is None and len(t):
            t0 = float(t[0])
        order.check(t, lines, chunk[col].tolist())
        prompt = _counts(chunk["input_tokens"], lines, path)
        output = _counts(chunk["output_tokens"], lines, path)
        hashes = (_block_hashes(chunk["prefix_block_hashes"], lines, path) if "prefix_block_hashes" in chunk.columns
                  else [None] * len(chunk))
        base = t0 if t0 is not None else 0.0
        for i in range(len(chunk)):
            yield float(t[i]) - base, int(prompt[i]), int(output[i]), hashes[i]


def replay(spec: TraceSpec, base_dir: Path | None = None) -> Iterator[Request]:
    """Requests of the trace window in file order, arrival times shifted to the window start and divided by
    `rate_scale`; lengths exactly as recorded (a count of 0 becomes 1 token: vLLM serves no empty prompt and
    generates at least one token). The file is read lazily and checked as it goes: a row that is not as expected
    (a missing column, a count that is not a whole number >= 0, a timestamp that cannot be read or is earlier than
    the one before) raises TraceError naming the file, the line and what was expected."""
    path = resolve_path(spec.path, base_dir)
    if not path.is_file():
        raise TraceError(f"trace file not found: {path}")
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
