"""The GPU profiling harness (calibration/profile_gpu.py), run on the CPU with the tiny model and the quick grid: the
profile folder it writes follows simserve's op-level schema, and an out-of-memory error at one point becomes an
``oom`` row while the run goes on.

CI sets SIMSERVE_REQUIRE_TORCH=1, which turns a missing torch or transformers into a failure instead of a skip."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

if os.environ.get("SIMSERVE_REQUIRE_TORCH") == "1":
    import torch
    import transformers  # noqa: F401
else:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "calibration" / "profile_gpu.py"

COLUMNS = {
    "gemm.csv": ["m", "n", "k", "latency_s", "status"],
    "context_attention.csv": ["batch_size", "new_tokens", "cached_tokens", "num_heads", "num_kv_heads", "head_dim",
                              "latency_s", "status"],
    "generation_attention.csv": ["batch_size", "kv_tokens", "num_heads", "num_kv_heads", "head_dim", "latency_s",
                                 "status"],
    "elementwise.csv": ["op", "num_tokens", "width", "latency_s", "status"],
    "steps.csv": ["decode_context_tokens", "prefill_new_tokens", "prefill_cached_tokens", "latency_s", "status"],
}
TINY_ARGS = ["--model", "tiny", "--device", "cpu", "--quick"]


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV table."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op torch thread while a test profiles in-process (as OMP_NUM_THREADS=1 does for the script)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_harness() -> ModuleType:
    """calibration/profile_gpu.py imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("simserve_profile_harness", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny quick profile, written once by the harness run as a script."""
    out = tmp_path_factory.mktemp("harness") / "p"
    # One intra-op thread: the tiny model's ops are microseconds, and waking idle threads only adds noise.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(HARNESS), *TINY_ARGS, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "points" in done.stderr  # progress lines
    return out


def test_tables_follow_the_schema(profile_dir: Path) -> None:
    for name, columns in COLUMNS.items():
        header, rows = read_rows(profile_dir / name)
        assert header == columns, name
        assert rows, name
        for row in rows:
            assert row["status"] == "ok", (name, row)
            latency = float(row["latency_s"])
            assert math.isfinite(latency) and latency > 0, (name, row)


def test_tables_cover_the_model(profile_dir: Path) -> None:
    _, gemm = read_rows(profile_dir / "gemm.csv")
    shapes = {(int(r["n"]), int(r["k"])) for r in gemm}
    # q/o, k/v, gate/up, down and lm_head of the tiny Llama (hidden 64, 4 x 16 heads, 2 KV heads, FFN 128).
    assert shapes == {(64, 64), (32, 64), (128, 64), (64, 128), (256, 64)}
    assert {int(r["m"]) for r in gemm} == {1, 8, 64, 256}
    for table in ("context_attention.csv", "generation_attention.csv"):
        _, rows = read_rows(profile_dir / table)
        assert {(r["num_heads"], r["num_kv_heads"], r["head_dim"]) for r in rows} == {("4", "2", "16")}
    _, rows = read_rows(profile_dir / "context_attention.csv")
    assert {r["cached_tokens"] for r in rows} > {"0"}
    _, rows = read_rows(profile_dir / "elementwise.csv")
    assert {(r["op"], r["width"]) for r in rows} == {("rmsnorm", "64"), ("silu_mul", "128"), ("add", "64")}


def test_steps_have_prefill_decode_and_mixed_rows(profile_dir: Path) -> None:
    _, rows = read_rows(profile_dir / "steps.csv")
    prefill = [r for r in rows if r["prefill_new_tokens"]]
    decode = [r for r in rows if r["decode_context_tokens"]]
    assert prefill and decode and len(prefill) + len(decode) == len(rows)
    assert all(not r["decode_context_tokens"] and r["prefill_cached_tokens"] for r in prefill)
    assert any(int(r["prefill_cached_tokens"]) > 0 for r in prefill)
    contexts = [[int(x) for x in r["decode_context_tokens"].split()] for r in decode]
    assert any(len(c) > 1 and len(set(c)) == 1 for c in contexts)  # uniform batch
    assert any(len(set(c)) > 1 for c in contexts)  # mixed lengths in one batch


def test_metadata(profile_dir: Path) -> None:
    meta = yaml.safe_load((profile_dir / "metadata.yaml").read_text())
    assert meta["schema"] == "simserve-profile/1"
    assert meta["complete"] is True
    assert meta["source"]["kind"] == "harness" and "--model tiny" in meta["source"]["command"]
    assert meta["dtype"] == "float32"
    assert meta["attention_backend"].startswith("torch sdpa")
    for key in ("date", "gpu", "software", "model", "scaled_from", "repeats", "warmup", "notes"):
        assert key in meta, key
    gpu = meta["gpu"]
    assert gpu["preset"] is None and gpu["memory_bytes"] > 0
    for key in ("name", "hbm_bandwidth_bytes_per_s", "peak_flops_per_s", "interconnect_bandwidth_bytes_per_s",
                "datasheet_note"):
        assert key in gpu, key
    assert set(meta["software"]) == {"torch", "transformers", "cuda", "driver", "python"}
    model = meta["model"]
    assert (model["num_layers"], model["hidden_size"], model["num_attention_heads"], model["num_kv_heads"],
            model["head_dim"], model["intermediate_size"], model["vocab_size"], model["bytes_per_param"]) == (
        2, 64, 4, 2, 16, 128, 256, 4)
    assert model["num_params"] > 0
    assert meta["scaled_from"] == {"num_layers": 2, "tensor_parallel": 1}


def test_simserve_loads_the_profile(profile_dir: Path) -> None:
    """simserve reads back every table the harness wrote, row for row and value for value, and its metadata."""
    from simserve.calibration import SCHEMA, load_profile

    profile = load_profile(profile_dir)
    assert set(profile.tables) == {name.removesuffix(".csv") for name in COLUMNS}
    assert profile.skipped_rows == dict.fromkeys(profile.tables, 0)  # no oom rows on the CPU
    for name in profile.tables:
        _, rows = read_rows(profile_dir / f"{name}.csv")
        table = profile[name]
        assert len(table) == len(rows), name
        assert table["latency_s"].tolist() == [float(r["latency_s"]) for r in rows], name
        for col in COLUMNS[f"{name}.csv"][:-2]:  # the shape columns, in the file's order
            if col in ("op", *COLUMNS["steps.csv"][:3]):  # names and per-sequence lists stay text
                assert table[col].tolist() == [r[col] for r in rows], (name, col)
            else:
                assert table[col].tolist() == [float(r[col]) for r in rows], (name, col)
    meta = yaml.safe_load((profile_dir / "metadata.yaml").read_text())
    assert profile.metadata.schema_ == SCHEMA and profile.metadata.source["kind"] == "harness"
    assert profile.metadata.gpu.memory_bytes == meta["gpu"]["memory_bytes"] > 0
    assert profile.metadata.model == meta["model"] and profile.metadata.dtype == "float32"


def test_the_profile_fits_and_the_fit_drives_a_scenario(profile_dir: Path, tmp_path: Path) -> None:
    """Harness -> fit -> calibrated step model of the profiled (tiny) model: the one path of issue 6."""
    import numpy as np

    from simserve.calibration import fit_profile, load_profile
    from simserve.hardware import model_from_architecture
    from simserve.perf import Batch, CalibratedPerf

    profile = load_profile(profile_dir)
    fit = fit_profile(profile)
    assert {"gemm", "context_attention", "generation_attention", "steps"} <= set(fit.tables)
    assert fit.step_overhead_s >= 0 and fit.tables["steps"].stats["composed"]["n"] == len(profile["steps"])
    assert fit.source["step_overhead"].startswith("steps table")
    path = fit.save(tmp_path / "tiny.yaml")
    model = model_from_architecture(profile.metadata.model or {})
    perf = CalibratedPerf(fit, model, 1, fit.step_overhead_s)
    empty = np.zeros(0, np.int64)
    assert perf.step_time_s(Batch(np.array([64, 128]), empty, empty)) > 0
    out = subprocess.run([sys.executable, "-m", "simserve.cli", "calibrate", "fit", str(profile_dir), "--out",
                          str(tmp_path / "cli.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert path.exists() and (tmp_path / "cli.yaml").exists()


def test_layer_slicing_and_tensor_parallel_shrink_the_model() -> None:
    harness = load_harness()
    name, family, kwargs = harness.load_config("llama-3.1-70b", None)
    spec = harness.shard_config(name, family, kwargs, layers=8, tp=4)
    assert (spec.num_heads, spec.num_kv_heads, spec.head_dim) == (16, 2, 128)
    assert spec.config["intermediate_size"] == 28672 // 4
    assert spec.config["num_hidden_layers"] == 8 and spec.full_layers == 80


def test_out_of_memory_point_is_recorded_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             one_thread: None) -> None:
    harness = load_harness()
    real = harness.measure_point
    calls = {"n": 0}

    def flaky(setup: Any, timing: Any) -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")
        if calls["n"] == 3:
            raise RuntimeError("CUDA error: out of memory")
        return real(setup, timing)

    monkeypatch.setattr(harness, "measure_point", flaky)
    out = tmp_path / "p"
    args = harness.parse_args([*TINY_ARGS, "--repeats", "1", "--warmup", "0", "--out", str(out)])
    harness.profile(args)
    _, gemm = read_rows(out / "gemm.csv")
    assert [r["status"] for r in gemm[:4]] == ["ok", "oom", "oom", "ok"]
    assert gemm[1]["latency_s"] == "" and gemm[2]["latency_s"] == ""
    assert all(r["status"] == "ok" and float(r["latency_s"]) > 0 for r in gemm[3:])
    _, steps = read_rows(out / "steps.csv")
    assert steps and all(r["status"] == "ok" for r in steps)
    assert yaml.safe_load((out / "metadata.yaml").read_text())["complete"] is True


def test_other_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    harness = load_harness()

    def broken(setup: Any, timing: Any) -> float:
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(harness, "measure_point", broken)
    runner = harness.Runner(harness.Timing(torch.device("cpu"), 0, 1), harness.Progress(1, None))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        runner.point({"m": 1}, lambda: None)


def test_max_minutes_stops_gracefully(tmp_path: Path) -> None:
    harness = load_harness()
    out = tmp_path / "p"
    args: argparse.Namespace = harness.parse_args([*TINY_ARGS, "--max-minutes", "0", "--out", str(out)])
    harness.profile(args)
    for name in COLUMNS:
        header, rows = read_rows(out / name)
        assert header == COLUMNS[name] and rows == []
    meta = yaml.safe_load((out / "metadata.yaml").read_text())
    assert meta["complete"] is False and "max-minutes" in meta["notes"]
