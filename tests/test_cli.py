"""The command line, run as users run it (a subprocess): exit codes, one clean message for bad input, the JSON
Schema, and the files `run` writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from simserve.scenario import load_scenario

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = "scenarios/quickstart.yaml"

REQUEST_COLUMNS = [
    "request_id", "user_id", "query_type", "pool", "replica", "arrival_s", "first_token_s", "finish_s",
    "prompt_tokens", "reasoning_tokens", "answer_tokens", "num_preemptions", "status", "reason", "ttft_s", "tpot_s",
    "e2e_s",
]
SUMMARY_KEYS = [
    "num_requests", "num_completed", "num_rejected", "throughput_output_tokens_per_s", "requests_per_s",
    *(f"{m}_{s}" for m in ("ttft_s", "tpot_s", "e2e_s") for s in ("mean", "p50", "p90", "p99")),
    "kv_utilization_mean", "num_preemptions", "goodput", "gpu_hours", "cost_usd", "wall_time_s", "num_events",
]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simserve.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def write_bad(tmp_path: Path, kind: str) -> tuple[Path, str]:
    """A bad scenario file and the text its error must contain (the field, or what is wrong)."""
    text = (ROOT / QUICKSTART).read_text()
    if kind == "unknown-key":
        path, needle = tmp_path / "typo.yaml", "cluster.pools.0.replicaz"
        path.write_text(text.replace("replicas: 2", "replicaz: 2"))
    elif kind == "bad-yaml":
        path, needle = tmp_path / "broken.yaml", "not valid YAML at line"
        path.write_text(text.replace("model: llama-3.1-8b", "model: [llama-3.1-8b"))
    elif kind == "missing-file":
        path, needle = tmp_path / "absent.yaml", "cannot read scenario file"
    elif kind == "missing-data-file":
        path, needle = tmp_path / "nodata.yaml", "workload.mix.0.prompt_tokens.file"
        path.write_text(text.replace("{dist: lognormal, mean: 300, cv: 0.5}", "{dist: empirical, file: gone.csv}"))
    else:
        raise AssertionError(kind)
    return path, needle


def assert_clean_error(proc: subprocess.CompletedProcess[str], path: Path, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ")
    assert proc.stderr.count("error: ") == 1
    assert str(path) in proc.stderr
    assert needle in proc.stderr


@pytest.mark.parametrize("kind", ["unknown-key", "bad-yaml", "missing-file", "missing-data-file"])
def test_check_bad_scenario(tmp_path, kind):
    path, needle = write_bad(tmp_path, kind)
    assert_clean_error(cli("check", str(path)), path, needle)


@pytest.mark.parametrize("kind", ["unknown-key", "bad-yaml", "missing-file"])
def test_run_bad_scenario(tmp_path, kind):
    path, needle = write_bad(tmp_path, kind)
    out = tmp_path / "out"
    assert_clean_error(cli("run", str(path), "--out", str(out)), path, needle)
    assert not out.exists()


def test_check_good_scenario_and_bad_override():
    proc = cli("check", QUICKSTART)
    assert proc.returncode == 0, proc.stderr
    assert "ok (quickstart)" in proc.stdout
    bad = cli("check", QUICKSTART, "--set", "cluster.pools.7.replicas=1")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: --set cluster.pools.7.replicas")


def test_check_binary_file(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\x00\n")
    proc = cli("check", str(path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr


def test_schema():
    proc = cli("schema")
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert {"cluster", "workload"} <= set(schema["properties"])
    assert set(schema["required"]) >= {"cluster", "workload"}
    assert schema.get("additionalProperties") is False


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "out"
    proc = cli("run", QUICKSTART, "--out", str(out), "--set", "workload.num_requests=200")
    return proc, out


def test_run_quickstart_summary(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout.startswith("simserve: quickstart  (seed 1)")
    assert "200 arrived" in proc.stdout
    for word in ("TTFT", "TPOT", "time to answer", "e2e", "output tokens/s", "cost USD", "requests.parquet"):
        assert word in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["replicas.parquet", "requests.parquet", "scenario.yaml",
                                                    "summary.json"]


def test_run_quickstart_requests(quick_run):
    _, out = quick_run
    df = pd.read_parquet(out / "requests.parquet")
    assert set(REQUEST_COLUMNS) <= set(df.columns), set(REQUEST_COLUMNS) - set(df.columns)
    assert len(df) == 200
    assert sorted(df["request_id"]) == list(range(200))
    assert set(df["query_type"]) == {"math_word"}
    assert set(df["pool"]) == {"main"} and set(df["replica"]) <= {0, 1}
    done = df[df["status"] == "completed"]
    assert len(done) > 0
    assert (done["first_token_s"] >= done["arrival_s"]).all()
    assert (done["finish_s"] >= done["first_token_s"]).all()
    assert (done["e2e_s"] - (done["finish_s"] - done["arrival_s"])).abs().max() < 1e-9
    assert (df["answer_tokens"] == 150).all() and (df["prompt_tokens"] >= 1).all()


def test_run_quickstart_summary_json(quick_run):
    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    assert not missing
    df = pd.read_parquet(out / "requests.parquet")
    done = df[df["status"] == "completed"]
    assert summary["num_requests"] == 200 == len(df)
    assert summary["num_completed"] == len(done)
    assert summary["num_rejected"] == int((df["status"] == "rejected").sum())
    assert summary["ttft_s_mean"] == pytest.approx(done["ttft_s"].mean())
    assert summary["e2e_s_p50"] == pytest.approx(done["e2e_s"].median())
    assert summary["ttft_s_p50"] <= summary["ttft_s_p90"] <= summary["ttft_s_p99"]
    assert summary["num_preemptions"] == int(df["num_preemptions"].sum())
    assert 0 <= summary["goodput"] <= 1 and 0 <= summary["kv_utilization_mean"] <= 1
    assert summary["gpu_hours"] > 0 and summary["cost_usd"] > 0 and summary["num_events"] >= 200
    assert summary["throughput_output_tokens_per_s"] > 0 and summary["requests_per_s"] > 0


def test_run_quickstart_replicas_and_scenario(quick_run):
    _, out = quick_run
    replicas = pd.read_parquet(out / "replicas.parquet")
    assert len(replicas) > 0 and {"pool", "replica"} <= set(replicas.columns)
    assert set(replicas["replica"]) == {0, 1}
    again = load_scenario(out / "scenario.yaml")
    expected = load_scenario(ROOT / QUICKSTART, ["workload.num_requests=200"])
    assert again.model_dump() == expected.model_dump()


def test_run_seed_and_exact_steps(tmp_path):
    out = tmp_path / "out"
    proc = cli("run", QUICKSTART, "--out", str(out), "--set", "workload.num_requests=40", "--seed", "5",
               "--exact-steps")
    assert proc.returncode == 0, proc.stderr
    assert "(seed 5)" in proc.stdout
    written = yaml.safe_load((out / "scenario.yaml").read_text())
    assert written["seed"] == 5
    assert written["engine"]["exact_steps"] is True
    assert written["workload"]["num_requests"] == 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_requests"] == 40
    assert summary["exact_steps"] is True


def test_run_scenario_yaml_with_relative_data_file_loads_back(tmp_path):
    (tmp_path / "lengths.csv").write_text("tokens,weight\n10,1\n20,3\n")
    src = tmp_path / "emp.yaml"
    src.write_text((ROOT / QUICKSTART).read_text().replace("{dist: lognormal, mean: 300, cv: 0.5}",
                                                            "{dist: empirical, file: lengths.csv}"))
    out = tmp_path / "results"
    proc = cli("run", str(src), "--out", str(out), "--set", "workload.num_requests=20")
    assert proc.returncode == 0, proc.stderr
    assert set(pd.read_parquet(out / "requests.parquet")["prompt_tokens"]) <= {10, 20}
    load_scenario(out / "scenario.yaml")


def test_only_the_command_freezes_the_collector_as_it_exits():
    """`simserve` (the console script: simserve.cli:entry) moves what is alive to the collector's permanent
    generation as the process ends, so the interpreter's last collections do not traverse the import-time heap;
    main() called from Python must leave the collector alone (a library caller's process goes on)."""
    import gc
    import tomllib

    from simserve import cli

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["simserve"] == "simserve.cli:entry"
    before = gc.get_freeze_count()
    assert cli.main(["check", str(ROOT / QUICKSTART)]) == 0
    assert gc.get_freeze_count() == before
    code = ("import gc, sys\nfrom simserve import cli\nsys.argv = ['simserve', 'check', %r]\n"
            "try:\n    cli.entry()\nexcept SystemExit as e:\n    print(e.code, gc.get_freeze_count() > 0)\n")
    for scenario, status in ((QUICKSTART, "0"), ("no-such.yaml", "2")):
        proc = subprocess.run([sys.executable, "-c", code % scenario], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert proc.stdout.split()[-2:] == [status, "True"], (proc.stdout, proc.stderr)
