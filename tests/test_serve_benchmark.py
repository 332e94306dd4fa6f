"""The end-to-end serving benchmark (calibration/serve_benchmark.py), run on the CPU with the tiny model: it drives
transformers' continuous batching under a Poisson workload and writes an experiment folder that `simserve validate`
replays from the folder alone.

CI sets SIMSERVE_REQUIRE_TORCH=1, which turns a missing torch or transformers into a failure instead of a skip."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

if os.environ.get("SIMSERVE_REQUIRE_TORCH") == "1":
    import torch  # noqa: F401
    import transformers  # noqa: F401
else:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = ROOT / "calibration" / "serve_benchmark.py"
TINY_ARGS = ["--model", "tiny", "--device", "cpu", "--num-requests", "20", "--rate-per-s", "20", "--prompt-tokens",
             "32", "--output-tokens", "16", "--seed", "3"]
REQUIRED = ["request_id", "arrival_s", "input_tokens", "output_tokens", "ttft_s", "tpot_s", "e2e_s"]


def load_benchmark() -> ModuleType:
    """calibration/serve_benchmark.py imported as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("simserve_serve_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny CPU benchmark, run once as a script."""
    out = tmp_path_factory.mktemp("serve") / "tiny-cpu"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARK), *TINY_ARGS, "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "submitted 20/20" in done.stderr  # progress lines
    assert "ttft_s" in done.stdout  # the closing summary
    return out


def test_requests_are_exact_replay_inputs(experiment_dir: Path) -> None:
    header, rows = read_rows(experiment_dir / "requests.csv")
    assert set(REQUIRED) <= set(header)
    assert len(rows) == 20
    assert [int(r["request_id"]) for r in rows] == list(range(20))
    arrivals = [float(r["arrival_s"]) for r in rows]
    assert arrivals[0] >= 0 and all(b > a for a, b in zip(arrivals, arrivals[1:], strict=False))
    # The output lengths drawn for the run (same seed and distribution) are the lengths generated.
    meta = json.loads((experiment_dir / "experiment.json").read_text())
    dist = meta["workload"]["distributions"]["output_tokens"]
    assert dist["distribution"].startswith("lognormal") and dist["mean"] == 16
    # The workload the benchmark drew (same seed and distributions) is what ran: prompts and pinned outputs.
    bench = load_benchmark()
    prompt = bench.length_dist("lognormal", 32, 0.5, None, 2048)
    output = bench.length_dist("lognormal", 16, 0.5, None, 2048)
    drawn = bench.make_workload(argparse.Namespace(seed=3, rate_per_s=20, num_requests=20), 256, prompt, output)
    assert [int(r["input_tokens"]) for r in rows] == [len(p) for p in drawn.prompts]
    assert [int(r["output_tokens"]) for r in rows] == drawn.outputs
    assert [float(r["scheduled_arrival_s"]) for r in rows] == pytest.approx(drawn.scheduled_s.tolist(), abs=1e-6)
    for row in rows:
        ttft, e2e = float(row["ttft_s"]), float(row["e2e_s"])
        assert 0 < ttft <= e2e, row
        assert row["time_source"] == "engine", row
        queue = float(row["queue_s"])
        assert 0 <= queue <= ttft, row
        out = int(row["output_tokens"])
        if out == 1:
            assert row["tpot_s"] == ""
        else:
            assert math.isclose(float(row["tpot_s"]), (e2e - ttft) / (out - 1), rel_tol=1e-3, abs_tol=2e-6), row


def test_experiment_json_rebuilds_the_server(experiment_dir: Path) -> None:
    meta = json.loads((experiment_dir / "experiment.json").read_text())
    eng = meta["engine"]
    assert eng["name"] == "transformers continuous batching" and eng["tensor_parallel_size"] == 1
    assert meta["source"]["tool"] == "simserve calibration/serve_benchmark.py"
    assert eng["block_size"] > 0 and eng["max_num_seqs"] > 0 and eng["max_num_batched_tokens"] > 0
    assert eng["kv_cache_capacity_tokens"] == eng["kv_cache_num_blocks"] * eng["block_size"]
    arch = meta["model_architecture"]
    # The tiny Llama of calibration/profile_gpu.py: 2 layers, hidden 64, 4 x 16 heads, 2 KV heads, FFN 128, vocab 256.
    assert (arch["num_layers"], arch["hidden_size"], arch["num_attention_heads"], arch["num_kv_heads"],
            arch["head_dim"], arch["intermediate_size"], arch["vocab_size"]) == (2, 64, 4, 2, 16, 128, 256)
    assert arch["num_params"] > 0 and arch["bytes_per_param"] == 4
    sheet = meta["gpu_datasheet"]
    assert sheet["memory_bytes"] > 0 and sheet["hbm_bandwidth_bytes_per_s"] > 0 and sheet["note"]
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(meta["measured_summary"][metric]) >= {"mean", "p50", "p90", "p99"}


def test_simserve_validate_replays_it(experiment_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    done = subprocess.run([sys.executable, "-m", "simserve.cli", "validate", str(experiment_dir), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "validation.json").read_text())
    assert report["num_requests_real"] == 20 and report["num_completed_sim"] == 20
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        assert report[f"{metric}_mean_real"] > 0
        assert report[f"{metric}_mean_sim"] > 0
