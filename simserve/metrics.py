"""Records out, analysis after: per-request and per-segment rows streamed to Parquet a row group at a time as the
run makes them, time-weighted level monitors, and the summary computed from the rows in bounded memory
(percentiles, goodput against SLOs, KV utilisation, GPU-hours and cost). Besides cli.py, the one module that writes
result files: a run's records have to leave memory as they are made (10M-request runs would not fit otherwise).
A run whose rows all fit one row group, with no folder asked for, keeps them in memory: its summary reads them
there, and its files are written when first asked for (pyarrow is imported only then)."""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from simserve.request import Request

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

# pandas is not imported by a run: pyarrow's conversions to and from numpy (pa.array, to_numpy, read_table) go
# through its pandas shim, which imports pandas (about 0.2 s, a quarter of a short run's process), so the records
# are written from and read into their buffers here, and string columns are compared through dictionary codes.

REQUEST_COLUMNS = (
    "request_id", "user_id", "query_type", "pool", "replica", "arrival_s", "first_token_s", "reasoning_end_s",
    "finish_s", "prompt_tokens", "prefix_hit_tokens", "reasoning_tokens", "answer_tokens", "generated_tokens",
    "num_preemptions", "status", "reason", "ttft_s", "time_to_answer_s", "tpot_s", "e2e_s",
)
# Added to the request rows when the workload models answer quality (docs/quality.md): the question's difficulty
# level (0: none), samples run, reasoning tokens all samples spent (probes excluded) and their probes' tokens, the
# mean success probability of its samples at the tokens spent, and whether the answer was right (1), wrong (0) or
# not given (-1: not completed, or a query type without quality).
QUALITY_COLUMNS = ("difficulty", "num_samples", "reasoning_tokens_spent", "probe_tokens", "p_correct", "correct")
# Added to the request rows when a trace cache or minting is configured (simserve/reuse.py): how the request's
# reasoning was reused ("none", "exact", "semantic", "semantic_false", "step", "minted") and the reasoning tokens
# that saved.
REUSE_COLUMNS = ("reuse", "reused_reasoning_tokens")
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


# A Parquet row group holds about ROW_GROUP_BYTES of column values (8 bytes a value: an int64, a float64, or a
# string's slot in its list), so a table of narrow rows gets more rows a group: 99,864 request rows (21 columns),
# 190,650 replica segments (11 columns). A run whose rows fit one group of each table keeps them in memory and never
# imports pyarrow unless its files are asked for: BLIS's saturated 10k run records 73,504 segments, which at a fixed
# 65,536 rows a group cost it pyarrow's import (0.12 s) and a temporary file, and 56 MiB more peak memory.
ROW_GROUP_BYTES = 16 * 2**20
MAX_HELD_VALUES = 65_536  # values a percentile's exact selection holds at once (order_statistics)
CHUNK_ROWS = 4_096  # rows kept as tuples before they become columns (a tuple row holds its values boxed: 4-5x)


def rows_per_group(num_columns: int) -> int:
    """Rows of a Parquet row group for a table of `num_columns` columns: about ROW_GROUP_BYTES of values."""
    return max(ROW_GROUP_BYTES // (8 * num_columns), 1)


# Column kinds: "q" int64, "d" float64, "s" string. Derived columns (float64) are computed per row group.
_REQUEST_KINDS = {
    "request_id": "q", "user_id": "q", "query_type": "s", "pool": "s", "replica": "q", "arrival_s": "d",
    "first_token_s": "d", "reasoning_end_s": "d", "finish_s": "d", "prompt_tokens": "q", "prefix_hit_tokens": "q",
    "reasoning_tokens": "q", "answer_tokens": "q", "generated_tokens": "q", "num_preemptions": "q", "status": "s",
    "reason": "s", "difficulty": "q", "num_samples": "q", "reasoning_tokens_spent": "q", "probe_tokens": "q",
    "p_correct": "d", "correct": "q", "reuse": "s", "reused_reasoning_tokens": "q",
}
_SEGMENT_KINDS = {
    "pool": "s", "replica": "q", "start_s": "d", "end_s": "d", "num_steps": "q", "batch_size": "q",
    "num_waiting": "q", "kv_blocks_mean": "d", "kv_blocks_end": "q", "prefill_tokens": "q", "decode_tokens": "q",
}
_DTYPES = {"q": "int64", "d": "float64", "s": "string"}
_PANDAS_TYPES = {"q": ("int64", "int64"), "d": ("float64", "float64"), "s": ("object", "string")}  # pandas, numpy


def _pa() -> Any:
    """pyarrow, imported on first use (about 50 ms of CPU with its libraries): a run that keeps its rows in memory
    and is never asked for its files does without it."""
    import pyarrow as pa

    return pa


def _pq() -> Any:
    import pyarrow.parquet as pq

    return pq


@cache  # the installed version, read once a process (about 4 ms), not once a file written
def _pandas_version() -> str | None:
    try:
        return version("pandas")
    except PackageNotFoundError:  # pragma: no cover - pandas is a dependency
        return None


def _schema(columns: tuple[str, ...], kinds: dict[str, str]) -> pa.Schema:
    """The Parquet schema, with the pandas metadata pa.Schema.from_pandas gives an empty DataFrame of these dtypes
    (int64, float64, string), so the file reads back with the same dtypes as the frames `Results` has always held
    (tests/test_records.py checks it equals from_pandas's), written without importing pandas."""
    pa = _pa()
    arrow_types = {"q": pa.int64(), "d": pa.float64(), "s": pa.large_string()}
    cols = []
    for c in columns:
        pandas_type, numpy_type = _PANDAS_TYPES[kinds.get(c, "d")]
        cols.append({"name": c, "field_name": c, "pandas_type": pandas_type, "numpy_type": numpy_type,
                     "metadata": None})
    meta = {"index_columns": [], "column_indexes": [], "columns": cols, "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": _pandas_version()}
    return pa.schema([pa.field(c, arrow_types[kinds.get(c, "d")]) for c in columns],
                     metadata={b"pandas": json.dumps(meta).encode()})


def _numeric(values: np.ndarray) -> pa.Array:
    """A numpy int64 or float64 array as an Arrow array sharing its buffer (NaN stays a value, as pa.array leaves
    it)."""
    pa = _pa()
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.int64() if values.dtype.kind == "i" else pa.float64(), len(values),
                                 [None, pa.py_buffer(values)])


def _strings(values: list[Any]) -> pa.Array:
    """Python strings (None: null) as an Arrow large_string array, built from its buffers (`pa.array` would
    import pandas, 0.2 s, on its first call). A column holds few distinct strings (a pool, a status, a query
    type), so each distinct one is encoded once and the rows' bytes gathered from them by their codes with numpy
    (pyarrow's own `take` would import pyarrow.compute, about 50 ms)."""
    pa = _pa()
    n = len(values)
    coded = _coded(values)
    codes, distinct = coded.codes, coded.values
    encoded = [b"" if v is None else v.encode() for v in distinct]
    sizes = np.fromiter(map(len, encoded), np.int64, len(encoded))
    lengths = sizes[codes]  # each row's bytes
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if len(encoded) == 1:
        data = encoded[0] * n
    else:  # row i's bytes are blob[firsts[codes[i]]:][:lengths[i]]: one gather over every byte
        blob = np.frombuffer(b"".join(encoded), np.uint8)
        firsts = np.zeros(len(encoded), np.int64)
        np.cumsum(sizes[:-1], out=firsts[1:])
        at = np.repeat(firsts[codes] - offsets[:-1], lengths)
        at += np.arange(int(offsets[n]), dtype=np.int64)
        data = blob[at].tobytes()
    valid = None
    if None in distinct:
        valid = pa.py_buffer(np.packbits(codes != distinct.index(None), bitorder="little"))
    return pa.Array.from_buffers(pa.large_string(), n, [valid, pa.py_buffer(offsets), pa.py_buffer(data)])


def _derive_request_times(cols: dict[str, Any]) -> None:
    """Per-request latencies from the timestamps: TTFT, time to answer (end of reasoning), TPOT (mean time per
    output token after the first) and end to end; TPOT and e2e only for completed requests."""
    arrival, first, finish = cols["arrival_s"], cols["first_token_s"], cols["finish_s"]
    completed = np.fromiter((s == "completed" for s in cols["status"]), bool, len(arrival))
    output = cols["reasoning_tokens"] + cols["answer_tokens"]
    cols["ttft_s"] = first - arrival
    cols["time_to_answer_s"] = cols["reasoning_end_s"] - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["tpot_s"] = np.where(completed & (output > 1), (finish - first) / (output - 1), np.nan)
    cols["e2e_s"] = np.where(completed, finish - arrival, np.nan)


class _Folder:
    """Where the files go: the folder given, or a temporary folder made on first use, which lasts as long as this
    object (the Results of the run hold it)."""

    def __init__(self, directory: Path | None) -> None:
        self.given = directory
        self.tempdir: tempfile.TemporaryDirectory[str] | None = None

    def path(self) -> Path:
        if self.given is not None:
            return self.given
        if self.tempdir is None:
            self.tempdir = tempfile.TemporaryDirectory(prefix="simserve-")
        return Path(self.tempdir.name)


def _columns_of_rows(columns: tuple[str, ...], kinds: dict[str, str], rows: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Rows (tuples in column order, every column) as columns: numbers as numpy arrays, strings as lists. (Reading
    the numbers in one pass as float64, from row slices, cost more: numpy converts each int through a float
    object.)"""
    n = len(rows)
    if n == 0:
        return {name: [] if kinds[name] == "s" else np.empty(0, _DTYPES[kinds[name]]) for name in columns}
    cols: dict[str, Any] = {}
    for name, values in zip(columns, zip(*rows, strict=True), strict=True):
        kind = kinds[name]
        cols[name] = list(values) if kind == "s" else np.fromiter(values, _DTYPES[kind], n)
    return cols


def _joined(parts: list[dict[str, Any]], columns: tuple[str, ...]) -> dict[str, Any]:
    """Column chunks made from consecutive rows, as one set of columns (the same values, in order)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {c: list(chain.from_iterable(p[c] for p in parts)) if isinstance(parts[0][c], list)
            else np.concatenate([p[c] for p in parts]) for c in columns}


class _Sink:
    """One Parquet file written a row group at a time from the rows recorded for it. A row is recorded as a tuple of
    its recorded columns, in order (one append, where a column append per value cost ten times as much: a replica
    records a segment per event); every CHUNK_ROWS rows become columns, each in one numpy call (np.fromiter: half
    the cost per value of appending to an array('q')), so that rows held take about what their values do; a row
    group's columns are its chunks joined. The file is written under NAME.partial and renamed to NAME by `close()`,
    so a run that dies never leaves a half-written file under the final name.

    A `packed` sink (the replica segments: a row per event, seven per request in a saturated run) takes its rows
    otherwise: a row's numbers are packed into `buf` as they are recorded (`pack_into`: int64 and float64 in the
    machine's byte order, the values the columns hold) and its one string column, the first, goes to `texts`; a
    chunk's numeric columns are then read from the bytes by one numpy view, where tuple rows were transposed and
    each value converted by numpy."""

    def __init__(self, folder: _Folder, name: str, columns: tuple[str, ...], kinds: dict[str, str],
                 row_group_rows: int, chunk_rows: int = CHUNK_ROWS,
                 derive: Callable[[dict[str, Any]], None] | None = None, packed: bool = False) -> None:
        self.folder = folder
        self.name = name
        self.columns = columns  # as written: the recorded ones, and the derived ones (float64) among them
        self.recorded = tuple(c for c in columns if c in kinds)  # a row's values, in order
        self.kinds = kinds
        self.row_group_rows = row_group_rows
        self.chunk_rows = chunk_rows
        self.derive = derive
        self.rows: list[tuple[Any, ...]] = []  # recorded since the last chunk (not packed)
        self.limit = min(chunk_rows, row_group_rows)  # rows at which `chunk()` is due
        # Packed: rows recorded since the last chunk, their numbers' bytes (room for `limit` rows at most) and
        # their first column's strings.
        self.packed = packed
        self.num_packed = 0
        numbers = self.recorded[1:] if packed else ()
        if packed and (kinds[self.recorded[0]] != "s" or any(kinds[c] == "s" for c in numbers)):
            raise ValueError(f"a packed sink's one string column comes first: {self.recorded}")
        packer = struct.Struct("=" + "".join(kinds[c] for c in numbers))  # native order, 8-byte q and d
        self.row_bytes = packer.size
        self.pack_into = packer.pack_into
        self._packed_dtype = np.dtype([(c, _DTYPES[kinds[c]]) for c in numbers])
        self.buf = bytearray(packer.size * self.limit)
        self.texts: list[Any] = []
        self._chunks: list[dict[str, Any]] = []  # earlier rows of this row group, as columns
        self._chunked = 0  # rows in them
        self._made: tuple[int, dict[str, Any]] | None = None  # the row group's rows as columns, and how many
        self.num_rows = 0  # written to the file
        self.num_row_groups = 0
        self._writer: Any = None  # a pq.ParquetWriter once the file is opened
        self._arrow_schema: Any = None  # its pa.Schema, made when first written

    @property
    def path(self) -> Path:
        return self.folder.path() / self.name

    @property
    def partial(self) -> Path:
        return self.folder.path() / (self.name + ".partial")

    def schema(self) -> Any:
        if self._arrow_schema is None:
            self._arrow_schema = _schema(self.columns, self.kinds)
        return self._arrow_schema

    def pending(self) -> int:
        """Rows recorded since the last chunk."""
        return self.num_packed if self.packed else len(self.rows)

    def held(self) -> int:
        """Rows recorded and not yet written."""
        return self._chunked + self.pending()

    def _pending_columns(self) -> dict[str, Any]:
        """The rows recorded since the last chunk, as columns (left recorded)."""
        if not self.packed:
            return _columns_of_rows(self.recorded, self.kinds, self.rows)
        numbers = np.frombuffer(self.buf, self._packed_dtype, self.num_packed)
        cols: dict[str, Any] = {self.recorded[0]: list(self.texts)}
        for c in self.recorded[1:]:
            cols[c] = numbers[c].copy()  # its own: the bytes are written over after the chunk
        return cols

    def _clear_pending(self) -> None:
        self.rows = []
        self.num_packed = 0
        self.texts = []

    def chunk(self) -> None:
        """The rows recorded since the last chunk become columns; a full row group is written."""
        n = self.pending()
        if n:
            self._chunks.append(self._pending_columns())
            self._chunked += n
            self._clear_pending()
        if self._chunked >= self.row_group_rows:
            self.flush()
        else:
            self.limit = min(self.chunk_rows, self.row_group_rows - self._chunked)

    def _columns(self) -> dict[str, Any]:
        """The rows held as columns, the derived ones included (made once for as many rows: rows are only ever
        appended, so a count names them)."""
        n = self.held()
        if self._made is None or self._made[0] != n:
            parts = list(self._chunks)
            if self.pending() or not parts:
                parts.append(self._pending_columns())
            cols = _joined(parts, self.recorded)
            if self.derive is not None:
                self.derive(cols)
            self._made = n, cols
        return self._made[1]

    def flush(self) -> None:
        """Write the rows held as one row group, and start a new one."""
        n = self.held()
        if n == 0:
            return
        cols = self._columns()
        self._clear_pending()
        self._chunks = []
        self._chunked = 0
        self._made = None
        self.limit = min(self.chunk_rows, self.row_group_rows)
        self._write(cols, n)

    def frame(self) -> Frame:
        """The rows held, derived columns included, as the summaries read them; they stay held, to be written
        later (from the same columns)."""
        return Frame(self.held(), dict(self._columns()))  # its own dict: a Frame codes its strings in place

    def _write(self, cols: dict[str, Any], n: int) -> None:
        pa = _pa()
        table = pa.Table.from_arrays([_strings(cols[c]) if self.kinds.get(c) == "s" else _numeric(cols[c])
                                      for c in self.columns], schema=self.schema())
        self._open().write_table(table, row_group_size=n)
        self.num_rows += n
        self.num_row_groups += 1

    def _open(self) -> Any:
        if self._writer is None:
            partial = self.partial
            partial.parent.mkdir(parents=True, exist_ok=True)
            # Dictionary pages for strings and integers (few distinct values: smaller and faster), not for
            # floats (times, means: nearly all distinct, so a dictionary fills up and is dropped, at a cost).
            self._writer = _pq().ParquetWriter(partial, self.schema(), compression="snappy",
                                               use_dictionary=[c for c in self.columns
                                                               if self.kinds.get(c, "d") != "d"])
        return self._writer

    def close(self) -> Path:
        """Write what is buffered, finish the file (an empty run gives a file with the schema and no rows) and
        give it its final name."""
        self.flush()
        self._open().close()
        self._writer = None
        path = self.path
        os.replace(self.partial, path)
        return path

    def abort(self) -> None:
        """Finish the .partial file as it stands (a readable record of the rows so far) without renaming it."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Recorder:
    """Records out, streamed: a finished request becomes one row and its object can be dropped; rows are held (the
    last few thousand as tuples, or for segments as packed bytes, the rest as columns) and written to Parquet a row
    group (`row_group_rows` rows, by default about ROW_GROUP_BYTES of values) at a time, so memory is bounded by the
    requests in flight, not by the requests run. Rows are in the order they were recorded: requests as they end
    (completed or rejected), then those unfinished or not arrived at the end of the run; replica segments as each
    replica closes them. Sort by request_id to get arrival order.

    Files go to `directory`/requests.parquet and replicas.parquet (written as .partial until `close()`), or, with
    no directory, to a temporary folder that lives as long as this recorder (the Results of the run hold it). With
    no directory, a run whose rows all fit one row group writes no file at all unless `paths()` asks for them."""

    def __init__(self, directory: Path | None = None, row_group_rows: int | None = None,
                 quality: bool = False, reuse: bool = False, chunk_rows: int = CHUNK_ROWS) -> None:
        if (row_group_rows is not None and row_group_rows < 1) or chunk_rows < 1:
            raise ValueError(f"'row_group_rows' and 'chunk_rows' must be >= 1, got {row_group_rows}, {chunk_rows}")
        self.folder = _Folder(None if directory is None else Path(directory))
        self.quality = quality
        self.reuse = reuse
        columns = REQUEST_COLUMNS + (QUALITY_COLUMNS if quality else ()) + (REUSE_COLUMNS if reuse else ())
        self.requests = _Sink(self.folder, "requests.parquet", columns, _REQUEST_KINDS,
                              row_group_rows or rows_per_group(len(columns)), chunk_rows, _derive_request_times)
        self.segments = _Sink(self.folder, "replicas.parquet", SEGMENT_COLUMNS, _SEGMENT_KINDS,
                              row_group_rows or rows_per_group(len(SEGMENT_COLUMNS)), chunk_rows, packed=True)
        self.num_recorded = 0
        self._paths: tuple[Path, Path] | None = None  # the two files, once closed under their final names

    def request(self, r: Request) -> None:
        """Record a request that has completed, been rejected, or is unfinished at the end of the run."""
        row: tuple[Any, ...] = (
            r.request_id, r.user_id, r.query_type, r.pool, r.replica, r.arrival_s, r.first_token_s,
            r.reasoning_end_s, r.finish_s, r.prompt_tokens, r.prefix_hit_tokens, r.reasoning_tokens, r.answer_tokens,
            r.generated_tokens, r.num_preemptions, r.status, r.reason)
        if self.quality:
            a = r.answer
            if a is None:
                row += (0, 1, min(r.generated_tokens, r.reasoning_tokens), 0, math.nan, -1)
            else:
                row += (a.difficulty, a.n, a.spent_tokens, a.probe_spent, a.p_correct,
                        -1 if a.correct is None or r.status != "completed" else int(a.correct))
        if self.reuse:
            row += (r.reuse, r.reused_reasoning_tokens)
        sink = self.requests
        sink.rows.append(row)
        self.num_recorded += 1
        if len(sink.rows) >= sink.limit:
            sink.chunk()

    def segment(self, *, pool: str, replica: int, start_s: float, end_s: float, num_steps: int, batch_size: int,
                num_waiting: int, kv_blocks_mean: float, kv_blocks_end: int, prefill_tokens: int,
                decode_tokens: int) -> None:
        """Record one stretch of a replica's time: a step, a fast-forwarded run of steps, or an idle gap."""
        sink = self.segments
        n = sink.num_packed
        sink.pack_into(sink.buf, n * sink.row_bytes, replica, start_s, end_s, num_steps, batch_size, num_waiting,
                       kv_blocks_mean, kv_blocks_end, prefill_tokens, decode_tokens)
        sink.texts.append(pool)
        sink.num_packed = n + 1
        if n + 1 >= sink.limit:
            sink.chunk()

    def close(self) -> tuple[Frame | Path, Frame | Path]:
        """The run is over: what its summary reads, for the requests and the segments. Rows that all fit one row
        group (none written yet) are read in memory, as `Frame`s; with a directory the files are written too, and
        without one they are written only if `paths()` asks. Otherwise the last row groups are written and both
        files get their final names, and the summary reads the files."""
        if self.requests.num_row_groups == 0 and self.segments.num_row_groups == 0:
            held = self.requests.frame(), self.segments.frame()
            if self.folder.given is not None:
                self.paths()
            return held
        return self.paths()

    def paths(self) -> tuple[Path, Path]:
        """The two files, (requests, replicas), under their final names: written now (the last row groups) if they
        have not been."""
        if self._paths is None:
            self._paths = self.requests.close(), self.segments.close()
        return self._paths

    def abort(self) -> None:
        """The run failed: finish the .partial files as they stand and leave the final names alone."""
        self.requests.abort()
        self.segments.abort()


class Coded:
    """A string column as codes into its distinct values, in order of first appearance: values[codes[i]] is row
    i's."""

    __slots__ = ("codes", "values")

    def __init__(self, codes: np.ndarray, values: list[Any]) -> None:
        self.codes = codes
        self.values = values


def _coded(strings: list[Any]) -> Coded:
    index: dict[Any, int] = {}
    codes = np.fromiter([index.setdefault(v, len(index)) for v in strings], np.int64, len(strings))
    return Coded(codes, list(index))


class Frame:
    """Rows of some columns, as every summary reads them: numbers as int64 or float64 numpy arrays, strings as
    `Coded` (coded on first read). One is read from each Parquet row group, from a DataFrame, or made from the
    rows a run held in memory."""

    __slots__ = ("num_rows", "_columns")

    def __init__(self, num_rows: int, columns: dict[str, Any]) -> None:
        self.num_rows = num_rows
        self._columns = columns  # name -> numpy array, Coded, or a list of strings still to code

    def __getitem__(self, name: str) -> Any:
        col = self._columns[name]
        if isinstance(col, list):
            col = self._columns[name] = _coded(col)
        return col


# ------------------------------------------------------------------------------------------ summary

Batches = Callable[[list[str]], Iterator[Frame]]
Rows: TypeAlias = "Frame | os.PathLike[str] | str | pd.DataFrame"  # what summaries read: in memory, a file, a frame

_STRING_COLUMNS = sorted({c for kinds in (_REQUEST_KINDS, _SEGMENT_KINDS) for c, k in kinds.items() if k == "s"})


def _batches(requests: Rows) -> Batches:
    """Replayable reads of some columns: a Parquet file a row group at a time (string columns as dictionaries), a
    DataFrame in one piece, or rows held in memory (one Frame, every column)."""
    if isinstance(requests, Frame):
        held = requests

        def from_memory(columns: list[str]) -> Iterator[Frame]:
            yield held
        return from_memory
    if not isinstance(requests, (str, os.PathLike)):
        frame = requests

        def from_frame(columns: list[str]) -> Iterator[Frame]:
            yield _frame_of_table(_pa().Table.from_pandas(frame[columns], preserve_index=False))
        return from_frame
    path = Path(requests)

    def from_file(columns: list[str]) -> Iterator[Frame]:
        pq = _pq()
        meta = pq.read_metadata(path)
        names = set(meta.schema.names)
        f = pq.ParquetFile(path, metadata=meta, read_dictionary=[c for c in _STRING_COLUMNS if c in names])
        try:
            for i in range(f.num_row_groups):
                yield _frame_of_table(f.read_row_group(i, columns=columns, use_threads=False))
        finally:
            f.close()
    return from_file


def _num_rows(requests: Rows) -> int:
    if isinstance(requests, Frame):
        return requests.num_rows
    if isinstance(requests, (str, os.PathLike)):
        return int(_pq().ParquetFile(requests).metadata.num_rows)
    return len(requests)


_NUMPY_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64, "uint8": np.uint8,
                "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "float": np.float32,
                "double": np.float64}


def _chunk_numpy(chunk: pa.Array) -> np.ndarray:
    """One Arrow array's values as numpy, read from its data buffer (a chunk with nulls, or of another type,
    converts as pyarrow's to_numpy does)."""
    dtype = _NUMPY_TYPES.get(str(chunk.type))
    if dtype is None or chunk.null_count:
        return np.asarray(chunk.to_numpy(zero_copy_only=False))
    if not len(chunk):
        return np.empty(0, dtype)
    return np.frombuffer(chunk.buffers()[1], dtype=dtype, count=len(chunk),
                         offset=chunk.offset * np.dtype(dtype).itemsize)


def _chunked_numpy(col: pa.ChunkedArray) -> np.ndarray:
    """A column's values as one numpy array (what col.to_numpy() gives)."""
    parts = [_chunk_numpy(c) for c in col.chunks]
    if len(parts) == 1:
        return parts[0]
    if not parts:
        return np.empty(0, _NUMPY_TYPES.get(str(col.type), object))
    return np.concatenate(parts)


def _dictionary_codes(col: pa.ChunkedArray) -> Coded:
    """A dictionary column as codes into the list of its distinct values (its chunks' dictionaries merged, in order
    of first listing)."""
    index: dict[Any, int] = {}  # value -> code, in order of first listing
    parts: list[np.ndarray] = []
    for chunk in col.chunks:
        distinct, idx = chunk.dictionary.to_pylist(), _chunk_numpy(chunk.indices)
        lut = np.array([index.setdefault(v, len(index)) for v in distinct], dtype=np.int64)
        parts.append(lut[idx] if len(lut) else np.zeros(len(idx), np.int64))
    values = list(index)
    if not parts:
        return Coded(np.empty(0, np.int64), values)
    return Coded(parts[0] if len(parts) == 1 else np.concatenate(parts), values)


def _frame_of_table(t: pa.Table) -> Frame:
    """An Arrow table as a Frame: numbers read from their buffers, strings through dictionaries."""
    types = _pa().types
    cols: dict[str, Any] = {}
    for name in t.column_names:
        col = t[name]
        if types.is_string(col.type) or types.is_large_string(col.type):
            col = col.dictionary_encode()
        cols[name] = _dictionary_codes(col) if types.is_dictionary(col.type) else _chunked_numpy(col)
    return Frame(t.num_rows, cols)


def _float(col: np.ndarray) -> np.ndarray:
    return np.asarray(col, dtype=float)


def _codes(col: Coded | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """A column as codes into the list of its distinct values: (codes, values), values[codes[i]] being row i's.
    String columns come coded; numbers are coded here (their values in increasing order)."""
    if isinstance(col, Coded):
        return col.codes, col.values
    uniq, idx = np.unique(col, return_inverse=True)
    return idx.astype(np.int64, copy=False), uniq.tolist()


def _equals(col: Coded | np.ndarray, value: Any) -> np.ndarray:
    """Which rows of a column hold `value` (a boolean mask)."""
    codes, values = _codes(col)
    hits = [i for i, v in enumerate(values) if v == value]
    if len(hits) == 1:
        return codes == hits[0]
    return np.isin(codes, hits)


def _sortable(x: np.ndarray) -> np.ndarray:
    """uint64 keys in the order of the float64s: the sign bit set for positives, every bit flipped for negatives."""
    u = x.view(np.uint64)
    return np.where(u >> np.uint64(63), ~u, u | np.uint64(1 << 63))


def _unsortable(key: int) -> float:
    u = key & ~(1 << 63) if key >> 63 else ~key & (2**64 - 1)
    return float(np.array([u], dtype=np.uint64).view(np.float64)[0])


_DIGIT = 16  # bits of the key resolved per pass of the radix selection


def order_statistics(read: Callable[[], Iterator[np.ndarray]], n: int, ranks: Iterable[int],
                     max_held: int = MAX_HELD_VALUES) -> dict[int, float]:
    """The values at the 0-based `ranks` of the sorted `n` floats (no NaN) that `read()` yields in chunks, exactly,
    holding at most about `max_held` of them: a radix selection on the floats' bits, one pass over the chunks per
    16 bits, until the candidates for a rank fit in `max_held`; they are then held and sorted."""
    # A rank's state: the key's top `bits` bits (prefix) and how many values lie below that prefix.
    state = {r: (0, 0, 0) for r in ranks}
    size = {(0, 0): n}  # (prefix, bits) -> values with that prefix
    out: dict[int, float] = {}
    while state:
        groups = {(p, b) for p, b, _ in state.values()}
        held: dict[tuple[int, int], list[np.ndarray]] = {g: [] for g in groups if size[g] <= max_held}
        hist = {g: np.zeros(1 << _DIGIT, np.int64) for g in groups if g not in held and g[1] < 64}
        if held or hist:
            for chunk in read():
                keys = _sortable(chunk)
                for (p, b), values in held.items():
                    values.append(chunk if b == 0 else chunk[(keys >> np.uint64(64 - b)) == np.uint64(p)])
                for (p, b), counts in hist.items():
                    k = keys if b == 0 else keys[(keys >> np.uint64(64 - b)) == np.uint64(p)]
                    digit = (k >> np.uint64(64 - b - _DIGIT)) & np.uint64((1 << _DIGIT) - 1)
                    counts += np.bincount(digit.astype(np.intp), minlength=1 << _DIGIT)
        ordered = {g: np.sort(np.concatenate(v)) for g, v in held.items()}
        for r, (p, b, below) in list(state.items()):
            if (p, b) in ordered:
                out[r] = float(ordered[(p, b)][r - below])
            elif b >= 64:  # every candidate has the same bits: the same value
                out[r] = _unsortable(p)
            else:
                cum = np.cumsum(hist[(p, b)])
                d = int(np.searchsorted(cum, r - below, side="right"))
                g = ((p << _DIGIT) | d, b + _DIGIT)
                size[g] = int(hist[(p, b)][d])
                state[r] = (*g, below + (int(cum[d - 1]) if d else 0))
                continue
            del state[r]
    return out


def percentile_of_sorted(value_at: Callable[[int], float], n: int, p: float) -> float:
    """np.percentile(v, p) (linear method) given the sorted values by rank, with numpy's own arithmetic (the
    virtual index (n - 1) * q, and its two-sided lerp), so the result is bit for bit the same."""
    virtual = (n - 1) * (p / 100)
    below = math.floor(virtual)
    gamma = virtual - below
    i = min(int(below), n - 1)
    a, b = value_at(i), value_at(min(i + 1, n - 1))
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def _stats(prefix: str, batches: Batches, column: str, max_held: int,
           where: tuple[str, Any] | None = None) -> dict[str, float]:
    """Mean (exactly rounded sum over count) and percentiles of a latency over completed requests (those whose
    `where` column, when given, holds the given value)."""

    def read() -> Iterator[np.ndarray]:
        for t in batches(["status", column] + ([where[0]] if where else [])):
            done = _equals(t["status"], "completed")
            if where is not None:
                done &= _equals(t[where[0]], where[1])
            v = _float(t[column])[done]
            yield v[~np.isnan(v)]

    n = 0

    def counted() -> Iterator[list[float]]:
        nonlocal n
        for v in read():
            n += len(v)
            yield v.tolist()
    total = math.fsum(chain.from_iterable(counted()))
    out = {f"{prefix}_mean": total / n if n else math.nan}
    ranks = {r for p in PERCENTILES for r in _ranks(n, p)}
    at = order_statistics(read, n, ranks, max_held) if n else {}
    for p in PERCENTILES:
        out[f"{prefix}_p{p}"] = percentile_of_sorted(at.__getitem__, n, p) if n else math.nan
    return out


def _ranks(n: int, p: float) -> tuple[int, int]:
    i = min(int(math.floor((n - 1) * (p / 100))), n - 1)
    return i, min(i + 1, n - 1)


SLO_METRICS = ("ttft_s", "tpot_s", "time_to_answer_s", "e2e_s")  # the latencies an SLO may bound


def _counts(batches: Batches, slo: dict[str, float | None]) -> dict[str, Any]:
    """Counts and integer sums over every request, in one pass; completed requests within each SLO (a latency
    that is undefined, such as TPOT with one output token, does not break it); the first and last arrival."""
    checked = [k for k in SLO_METRICS if slo.get(k) is not None]
    c: dict[str, Any] = dict.fromkeys(("n", "completed", "rejected", "unfinished", "not_arrived", "ok",
                                       "output_tokens", "num_preemptions", "hit_tokens", "prompt_tokens"), 0)
    c.update({f"within_{k}": 0 for k in checked})
    first, last = math.inf, -math.inf
    for t in batches(["status", "generated_tokens", "num_preemptions", "prefix_hit_tokens", "prompt_tokens",
                      "arrival_s", *checked]):
        codes, values = _codes(t["status"])
        per_status = np.bincount(codes, minlength=len(values)).tolist()
        code = {v: i for i, v in enumerate(values)}
        done = codes == code.get("completed", -1)
        c["n"] += t.num_rows
        c["completed"] += int(done.sum())
        for s in ("rejected", "unfinished", "not_arrived"):
            c[s] += per_status[code[s]] if s in code else 0
        ok = done.copy()
        for k in checked:
            within = done & (np.nan_to_num(_float(t[k]), nan=0.0) <= slo[k])
            c[f"within_{k}"] += int(within.sum())
            ok &= within
        c["ok"] += int(ok.sum())
        c["output_tokens"] += int(t["generated_tokens"].sum())
        c["num_preemptions"] += int(t["num_preemptions"].sum())
        c["hit_tokens"] += int(t["prefix_hit_tokens"][done].sum())
        c["prompt_tokens"] += int(t["prompt_tokens"][done].sum())
        arrived = _float(t["arrival_s"])[codes != code.get("not_arrived", -1)]
        if len(arrived):
            first, last = min(first, float(arrived.min())), max(last, float(arrived.max()))
    c["first_arrival_s"], c["last_arrival_s"] = first, last
    return c


def _rates(batches: Batches, first_s: float, last_s: float) -> tuple[float, float]:
    """Arrivals and completions per second over the second half of the arrivals, [mid, last arrival]."""
    mid = (first_s + last_s) / 2.0
    if not last_s > mid:  # one instant (or two a rounding error apart): no span to divide by
        return math.nan, math.nan
    arrivals = completions = 0
    for t in batches(["status", "arrival_s", "finish_s"]):
        arrival, finish = _float(t["arrival_s"]), _float(t["finish_s"])
        arrived = ~_equals(t["status"], "not_arrived")
        done = _equals(t["status"], "completed")
        arrivals += int((arrived & (arrival >= mid) & (arrival <= last_s)).sum())
        completions += int((done & (finish >= mid) & (finish <= last_s)).sum())
    return arrivals / (last_s - mid), completions / (last_s - mid)


def _attainment(c: dict[str, Any], slo: dict[str, float | None]) -> dict[str, Any]:
    """Each SLO's target (None if unset) and the share of completed requests within it (NaN if unset)."""
    out: dict[str, Any] = {f"slo_{k}": slo.get(k) for k in SLO_METRICS}
    for k in SLO_METRICS:
        given = slo.get(k) is not None and c["completed"] > 0
        out[f"slo_attainment_{k}"] = c[f"within_{k}"] / c["completed"] if given else math.nan
    return out


def summarize(requests: Rows, *, makespan_s: float, slo: dict[str, float | None],
              kv_utilization_mean: float, kv_utilization_max: float, gpu_hours: float, cost_usd: float,
              extra: dict[str, Any] | None = None, max_held: int = MAX_HELD_VALUES) -> dict[str, Any]:
    """Flat summary of one run, from its request rows: a DataFrame, or a requests.parquet file read a row group
    at a time (memory bounded by `max_held` values, whatever the number of requests). Goodput is the share of all
    requests that completed within every SLO given (ttft_s, tpot_s, time_to_answer_s, e2e_s; a missing SLO is
    not checked); `slo_attainment_<metric>` is the share of completed requests within that one target (NaN when
    there is no target), and `slo_<metric>` echoes the target. Offered and achieved rates are arrivals and
    completions per second over the second half of the arrivals (the window the saturation test watches: past
    the start-up, before the drain): a cluster that keeps up achieves the offered rate, one that does not, its
    capacity. `requests_per_s` is completions over the whole makespan, the drain included.
    Throughput counts every output token generated within the run, including those of requests still unfinished
    at its end. Percentiles are np.percentile's (linear), exactly; means are exactly rounded sums over counts."""
    batches = _batches(requests)
    c = _counts(batches, slo)
    n, completed = c["n"], c["completed"]
    span = makespan_s if makespan_s > 0 else math.nan
    offered, achieved = _rates(batches, c["first_arrival_s"], c["last_arrival_s"])
    summary: dict[str, Any] = {
        "num_requests": n,
        "num_completed": completed,
        "num_rejected": c["rejected"],
        "num_unfinished": c["unfinished"],
        "num_not_arrived": c["not_arrived"],
        "saturated": c["unfinished"] > 0,
        "makespan_s": float(makespan_s),
        "output_tokens": c["output_tokens"],
        "throughput_output_tokens_per_s": c["output_tokens"] / span,
        "requests_per_s": completed / span,
        "offered_requests_per_s": offered,
        "achieved_requests_per_s": achieved,
    }
    for m in ("ttft_s", "time_to_answer_s", "tpot_s", "e2e_s"):
        summary.update(_stats(m, batches, m, max_held))
    summary.update({
        "kv_utilization_mean": kv_utilization_mean,
        "kv_utilization_max": kv_utilization_max,
        "num_preemptions": c["num_preemptions"],
        "prefix_cache_hit_ratio": c["hit_tokens"] / c["prompt_tokens"] if c["prompt_tokens"] else math.nan,
        "goodput": c["ok"] / n if n else math.nan,
        "goodput_requests_per_s": float(c["ok"]) / span,
        **_attainment(c, slo),
        "gpu_hours": gpu_hours,
        "cost_usd": cost_usd,
        "cost_usd_per_1k_completed": cost_usd / completed * 1000 if completed else math.nan,
    })
    if extra:
        summary.update(extra)
    return summary


GROUP_METRICS = ("ttft_s", "time_to_answer_s", "e2e_s")


def group_summary(requests: Rows, by: str, *, metrics: Iterable[str] = GROUP_METRICS,
                  max_held: int = MAX_HELD_VALUES) -> dict[Any, dict[str, Any]]:
    """Per value of `by` (query_type, pool): request counts by status and the mean and percentiles of each
    latency in `metrics` over completed requests, exactly and in bounded memory as `summarize` computes them
    (one pass for the counts, then a few per group and metric). Groups in order of first appearance; requests
    that never reached a pool (rejected up front, not arrived) have pool ''."""
    batches = _batches(requests)
    counts: dict[Any, dict[str, Any]] = {}  # keyed by the column's values (a difficulty level is an int)
    for t in batches([by, "status"]):
        if not t.num_rows:
            continue
        groups, names = _codes(t[by])
        statuses, kinds = _codes(t["status"])
        pairs, first, sizes = np.unique(groups * len(kinds) + statuses, return_index=True, return_counts=True)
        for i in np.argsort(first).tolist():  # in order of first appearance
            g, st, k = names[int(pairs[i]) // len(kinds)], kinds[int(pairs[i]) % len(kinds)], int(sizes[i])
            row = counts.setdefault(g, dict.fromkeys(("num_requests", "num_completed", "num_rejected",
                                                     "num_unfinished", "num_not_arrived"), 0))
            row["num_requests"] += k
            if f"num_{st}" in row:
                row[f"num_{st}"] += k
    for g, row in counts.items():
        for m in metrics:
            row.update(_stats(m, batches, m, max_held, where=(by, g)))
    return counts


def busy_seconds(segments: Rows) -> dict[str, float]:
    """Replica-seconds each pool spent stepping (segments with steps: one step or a fast-forwarded run; idle
    gaps excluded), read a row group at a time. Over replicas x makespan it is the pool's busy share."""
    out: dict[str, float] = {}
    for t in _batches(segments)(["pool", "start_s", "end_s", "num_steps"]):
        busy = t["num_steps"] > 0
        dur = np.where(busy, _float(t["end_s"]) - _float(t["start_s"]), 0.0)
        codes, names = _codes(t["pool"])
        sums = np.bincount(codes, weights=dur, minlength=len(names))
        for name, total in zip(names, sums.tolist(), strict=True):
            out[name] = out.get(name, 0.0) + total
    return out


def quality_summary(requests: Rows, cost_usd: float) -> dict[str, Any]:
    """Answer quality over the requests whose query type models it (docs/quality.md), read a row group at a time:
    `accuracy` (right answers over answered requests: completed ones), `num_correct`, `usd_per_correct_answer` (the
    whole run's cost over right answers), `tokens_per_correct_answer` (output tokens of those requests, every sample
    and probe included, over right answers), and per query type its accuracy and right answers."""
    batches = _batches(requests)
    answered = right = tokens = spent = probes = samples = 0
    p_sum = 0.0
    by: dict[str, list[int]] = {}
    for t in batches(["query_type", "correct", "generated_tokens", "reasoning_tokens_spent", "probe_tokens",
                      "p_correct", "num_samples"]):
        correct = t["correct"]
        modelled = np.isfinite(_float(t["p_correct"]))
        known = correct >= 0
        answered += int(known.sum())
        right += int((correct == 1).sum())
        tokens += int(t["generated_tokens"][modelled].sum())
        spent += int(t["reasoning_tokens_spent"][modelled].sum())
        probes += int(t["probe_tokens"][modelled].sum())
        samples += int(t["num_samples"][modelled].sum())
        p_sum += float(_float(t["p_correct"])[known].sum())
        types, names = _codes(t["query_type"])
        seen = types[known]
        _, first = np.unique(seen, return_index=True)
        for code in seen[np.sort(first)].tolist():  # in order of first appearance
            name = names[code]
            mine = known & (types == code)
            row = by.setdefault(name, [0, 0])
            row[0] += int(mine.sum())
            row[1] += int((correct[mine] == 1).sum())
    return {
        "accuracy": right / answered if answered else math.nan,
        "num_answered": answered,
        "num_correct": right,
        "usd_per_correct_answer": cost_usd / right if right else math.nan,
        "tokens_per_correct_answer": tokens / right if right else math.nan,
        "p_correct_mean": p_sum / answered if answered else math.nan,
        "reasoning_tokens_spent": spent,
        "probe_tokens": probes,
        "num_samples": samples,
        "accuracy_by_query_type": {k: {"num_answered": v[0], "num_correct": v[1],
                                       "accuracy": v[1] / v[0] if v[0] else math.nan} for k, v in by.items()},
    }


def revenue_summary(requests: Rows, *, input_usd_per_mtok: float, output_usd_per_mtok: float,
                    bill_reused_reasoning: bool, cost_usd: float, reuse_columns: bool = False,
                    step_prompt_tokens: int = 0) -> dict[str, Any]:
    """What completed requests are billed at a price per million tokens, read a row group at a time: input, their
    prompt tokens less the cached steps step reuse put in them (`step_prompt_tokens`, over completed requests: the
    user did not send them); output, the tokens generated (reasoning, probes and answer, every sample), plus with
    `bill_reused_reasoning` the reasoning that reuse saved (`reused_reasoning_tokens`, recorded when
    `reuse_columns`). Then
    `revenue_usd`, `margin_usd` = revenue - cost_usd, `margin_ratio` = margin / revenue, `usd_per_query` (cost per
    completed request) and `revenue_per_query_usd`."""
    batches = _batches(requests)
    prompt = generated = reused = completed = 0
    for t in batches(["status", "prompt_tokens", "generated_tokens"]):
        done = _equals(t["status"], "completed")
        completed += int(done.sum())
        prompt += int(t["prompt_tokens"][done].sum())
        generated += int(t["generated_tokens"][done].sum())
    if bill_reused_reasoning and reuse_columns:
        for t in batches(["status", "reused_reasoning_tokens"]):
            done = _equals(t["status"], "completed")
            reused += int(t["reused_reasoning_tokens"][done].sum())
    billed_in, billed_out = prompt - step_prompt_tokens, generated + reused
    revenue = (billed_in * input_usd_per_mtok + billed_out * output_usd_per_mtok) / 1e6
    margin = revenue - cost_usd
    return {
        "billed_input_tokens": billed_in,
        "billed_output_tokens": billed_out,
        "revenue_usd": revenue,
        "margin_usd": margin,
        "margin_ratio": margin / revenue if revenue else math.nan,
        "usd_per_query": cost_usd / completed if completed else math.nan,
        "revenue_per_query_usd": revenue / completed if completed else math.nan,
    }


def jain_index(values: np.ndarray) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one takes everything."""
    x = np.asarray(values, float)
    sq = float((x * x).sum())
    return float(x.sum() ** 2 / (len(x) * sq)) if len(x) and sq > 0 else math.nan


SERVICE_SLICE_ROWS = 262_144  # rows per slice of the users in service_summary


def service_summary(requests: Rows) -> dict[str, float]:
    """Starvation and fairness: `max_wait_s`, the longest time a request waited from arrival to its first token
    (TTFT, its prefill step included; NaN if none got one); `jain_fairness_users`, Jain's index across users of
    the output tokens generated for them (the service each received). Read a row group at a time; the users' totals
    are found a slice of the users at a time (user id modulo the number of slices, one per SERVICE_SLICE_ROWS
    rows), so memory holds one slice's, however many users there are. Token counts are integers, so the sums are
    exact and the index is the one `jain_index` gives on the users' totals (bit for bit below 2**53)."""
    batches = _batches(requests)
    wait_max = -math.inf
    for t in batches(["arrival_s", "first_token_s"]):
        wait = _float(t["first_token_s"]) - _float(t["arrival_s"])
        wait = wait[~np.isnan(wait)]
        if len(wait):
            wait_max = max(wait_max, float(wait.max()))
    rows = _num_rows(requests)
    slices = max(1, math.ceil(rows / SERVICE_SLICE_ROWS))
    num_users = total = squares = 0
    for k in range(slices):
        users, tokens = [], []
        for t in batches(["user_id", "generated_tokens"]):
            u = np.asarray(t["user_id"], dtype=np.int64)
            g = np.asarray(t["generated_tokens"], dtype=np.int64)
            mine = u % slices == k
            users.append(u[mine])
            tokens.append(g[mine])
        if not users:  # no row at all (an empty run)
            break
        ids, which = np.unique(np.concatenate(users), return_inverse=True)
        served = np.zeros(len(ids), dtype=np.int64)
        np.add.at(served, which, np.concatenate(tokens))
        num_users += len(ids)
        total += int(served.sum())
        squares += int((served * served).sum())
    jain = float(float(total) ** 2 / (num_users * float(squares))) if num_users and squares > 0 else math.nan
    return {"max_wait_s": wait_max if wait_max > -math.inf else math.nan, "jain_fairness_users": jain}
