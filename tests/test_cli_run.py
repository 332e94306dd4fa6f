"""`simserve run` as a user meets it: the summary a planner reads (SLO attainment, offered vs achieved, tables
per query type and per pool, counts written out), --json and --csv for scripts and spreadsheets, and a results
folder that is checked before the run and replaced whole, atomically."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from simserve import cli
from simserve.report import count, number

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = "scenarios/quickstart.yaml"
MIXED = "scenarios/mixed-a100-h100.yaml"
SMALL = ["--set", "workload.num_requests=120"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simserve.cli", "run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


# ------------------------------------------------------------------------------------------ the summary


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed") / "out"
    proc = run(MIXED, "--out", str(out), *SMALL, "--set", "slo.time_to_answer_s=60", "--set", "slo.e2e_s=120")
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_summary_names_the_cluster_as_replicas_of_gpus(mixed_run):
    proc, _ = mixed_run
    assert "pool a100: 4 replicas x 1 A100-80GB each (llama-3.1-8b)" in proc.stdout
    assert "pool h100: 2 replicas x 1 H100-SXM each (llama-3.1-8b)" in proc.stdout


def test_summary_echoes_each_slo_with_its_attainment(mixed_run):
    proc, out = mixed_run
    s = json.loads((out / "summary.json").read_text())
    for label, key in (("TTFT", "ttft_s"), ("time to answer", "time_to_answer_s"), ("TPOT", "tpot_s"),
                       ("e2e", "e2e_s")):
        line = next(ln for ln in proc.stdout.splitlines() if ln.strip().startswith(label) and " s " in ln)
        assert f"{number(s[f'slo_{key}'])} s" in line and f"{s[f'slo_attainment_{key}']:.1%}" in line, line
    assert f"{s['goodput']:.1%}" in next(ln for ln in proc.stdout.splitlines() if "goodput" in ln)


def test_summary_shows_offered_against_achieved_and_gpu_busy(mixed_run):
    proc, out = mixed_run
    s = json.loads((out / "summary.json").read_text())
    text = proc.stdout
    assert re.search(rf"offered\s+{re.escape(number(s['offered_requests_per_s']))} req/s", text)
    assert re.search(rf"achieved\s+{re.escape(number(s['achieved_requests_per_s']))} req/s", text)
    assert re.search(rf"GPU busy\s+{s['gpu_busy_share']:.1%}", text)


def table_rows(text: str, title: str) -> dict[str, list[str]]:
    """The rows of the plain-text table whose title starts with `title`, by first cell."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith(title))
    rule = next(i for i in range(start, len(lines)) if set(lines[i].strip()) == {"-"})
    rows = {}
    for ln in lines[rule + 1:]:
        if not ln.strip():
            break
        cells = ln.split()
        rows[cells[0]] = cells[1:]
    return rows


def test_summary_has_a_table_per_query_type_and_per_pool(mixed_run):
    proc, out = mixed_run
    doc = json.loads((out / "summary.json").read_text())
    df = pd.read_parquet(out / "requests.parquet")
    by_type = table_rows(proc.stdout, "by query type")
    assert set(by_type) == set(df["query_type"]) == set(doc["by_query_type"])
    for qt, cells in by_type.items():
        row = doc["by_query_type"][qt]
        assert cells[:2] == [count(row["num_requests"]), count(row["num_completed"])]
        assert cells[2:] == [number(row[f"{m}_p{q}"]) for m in ("ttft_s", "time_to_answer_s", "e2e_s")
                             for q in (50, 99)]
    by_pool = table_rows(proc.stdout, "by pool")
    assert set(by_pool) == {"a100", "h100"} == set(doc["by_pool"])
    assert by_pool["a100"][2] == "4" and by_pool["h100"][2] == "2"  # GPUs
    assert doc["by_pool"]["a100"]["num_gpus"] == 4 and doc["by_pool"]["a100"]["gpu"] == "a100-80gb"
    assert sum(r["num_requests"] for r in doc["by_pool"].values()) == len(df)


def test_counts_have_thousands_separators_and_no_scientific_notation():
    assert count(19_280) == "19,280" and count(999_999_999) == "999,999,999" and count(1e12) == "1.00e+12"
    assert number(19_280.4) == "19,280" and number(12.34) == "12.3" and number(0.0123) == "0.0123"
    assert number(float("nan")) == "-"


def test_a_big_summary_prints_no_scientific_notation(tmp_path):
    """Before: 19,280 events printed as 1.928e+04."""
    proc = run(QUICKSTART, "--out", str(tmp_path / "out"), "--set", "workload.num_requests=4000")
    assert proc.returncode == 0, proc.stderr
    assert not re.search(r"\d[eE][+-]\d", proc.stdout), proc.stdout
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert f"{s['num_events']:,} events" in proc.stdout and s["num_events"] >= 10_000


# ------------------------------------------------------------------------------------------ --json, --csv


def test_json_prints_summary_json_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    proc = run(QUICKSTART, "--out", str(out), "--set", "workload.num_requests=40", "--json")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)  # the whole of stdout is one JSON document
    assert printed == json.loads((out / "summary.json").read_text())
    assert printed["num_requests"] == 40 and printed["partial"] is False
    assert set(printed["by_query_type"]) == {"math_word"} and set(printed["by_pool"]) == {"main"}
    assert "wrote" in proc.stderr and "Traceback" not in proc.stderr


def test_csv_also_writes_the_request_records(tmp_path):
    out = tmp_path / "out"
    proc = run(QUICKSTART, "--out", str(out), "--set", "workload.num_requests=40", "--csv")
    assert proc.returncode == 0, proc.stderr
    csv = pd.read_csv(out / "requests.csv")
    parquet = pd.read_parquet(out / "requests.parquet")
    assert list(csv.columns) == list(parquet.columns) and len(csv) == len(parquet) == 40
    pd.testing.assert_series_equal(csv["ttft_s"], parquet["ttft_s"], check_dtype=False)
    assert "requests.csv" in proc.stdout


# ------------------------------------------------------------------------------------------ the results folder


def assert_exit_2_before_running(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --out ") and needle in proc.stderr, proc.stderr


def test_out_under_a_file_is_refused_before_the_run(tmp_path):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    assert_exit_2_before_running(run(QUICKSTART, "--out", str(out)), "cannot write in")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_a_read_only_folder_is_refused_before_the_run(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert_exit_2_before_running(run(QUICKSTART, "--out", str(ro / "out")), "Permission denied")
    finally:
        ro.chmod(0o755)


def test_out_that_is_a_file_or_someone_elses_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    assert_exit_2_before_running(run(QUICKSTART, "--out", str(tmp_path / "file")), "not a folder")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert_exit_2_before_running(run(QUICKSTART, "--out", str(mine)), "notes.txt")
    assert (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mine"]  # no staging folder left


def test_a_previous_results_folder_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    first = run(QUICKSTART, "--out", str(out), "--set", "workload.num_requests=30", "--csv")
    assert first.returncode == 0, first.stderr
    assert (out / "requests.csv").exists()
    second = run(QUICKSTART, "--out", str(out), "--set", "workload.num_requests=20")
    assert second.returncode == 0, second.stderr
    assert "previous results there replaced" in second.stdout
    # The stale requests.csv went with the old folder: nothing of the first run is left.
    assert sorted(p.name for p in out.iterdir()) == ["replicas.parquet", "requests.parquet", "scenario.yaml",
                                                    "summary.json"]
    assert json.loads((out / "summary.json").read_text())["num_requests"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_run_that_fails_leaves_the_old_results_and_no_staging_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert cli.main(["run", QUICKSTART, "--out", str(out), "--set", "workload.num_requests=20"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    import simserve.sim

    def boom(self, *args, **kwargs):
        self.recorder.requests.path.parent.joinpath("half-written").write_text("x")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(simserve.sim.Simulation, "run", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["run", QUICKSTART, "--out", str(out), "--set", "workload.num_requests=30"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_commit_without_an_atomic_exchange_falls_back_to_two_renames(tmp_path, monkeypatch):
    from simserve import output

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    folder = output.ResultsFolder(out)
    (folder.staging / "summary.json").write_text("new")
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    folder.commit()
    assert (out / "summary.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
