"""Records streamed to Parquet: row groups written as the run goes, final names only when it ends, the summary
computed from the file equal to the one computed from the whole DataFrame, and exact streaming percentiles."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import by_id, req, scenario, tiny
from hypothesis import given, settings
from hypothesis import strategies as st

import simserve
import simserve.sim
from simserve import Simulation, metrics
from simserve.engine import Hooks
from simserve.metrics import (
    PERCENTILES,
    QUALITY_COLUMNS,
    REQUEST_COLUMNS,
    REUSE_COLUMNS,
    SEGMENT_COLUMNS,
    Recorder,
    order_statistics,
    percentile_of_sorted,
    summarize,
)

SLO = {"ttft_s": 0.5, "tpot_s": 0.02, "e2e_s": None}


def mixed_scenario(num_requests: int = 60, horizon_s: float = 2.0):
    """Completed, rejected (prompts over the 8-block KV), and with the default horizon, unfinished (one sequence
    at a time cannot keep up) and not-arrived requests; with an SLO."""
    data = tiny(pool={"num_kv_blocks": 8, "max_num_seqs": 1})
    data["workload"] = {"num_requests": num_requests, "arrival": {"process": "poisson", "rate_per_s": 20.0},
                        "mix": [{"query_type": "t", "prompt_tokens": {"dist": "uniform", "low": 1, "high": 150},
                                 "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 20},
                                 "answer_tokens": {"dist": "uniform", "low": 1, "high": 5}}]}
    data["slo"] = {k: v for k, v in SLO.items() if v is not None}
    return scenario(data, horizon_s=horizon_s)


@pytest.fixture
def small_row_groups(monkeypatch):
    """Simulations built in the test write row groups of 7 rows."""
    monkeypatch.setattr(simserve.sim, "Recorder", partial(Recorder, row_group_rows=7))


def old_summary(df: pd.DataFrame) -> dict:
    """The summary's request metrics as computed before streaming, from the whole frame (simserve 0329007)."""
    status = df["status"]
    completed = df[status == "completed"]
    ok = status == "completed"
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        if SLO.get(key) is not None:
            ok &= df[key].fillna(0.0) <= SLO[key]
    out = {"num_requests": len(df), "num_completed": len(completed),
           "num_rejected": int((status == "rejected").sum()), "num_unfinished": int((status == "unfinished").sum()),
           "num_not_arrived": int((status == "not_arrived").sum()),
           "output_tokens": int(df["generated_tokens"].sum()), "num_preemptions": int(df["num_preemptions"].sum()),
           "prefix_cache_hit_ratio": float(completed["prefix_hit_tokens"].sum() / completed["prompt_tokens"].sum()),
           "goodput": float(ok.sum() / len(df))}
    for m in ("ttft_s", "time_to_answer_s", "tpot_s", "e2e_s"):
        v = completed[m].dropna().to_numpy(float)
        out[f"{m}_mean"] = float(v.mean())
        for p in PERCENTILES:
            out[f"{m}_p{p}"] = float(np.percentile(v, p))
    return out


def test_rows_stream_in_row_groups_during_the_run(small_row_groups, tmp_path):
    seen = []

    class Watch(Hooks):
        def __init__(self) -> None:
            self.sim: Simulation | None = None

        def finished(self, r) -> None:
            rec = self.sim.recorder
            assert len(rec.requests.rows) < 7  # never more than a row group kept
            seen.append((rec.num_recorded, rec.requests.num_rows, (tmp_path / "requests.parquet").exists()))

    watch = Watch()
    sim = Simulation(mixed_scenario(horizon_s=1e6), hooks=[watch], records_dir=tmp_path)
    watch.sim = sim
    res = sim.run()
    # Rows reach the file in whole row groups as they are recorded, under the .partial name until the end.
    assert all(written == 7 * (recorded // 7) for recorded, written, _ in seen)
    assert seen[-1][1] >= 49
    assert not any(final for _, _, final in seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replicas.parquet", "requests.parquet"]
    for path, n in ((res.requests_path, 60), (res.replicas_path, len(res.replicas))):
        meta = pq.ParquetFile(path).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert sum(sizes) == n and sizes[:-1] == [7] * (len(sizes) - 1) and 1 <= sizes[-1] <= 7


def test_the_file_holds_every_row_in_finish_order_and_results_read_it(small_row_groups, tmp_path):
    res = Simulation(mixed_scenario(), records_dir=tmp_path).run()
    df = res.requests
    assert df.equals(pd.read_parquet(tmp_path / "requests.parquet"))
    assert res.replicas.equals(pd.read_parquet(tmp_path / "replicas.parquet"))
    assert list(df.columns) == list(REQUEST_COLUMNS) and list(res.replicas.columns) == list(SEGMENT_COLUMNS)
    assert {c: str(df[c].dtype) for c in ("request_id", "arrival_s", "status")} == {
        "request_id": "int64", "arrival_s": "float64", "status": "string"}
    assert sorted(df["request_id"]) == list(range(60))
    # Requests that ended within the run come first, by finish time; then the unfinished, then the not arrived.
    order = {"completed": 0, "rejected": 0, "unfinished": 1, "not_arrived": 2}
    assert list(df["status"].map(order)) == sorted(df["status"].map(order))
    assert set(df["status"]) == {"completed", "rejected", "unfinished", "not_arrived"}
    ended = df[df["status"] == "completed"]
    assert ended["finish_s"].is_monotonic_increasing
    assert not df["request_id"].is_monotonic_increasing  # finish order is not arrival order here


def test_finish_order_of_two_requests():
    # Request 0 has a long output, request 1 a short one: 1 ends first and is the first row.
    res = Simulation(scenario(tiny())).run([req(0, 0.0, 10, 50, 1), req(1, 0.0, 10, 2, 1)])
    assert list(res.requests["request_id"]) == [1, 0]
    assert list(by_id(res.requests)["request_id"]) == [0, 1]


def test_an_interrupted_run_leaves_no_file_under_the_final_name(small_row_groups, tmp_path):
    class Boom(Hooks):
        def __init__(self) -> None:
            self.n = 0

        def finished(self, r) -> None:
            self.n += 1
            if self.n == 20:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Simulation(mixed_scenario(horizon_s=1e6), hooks=[Boom()], records_dir=tmp_path).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replicas.parquet.partial", "requests.parquet.partial"]
    # The .partial files are closed, readable records of the row groups written before the failure.
    partial_rows = pd.read_parquet(tmp_path / "requests.parquet.partial")
    assert len(partial_rows) == 14 and list(partial_rows.columns) == list(REQUEST_COLUMNS)


def test_a_rerun_after_an_interrupted_one_replaces_the_partial_files(small_row_groups, tmp_path):
    class Boom(Hooks):
        def finished(self, r) -> None:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        Simulation(mixed_scenario(), hooks=[Boom()], records_dir=tmp_path).run()
    res = Simulation(mixed_scenario(), records_dir=tmp_path).run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replicas.parquet", "requests.parquet"]
    assert len(res.requests) == 60


def test_summary_from_the_file_equals_the_summary_of_the_whole_frame(small_row_groups):
    res = Simulation(mixed_scenario(num_requests=200, horizon_s=8.0)).run()
    s, df = res.summary, res.requests
    assert all(s[k] > 0 for k in ("num_completed", "num_rejected", "num_unfinished", "num_not_arrived"))
    assert 0 < s["goodput"] < s["num_completed"] / s["num_requests"]  # the SLO bites
    want = old_summary(df)
    # The same figures from the file with at most 3 values held (radix passes), and from the frame.
    kw = {"makespan_s": 1.0, "slo": SLO, "kv_utilization_mean": 0.0, "kv_utilization_max": 0.0, "gpu_hours": 0.0,
          "cost_usd": 0.0}
    for got in (s, summarize(res.requests_path, **kw, max_held=3), summarize(df, **kw)):
        for key, value in want.items():
            if key.endswith("_mean"):  # exactly rounded sum over count against numpy's pairwise sum
                assert got[key] == pytest.approx(value, rel=1e-13, abs=0), key
            else:
                assert got[key] == value and type(got[key]) is type(value), key


def test_an_empty_run_writes_files_with_the_schema_and_no_rows(tmp_path):
    res = Simulation(scenario(tiny()), records_dir=tmp_path).run([])
    assert len(res.requests) == 0 and list(res.requests.columns) == list(REQUEST_COLUMNS)
    assert res.summary["num_requests"] == 0 and math.isnan(res.summary["ttft_s_p50"])


def test_without_a_records_dir_the_files_live_as_long_as_the_results():
    res = Simulation(scenario(tiny())).run()
    folder = res.requests_path.parent
    assert res.replicas_path.parent == folder and len(res.requests) == 10
    del res
    gc.collect()
    assert not folder.exists()


# ------------------------------------------------------------------------------------------ rows held in memory

ROOT = Path(__file__).resolve().parent.parent


def same(a, b) -> bool:
    """Equal to the last bit, NaN equal to NaN, dicts in any order."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def assert_memory_summaries_are_the_files(res) -> None:
    """Every summary of a run whose rows were held in memory equals, to the last bit, the one read back from the
    files it writes when asked."""
    rec = res.recorder
    assert isinstance(res.request_rows, metrics.Frame) and rec.folder.tempdir is None  # nothing written yet
    segments = rec.segments.frame()
    requests = res.requests_path  # written now
    assert requests.exists() and res.replicas_path.exists() and len(res.requests) == res.summary["num_requests"]
    s = res.summary
    kw = {"makespan_s": s["makespan_s"], "kv_utilization_mean": s["kv_utilization_mean"],
          "kv_utilization_max": s["kv_utilization_max"], "gpu_hours": s["gpu_hours"], "cost_usd": s["cost_usd"],
          "slo": {k: s[f"slo_{k}"] for k in metrics.SLO_METRICS}}
    from_file = {**summarize(requests, **kw), **metrics.service_summary(requests)}
    assert same({k: s[k] for k in from_file if k != "saturated"}, {k: v for k, v in from_file.items()
                                                                   if k != "saturated"})
    assert same(metrics.busy_seconds(segments), metrics.busy_seconds(res.replicas_path))
    for by in ("query_type", "pool", "status") + (("difficulty",) if rec.quality else ()):
        assert same(metrics.group_summary(res.request_rows, by), metrics.group_summary(requests, by))
    if rec.quality:
        assert same(metrics.quality_summary(res.request_rows, 1.0), metrics.quality_summary(requests, 1.0))
        assert s["accuracy"] == metrics.quality_summary(requests, s["cost_usd"])["accuracy"]
    for bill in (False, True):
        kw = {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 2.0, "bill_reused_reasoning": bill,
              "cost_usd": 1.0, "reuse_columns": rec.reuse}
        assert same(metrics.revenue_summary(res.request_rows, **kw), metrics.revenue_summary(requests, **kw))


@pytest.mark.parametrize("path", ["scenarios/quickstart.yaml", "scenarios/network-effects.yaml",
                                  "scenarios/reasoning-serving/difficulty-routing.yaml",
                                  "scenarios/mixed-a100-h100.yaml"])
def test_a_summary_read_from_rows_held_in_memory_is_the_one_the_files_give(path):
    """A run whose rows fit one row group keeps them in memory and its summary reads them there (trace reuse and
    pricing, answer quality, two pools): the files give the same."""
    sc = simserve.load_scenario(ROOT / path, ["workload.num_requests=120"])
    assert_memory_summaries_are_the_files(simserve.run(sc, base_dir=(ROOT / path).parent))


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_requests=st.integers(0, 60), horizon_s=st.sampled_from([0.3, 2.0, 1e6]))
def test_any_run_held_in_memory_summarizes_as_its_files_do(seed, num_requests, horizon_s):
    """Completed, rejected, unfinished and not-arrived requests in any mix, an empty run included."""
    sc = mixed_scenario(num_requests=max(num_requests, 1), horizon_s=horizon_s).model_copy(update={"seed": seed})
    assert_memory_summaries_are_the_files(Simulation(sc).run([] if num_requests == 0 else None))


@pytest.mark.parametrize("chunk_rows", [1, 3, 7])
def test_rows_made_into_columns_in_chunks_write_the_same_files(monkeypatch, tmp_path, chunk_rows):
    """Rows become columns every `chunk_rows` rows (so rows held cost about what their values do); a row group
    joins its chunks, so the files and the summary are those of one conversion per row group."""
    runs = {}
    for chunk in (chunk_rows, 10**9):
        monkeypatch.setattr(simserve.sim, "Recorder", partial(Recorder, row_group_rows=7, chunk_rows=chunk))
        res = Simulation(mixed_scenario(num_requests=40, horizon_s=1e6), records_dir=tmp_path / str(chunk)).run()
        assert all(sink.pending() <= min(chunk, 7) for sink in (res.recorder.requests, res.recorder.segments))
        runs[chunk] = res
    a, b = runs[chunk_rows], runs[10**9]
    assert same(a.summary | {"wall_time_s": 0}, b.summary | {"wall_time_s": 0})
    for x, y in ((a.requests_path, b.requests_path), (a.replicas_path, b.replicas_path)):
        assert x.read_bytes() == y.read_bytes()


def test_a_short_run_without_a_records_dir_imports_pyarrow_only_when_its_files_are_asked_for():
    probe = ("import sys, simserve\n"
             "res = simserve.run(simserve.load_scenario('scenarios/quickstart.yaml', ['workload.num_requests=50']))\n"
             "print('pyarrow' in sys.modules, res.recorder.folder.tempdir is None, res.summary['num_completed'])\n"
             "print(res.requests_path.exists(), 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "50", "True", "True"]


def test_rows_past_one_row_group_go_to_files_and_the_summary_reads_them(small_row_groups):
    res = Simulation(mixed_scenario()).run()
    assert isinstance(res.request_rows, Path) and res.request_rows == res.requests_path
    assert res.recorder.requests.num_row_groups > 1


def test_row_groups_are_sized_in_bytes_so_narrow_tables_hold_more_rows_before_a_file_is_written(tmp_path):
    """A row group holds about ROW_GROUP_BYTES of values (8 bytes each), so the 11-column segment table holds 190,650
    rows a group and the 21-column request table 99,864: 70,000 segments (past the 65,536 rows every table once
    had) stay in memory, and the next row past the group goes to a file."""
    rec = Recorder()
    assert rec.requests.row_group_rows == metrics.ROW_GROUP_BYTES // (8 * len(REQUEST_COLUMNS)) == 99_864
    assert rec.segments.row_group_rows == metrics.ROW_GROUP_BYTES // (8 * len(SEGMENT_COLUMNS)) == 190_650
    wide = Recorder(quality=True, reuse=True)
    assert wide.requests.row_group_rows == metrics.ROW_GROUP_BYTES // (8 * (21 + 6 + 2))
    assert Recorder(row_group_rows=7).segments.row_group_rows == 7  # as asked
    seg = {"pool": "p", "replica": 0, "num_steps": 1, "batch_size": 1, "num_waiting": 0, "kv_blocks_mean": 1.0,
           "kv_blocks_end": 1, "prefill_tokens": 0, "decode_tokens": 1}
    for rows, files in ((70_000, False), (190_651, True)):
        rec = Recorder(tmp_path / str(rows) if files else None)
        for i in range(rows):
            rec.segment(start_s=float(i), end_s=i + 1.0, **seg)
        assert rec.segments.num_row_groups == (1 if files else 0)
        _, segments = rec.close()
        if files:
            meta = pq.ParquetFile(segments).metadata
            assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [190_650, 1]
        else:
            assert isinstance(segments, metrics.Frame) and segments.num_rows == 70_000
            assert rec.folder.tempdir is None  # nothing written


_I64 = st.integers(-(2**63), 2**63 - 1)
_F64 = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([-0.0, 5e-324, math.nan])


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["main", "decode", "é"]), _I64, _F64, _F64, _I64, _I64, _I64, _F64,
                               _I64, _I64, _I64), max_size=40),
       chunk=st.integers(1, 9), group=st.integers(1, 50))
def test_packed_segment_rows_become_the_columns_tuple_rows_do(rows, chunk, group):
    """Segments are packed as bytes when recorded: at any chunk and row-group size, the columns held and the file
    written are bit for bit those of the same rows recorded as tuples, NaN, -0.0 and int64's extremes included."""
    with tempfile.TemporaryDirectory() as tmp:
        rec = Recorder(Path(tmp, "packed"), row_group_rows=group, chunk_rows=chunk)
        tuples = metrics._Sink(metrics._Folder(Path(tmp, "tuples")), "replicas.parquet", SEGMENT_COLUMNS,
                               metrics._SEGMENT_KINDS, group, chunk)
        assert rec.segments.packed and not tuples.packed
        for row in rows:
            rec.segment(**dict(zip(SEGMENT_COLUMNS, row, strict=True)))
            tuples.rows.append(row)
            if len(tuples.rows) >= tuples.limit:
                tuples.chunk()
            assert rec.segments.held() == tuples.held() and rec.segments.num_rows == tuples.num_rows
        a, b = rec.segments._columns(), tuples._columns()
        assert a.keys() == b.keys()
        for c in a:
            if isinstance(a[c], list):
                assert a[c] == b[c]
            else:
                assert a[c].dtype == b[c].dtype and a[c].tobytes() == b[c].tobytes(), c
        assert rec.segments.close().read_bytes() == tuples.close().read_bytes()


def test_write_results_copies_records_made_elsewhere_and_leaves_streamed_ones(tmp_path):
    from simserve.cli import write_results

    sc = scenario(tiny())
    res = Simulation(sc).run()
    write_results(sc, res, tmp_path / "copy")
    assert (tmp_path / "copy" / "requests.parquet").read_bytes() == res.requests_path.read_bytes()
    streamed = Simulation(sc, records_dir=tmp_path / "direct").run()
    before = (tmp_path / "direct" / "requests.parquet").stat().st_mtime_ns
    write_results(sc, streamed, tmp_path / "direct")
    assert (tmp_path / "direct" / "requests.parquet").stat().st_mtime_ns == before
    assert sorted(p.name for p in (tmp_path / "direct").iterdir()) == [
        "replicas.parquet", "requests.parquet", "scenario.yaml", "summary.json"]


# ----------------------------------------------------------------------------------------------- percentiles


def chunks_of(values: np.ndarray, k: int):
    parts = np.array_split(values, k)
    return lambda: iter(parts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([0.0, 1.5, 2.0, 1e-300])),
                min_size=1, max_size=80),
       st.integers(1, 5), st.sampled_from([1, 2, 7, 1000]))
def test_streaming_percentiles_equal_numpys_bit_for_bit(values, num_chunks, max_held):
    x = np.asarray(values, dtype=float)
    n = len(x)
    at = order_statistics(chunks_of(x, num_chunks), n, range(n), max_held)
    assert [at[r] for r in range(n)] == np.sort(x).tolist()
    for p in (*PERCENTILES, 0, 12.5, 33.3, 100):
        assert percentile_of_sorted(at.__getitem__, n, p) == float(np.percentile(x, p))


def test_order_statistics_hold_few_values_of_a_large_stream():
    x = np.random.default_rng(3).lognormal(0.0, 1.0, 200_000)
    x[:50_000] = 0.25  # many equal values
    held = []

    def read():
        for part in np.array_split(x, 20):
            held.append(len(part))
            yield part

    ranks = {0, 1000, 60_000, 199_999}
    at = order_statistics(read, len(x), ranks, max_held=1000)
    s = np.sort(x)
    assert at == {r: float(s[r]) for r in ranks}
    assert len(held) <= 20 * 5  # a pass per 16 bits at most, then one to collect


# ------------------------------------------------------------------------------------------ written without pandas

@pytest.mark.parametrize("columns, kinds", [
    (REQUEST_COLUMNS + QUALITY_COLUMNS + REUSE_COLUMNS, metrics._REQUEST_KINDS),
    (SEGMENT_COLUMNS, metrics._SEGMENT_KINDS),
])
def test_the_schema_and_its_pandas_metadata_are_those_from_pandas_gives(columns, kinds):
    """The files carry the pandas metadata pa.Schema.from_pandas writes for frames of these dtypes (so they read
    back as int64, float64 and string columns), made without importing pandas."""
    empty = pd.DataFrame({c: pd.Series([], dtype=metrics._DTYPES[kinds.get(c, "d")]) for c in columns})
    want = pa.Schema.from_pandas(empty, preserve_index=False)
    got = metrics._schema(columns, kinds)
    assert got.equals(want, check_metadata=True), (got, want)


def test_strings_are_built_from_buffers_with_nulls_and_any_text():
    values = ["completed", None, "", "häßlich ✓", "rejected", None]
    arr = metrics._strings(values)
    arr.validate(full=True)
    assert arr.type == pa.large_string() and arr.null_count == 2
    assert arr.to_pylist() == values
    assert metrics._strings([]).to_pylist() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["completed", None, "", "häßlich ✓", "main", "x" * 300]), max_size=60),
       st.integers(0, 3))
def test_strings_gathered_by_their_codes_are_arrows_own(values, repeat):
    """Each distinct string encoded once and the rows' bytes gathered by code give the array (offsets, bytes and
    validity) that pyarrow builds from the Python strings, for one distinct value or many, with nulls and without."""
    values = values * repeat
    arr = metrics._strings(values)
    arr.validate(full=True)
    want = pa.array(values, pa.large_string())
    assert arr.equals(want) and arr.to_pylist() == values
    assert arr.buffers()[1].to_pybytes() == want.buffers()[1].to_pybytes()
    assert arr.buffers()[2].to_pybytes()[: len(want.buffers()[2])] == want.buffers()[2].to_pybytes()


def test_columns_read_back_from_their_buffers_as_to_numpy_gives():
    ints = pa.chunked_array([pa.array([1, 2, 3], pa.int64()).slice(1), pa.array([7], pa.int64())])
    got = metrics._chunked_numpy(ints)
    assert got.tolist() == [2, 3, 7] and got.dtype == np.int64
    with_nulls = pa.chunked_array([pa.array([1.5, None, 2.5])])
    assert np.array_equal(metrics._chunked_numpy(with_nulls), [1.5, np.nan, 2.5], equal_nan=True)
    assert metrics._chunked_numpy(pa.chunked_array([], pa.float64())).dtype == np.float64
    # Strings as dictionaries whose chunks list their values differently: one code per value across chunks.
    status = pa.chunked_array([pa.array(["b", "a", "b"]).dictionary_encode(), pa.array(["a", "c"]).dictionary_encode()])
    coded = metrics._dictionary_codes(status)
    codes, values = metrics._codes(coded)
    assert [values[c] for c in codes.tolist()] == ["b", "a", "b", "a", "c"]
    assert metrics._equals(coded, "a").tolist() == [False, True, False, True, False]
    assert metrics._equals(coded, "z").tolist() == [False] * 5
    assert metrics._equals(np.array([3, 1, 3]), 3).tolist() == [True, False, True]
    # A table read from a file or a frame: strings coded, numbers as arrays.
    frame = metrics._frame_of_table(pa.table({"s": pa.array(["x", "y", "x"]), "n": pa.array([1.0, 2.0, 3.0])}))
    assert frame.num_rows == 3 and frame["n"].tolist() == [1.0, 2.0, 3.0]
    assert [frame["s"].values[c] for c in frame["s"].codes.tolist()] == ["x", "y", "x"]


def test_strings_held_in_memory_are_coded_in_order_of_first_appearance():
    frame = metrics.Frame(5, {"s": ["b", "a", "b", None, "c"], "n": np.arange(5)})
    coded = frame["s"]
    assert coded.values == ["b", "a", None, "c"] and coded.codes.tolist() == [0, 1, 0, 2, 3]
    assert frame["s"] is coded  # coded once
    assert metrics._equals(coded, "b").tolist() == [True, False, True, False, False]
