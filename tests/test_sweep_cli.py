"""`simserve sweep`, `compare` and `plan` as users run them (subprocesses): the files, progress on a non-terminal
stream, the cache across invocations, charts that open offline, one clean line for bad input, and the Dask backend
giving the same bytes as local processes (skipped only when dask.distributed is not installed: it is in the [test]
and [scale] extras), Ctrl-C keeping the finished runs. About 50 s on two cores."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import tiny

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simserve.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    """Two replicas, one request at a time each, 0.5 s of service, Poisson arrivals at 3/s: a small M/D/2."""
    data = tiny(pool={"max_num_seqs": 1, "replicas": 2}, perf={"kind": "linear", "step_overhead_s": 0.01})
    data["workload"] = {
        "num_requests": 150, "arrival": {"process": "poisson", "rate_per_s": 3.0},
        "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 1},
                 "output_tokens": {"dist": "constant", "value": 50},
                 "reasoning_share": {"dist": "constant", "value": 0.0}}]}
    path = tmp_path / "md2.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sweep_writes_tables_and_charts_and_reuses_its_cache(scenario_file, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", str(scenario_file), "--grid", "cluster.pools.0.replicas=2,3", "--seeds", "2", "--out", str(out),
            "--workers", "2"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    # Progress on a non-terminal stream: plain lines (the start, periodic, the end), no bar.
    assert "simserve sweep: 4 runs on 2 local processes" in first.stderr
    assert "simserve sweep: 4/4 runs, 600 requests and" in first.stderr
    assert "\x1b[" not in first.stderr
    assert "4 runs made, 0 from the cache" in first.stdout
    runs = pd.read_parquet(out / "runs.parquet")
    assert runs[["cluster.pools.0.replicas", "seed"]].values.tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]
    summary = pd.read_parquet(out / "summary.parquet")
    assert set(summary.columns) >= {"cluster.pools.0.replicas", "figure", "num_seeds", "mean", "ci_low", "ci_high"}
    record = json.loads((out / "sweep.json").read_text())
    assert record["runs_made"] == 4 and record["seeds"] == [1, 2]  # from the scenario's seed up
    html = (out / "chart-e2e_s_p99.html").read_text()
    assert "cdn.jsdelivr" not in html and "vega-lite" in html.lower()  # the libraries inlined: opens offline
    again = cli(*args[:3], "cluster.pools.0.replicas=2,3,4", *args[4:])
    assert again.returncode == 0, again.stderr
    assert "2 runs made, 4 from the cache" in again.stdout
    assert "(4 from the cache)" in again.stderr


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask.distributed is in the [scale] extra")
def test_the_dask_backend_gives_the_same_bytes_as_local_processes(scenario_file, tmp_path):
    grid = ["--grid", "cluster.pools.0.replicas=2,3", "--grid", "router=round_robin,least_outstanding",
            "--seeds", "2", "--workers", "2", "--no-cache"]
    local = cli("sweep", str(scenario_file), *grid, "--out", str(tmp_path / "local"))
    dask = cli("sweep", str(scenario_file), *grid, "--backend", "dask", "--out", str(tmp_path / "dask"))
    assert local.returncode == 0, local.stderr
    assert dask.returncode == 0, dask.stderr
    assert "a Dask LocalCluster of 2 workers" in dask.stderr
    for name in ("runs.parquet", "summary.parquet"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "dask" / name).read_bytes(), name


def test_compare_and_plan(scenario_file, tmp_path):
    one = ["--workers", "1"]  # in this process: no worker start-up (the pools are tested above)
    same = cli("compare", str(scenario_file), str(scenario_file), "--seeds", "3", "--out", str(tmp_path / "c"), *one)
    assert same.returncode == 0, same.stderr
    table = pd.read_parquet(tmp_path / "c" / "compare.parquet")
    assert not table["significant"].any()
    diff = cli("compare", str(scenario_file), "--set-b", "cluster.pools.0.replicas=4", "--seeds", "3",
               "--out", str(tmp_path / "d"), "--metric", "e2e_s_p99", *one)
    assert diff.returncode == 0, diff.stderr
    assert pd.read_parquet(tmp_path / "d" / "compare.parquet").set_index("figure").loc["e2e_s_p99", "significant"]
    line = next(x for x in diff.stdout.splitlines() if "e2e_s_p99" in x)
    assert line.rstrip(" │|").endswith("yes")
    plan = cli("plan", str(scenario_file), "--slo", "e2e_s_mean<=1", "--vary", "cluster.pools.0.replicas=1..4",
               "--vary", "router=round_robin,least_outstanding", "--seeds", "2", "--out", str(tmp_path / "p"), *one)
    assert plan.returncode == 0, plan.stderr
    assert "Cheapest: router=" in plan.stdout and "Pareto front" in plan.stdout
    answers = pd.read_parquet(tmp_path / "p" / "answers.parquet")
    assert answers["meets"].all() and len(answers) == 2
    assert (tmp_path / "p" / "pareto.html").is_file()
    never = cli("plan", str(scenario_file), "--slo", "e2e_s_mean<=0.1", "--vary", "cluster.pools.0.replicas=1..2",
                "--seeds", "2", "--out", str(tmp_path / "q"), *one)
    assert never.returncode == 1, never.stderr
    assert "No combination meets every SLO" in never.stdout and "even at 2, the top of the range" in never.stdout


@pytest.mark.parametrize("args, needle", [
    (["sweep", "{s}", "--grid", "cluster.pools.0.replicas"], "expected dotted.key=v1,v2"),
    (["sweep", "{s}", "--grid", "cluster.pools.0.replicaz=1,2"], "cluster.pools.0.replicaz: unknown key"),
    (["sweep", "{s}", "--zip", "a=1,2", "--zip", "b=1"], "equally many values"),
    (["sweep", "{s}", "--seeds", "0"], "at least one seed"),
    (["sweep", "{s}", "--address", "localhost:8786", "--workers", "2"], "--address is for --backend dask"),
    (["plan", "{s}", "--slo", "ttft<2", "--vary", "cluster.pools.0.replicas=1..4"], "expected FIGURE<=NUMBER"),
    (["plan", "{s}", "--slo", "ttft_s_p99<=2", "--vary", "router=a,b"], "give the knob to search"),
    (["plan", "{s}", "--slo", "ttft_p99<=2", "--vary", "cluster.pools.0.replicas=1..2", "--no-cache"],
     "did you mean ttft_s_p99"),
    (["compare", "{s}"], "give a second scenario"),
    (["compare", "{s}", "missing.yaml"], "cannot read scenario file"),
])
def test_bad_input_is_one_line_and_exit_2(scenario_file, tmp_path, args, needle):
    proc = cli(*[a.format(s=scenario_file) for a in args], "--out", str(tmp_path / "o"), "--workers", "1",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("error: ") or "error: " in proc.stderr
    assert needle in proc.stderr


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a subprocess")
def test_an_interrupted_sweep_keeps_what_finished_and_the_rerun_runs_the_rest(tmp_path):
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "simserve.cli", "sweep", "scenarios/quickstart.yaml", "--set",
            "workload.num_requests=1000", "--grid", "cluster.pools.0.replicas=2,3,4,5", "--seeds", "2",
            "--workers", "1", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not list((out / "cache").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    kept = len(list((out / "cache").glob("*.json")))
    assert 1 <= kept < 8
    assert f"interrupted; runs finished now and kept: {kept}" in err and "Traceback" not in err
    again = cli(*args[3:])
    assert again.returncode == 0, again.stderr
    assert f"{8 - kept} runs made, {kept} from the cache" in again.stdout
