"""Long runs from the command line: progress lines when stderr is not a terminal, Ctrl-C (SIGINT sent to a
real subprocess: exit 130, one line saying where the run stopped, no traceback, the old results untouched or,
with --partial, what finished written and marked partial), a second Ctrl-C, and the size guard before a run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from helpers import scenario, tiny

from simserve import Simulation, load_scenario
from simserve.engine import Hooks
from simserve.progress import (
    CONFIRM_ABOVE_S,
    REQUESTS_PER_WALL_S,
    RunMonitor,
    Snapshot,
    duration,
    estimate,
    expected_requests,
)

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = "scenarios/quickstart.yaml"
LONG = ["--set", "workload.num_requests=5000000"]  # about 14 min: stopped long before its end
PROGRESS = "requests finished"

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGINT to a subprocess")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simserve.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "simserve.cli", "run", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt(proc: subprocess.Popen[str], times: int = 1) -> tuple[int, str, str]:
    """Wait for the first progress line on stderr and send SIGINT; with times=2, wait for the line saying the
    run is stopping and send another. Returns the exit code, stdout and stderr."""
    watchdog = threading.Timer(90, proc.kill)
    watchdog.start()
    try:
        seen = []
        assert proc.stderr is not None
        waiting_for = [PROGRESS, "stopping at the next request"][:times]
        for line in proc.stderr:
            seen.append(line)
            if waiting_for and waiting_for[0] in line:
                proc.send_signal(signal.SIGINT)
                waiting_for.pop(0)
                if not waiting_for:
                    break
        out, err = proc.communicate()
    finally:
        watchdog.cancel()
    return proc.returncode, out, "".join(seen) + err


@pytest.fixture
def old_results(tmp_path):
    """A results folder from an earlier run."""
    out = tmp_path / "out"
    proc = cli("run", QUICKSTART, "--out", str(out), "--set", "workload.num_requests=20")
    assert proc.returncode == 0, proc.stderr
    return out, {p.name: p.read_bytes() for p in out.iterdir()}


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_ctrl_c_stops_cleanly_and_leaves_the_old_results(old_results):
    out, before = old_results
    rc, stdout, stderr = interrupt(start(QUICKSTART, "--out", str(out), *LONG))
    assert rc == 130, stderr
    assert "Traceback" not in stderr and stdout == ""
    line = last_line(stderr)
    assert line.startswith("simserve: interrupted at ") and " s simulated, " in line and "requests completed" in line
    assert line.endswith("nothing written (--partial keeps what finished)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old folder, untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no staging folder left


def test_ctrl_c_with_partial_writes_what_finished_marked_partial(old_results):
    out, _ = old_results
    rc, stdout, stderr = interrupt(start(QUICKSTART, "--out", str(out), *LONG, "--partial"))
    assert rc == 130, stderr
    assert "Traceback" not in stderr
    assert last_line(stderr).startswith("simserve: interrupted at ")
    assert 'summary.json: "partial": true' in last_line(stderr)
    assert "PARTIAL: stopped by Ctrl-C" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True and summary["stopped_at_horizon"] is False
    df = pd.read_parquet(out / "requests.parquet")
    assert len(df) == summary["num_requests"] and summary["num_completed"] > 100
    assert set(df["status"]) <= {"completed", "unfinished", "rejected"}
    assert (df["status"] == "unfinished").sum() == summary["num_unfinished"]
    assert df.loc[df["status"] == "unfinished", "reason"].str.contains("when the run was stopped").all()
    assert summary["makespan_s"] >= df["finish_s"].max()
    assert sorted(p.name for p in out.iterdir()) == ["replicas.parquet", "requests.parquet", "scenario.yaml",
                                                    "summary.json"]


def test_a_second_ctrl_c_stops_at_once(old_results):
    """One request of 3,000,000 tokens stepped one step at a time: no arrival or completion, the points where a
    first Ctrl-C can stop the run whole, for half a minute or more (600,000 tokens, about 7 s here, once finished
    before the second Ctrl-C was sent on a loaded machine); the second Ctrl-C does not wait. Eight GPUs per
    replica: its KV (200,000 blocks, 420 GB) does not fit the memory fewer H100s leave."""
    out, before = old_results
    one_long_request = ["--exact-steps", "--set", "workload.num_requests=1",
                        "--set", "workload.mix.0.reasoning_tokens={dist: constant, value: 3000000}",
                        "--set", "cluster.pools.0.max_model_len_tokens=3100000",
                        "--set", "cluster.pools.0.tensor_parallel=8", "--set", "cluster.pools.0.num_kv_blocks=200000",
                        "--set", "engine.horizon_s=1e7"]
    rc, stdout, stderr = interrupt(start(QUICKSTART, "--out", str(out), "--partial", *one_long_request), times=2)
    assert rc == 130, stderr
    assert "Traceback" not in stderr, stderr
    assert stdout == "", f"the run was not stopped at once; stderr:\n{stderr}"
    assert "; stopping at the next request (Ctrl-C again: at once)" in stderr
    line = last_line(stderr)
    assert line.startswith("simserve: stopped at once at ") and " s simulated, 0 requests finished" in line
    assert line.endswith("nothing written")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_progress_lines_go_to_stderr_when_it_is_not_a_terminal(tmp_path):
    # 100,000 requests: about 8 s here, so that a machine three times as fast still runs past the 2 s before
    # progress shows (25,000 did not, once the quick start's runs got faster, nor 40,000 in issue 21's stage 21)
    proc = cli("run", QUICKSTART, "--out", str(tmp_path / "out"), "--set", "workload.num_requests=100000")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if PROGRESS in ln]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    if summary["wall_time_s"] < 2.5:
        pytest.skip("this machine ran it in under the 2 s before progress shows")
    assert lines, proc.stderr
    for ln in lines:
        assert ln.startswith("simserve: ") and " s simulated, " in ln and " of 100,000 requests finished, " in ln
        assert " events/s" in ln and "\x1b[" not in ln  # plain text: no terminal codes
    assert proc.stdout.startswith("simserve: quickstart")  # the summary alone on stdout


def test_a_short_run_shows_no_progress(tmp_path):
    proc = cli("run", QUICKSTART, "--out", str(tmp_path / "out"), "--set", "workload.num_requests=20")
    assert proc.returncode == 0 and proc.stderr == ""


# ------------------------------------------------------------------------------------------ size guard


def test_an_absurd_run_says_how_long_it_would_take_and_wants_yes(tmp_path):
    out = tmp_path / "out"
    proc = cli("run", QUICKSTART, "--out", str(out), "--set", "workload.num_requests=1000000000000")
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: scenarios/quickstart.yaml: about 1.00e+12 requests: roughly ")
    assert "years of wall time" in proc.stderr and "--yes" in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_estimates():
    sc = load_scenario(ROOT / QUICKSTART)
    assert expected_requests(sc) == 2000
    size = estimate(sc)
    assert size is not None and size.wall_s == pytest.approx(2000 / REQUESTS_PER_WALL_S)
    assert size.wall_s < CONFIRM_ABOVE_S
    timed = load_scenario(ROOT / QUICKSTART, ["workload.duration_s=100"])  # 2/s for 100 s: 200 of the 2,000
    assert expected_requests(timed) == pytest.approx(200)
    sessions = load_scenario(ROOT / QUICKSTART, ["workload.sessions={turns: {dist: constant, value: 3}, "
                                                 "think_time_s: {dist: constant, value: 5}}"])
    assert expected_requests(sessions) == 6000
    exact = estimate(load_scenario(ROOT / QUICKSTART, ["engine.exact_steps=true"]))
    assert exact is not None and exact.wall_s > 10 * size.wall_s
    trace = load_scenario(ROOT / "scenarios/mooncake-replay.yaml")
    assert expected_requests(trace) == trace.workload.num_requests  # None when a trace gives no count
    assert [duration(s) for s in (5, 600, 7200, 5 * 86400, 2e8)] == ["5 s", "10 min", "2.0 h", "5 days",
                                                                      "6 years"]


# ------------------------------------------------------------------------------------------ the monitor, in process


def test_the_monitor_stops_a_run_at_a_request_boundary_with_partial_results():
    class CtrlC(Hooks):  # presses Ctrl-C (as the signal handler does) when the 30th request completes
        def __init__(self, monitor: RunMonitor) -> None:
            self.monitor, self.n = monitor, 0

        def finished(self, req) -> None:
            self.n += 1
            if self.n == 30:
                self.monitor.stop_requested = True

    sc = scenario(tiny(workload={"num_requests": 200, "arrival": {"process": "poisson", "rate_per_s": 5.0},
                                 "mix": [{"query_type": "t", "prompt_tokens": {"dist": "constant", "value": 10},
                                          "reasoning_tokens": {"dist": "constant", "value": 50},
                                          "answer_tokens": {"dist": "constant", "value": 5}}]}))
    with open(os.devnull, "w") as devnull:
        monitor = RunMonitor(200, 1e9, stream=devnull)
        sim = Simulation(sc, hooks=[CtrlC(monitor), monitor])
        with monitor.watching(sim):
            res = sim.run()
    s = res.summary
    assert s["partial"] is True and not s["stopped_at_horizon"]
    # Stopped at the next request boundary: the 30th completion (and any others of the same step).
    assert 30 <= s["num_completed"] == monitor.ended <= 33
    assert s["num_requests"] == len(res.requests) < 200  # requests not yet arrived are not drained
    assert s["num_unfinished"] == s["num_requests"] - s["num_completed"] > 0
    complete = Simulation(sc).run()
    full = complete.requests.set_index("request_id")
    done = res.requests[res.requests["status"] == "completed"].set_index("request_id")
    pd.testing.assert_series_equal(done["finish_s"], full.loc[done.index, "finish_s"])  # the same run, cut short
    assert complete.summary["partial"] is False


def test_an_open_ended_trace_stopped_before_its_last_arrival_is_partial_not_at_its_horizon():
    """The trace's horizon follows its last arrival (not known yet when the user stops the run): the run is
    `partial`, not `stopped_at_horizon`, and summary.json says null for the horizon it never learnt."""
    from simserve.output import json_safe

    class Stop(Hooks):
        n = 0

        def finished(self, req) -> None:
            self.n += 1
            if self.n == 100:
                sim.stop()

    sc = load_scenario(ROOT / "scenarios/azure-replay.yaml")
    sim = Simulation(sc, sc.base_dir, hooks=[Stop()])
    res = sim.run()
    s = res.summary
    assert s["partial"] is True and s["stopped_at_horizon"] is False and s["num_not_arrived"] == 0
    assert s["num_completed"] >= 100 and s["num_unfinished"] > 0 and s["num_requests"] < 2000
    reasons = res.requests.loc[res.requests["status"] == "unfinished", "reason"]
    assert reasons.str.contains("when the run was stopped").all()
    assert math.isinf(s["horizon_s"]) and json.loads(json.dumps(json_safe(s)))["horizon_s"] is None
    whole = Simulation(sc, sc.base_dir).run().summary  # unstopped: the horizon is the trace's, known at the end
    assert whole["partial"] is False and math.isfinite(whole["horizon_s"])


def test_a_trace_run_is_sized_by_its_rows():
    """`run` reads a trace whole before it starts (preflight); its count of rows sizes the run, which the
    scenario alone cannot (no num_requests)."""
    import argparse

    from simserve.cli import _load_for_run

    args = argparse.Namespace(scenario=str(ROOT / "scenarios/azure-replay.yaml"), set=None, seed=None,
                              exact_steps=False)
    sc, rows = _load_for_run(args)
    assert expected_requests(sc) is None and estimate(sc) is None and rows == 2000
    size = estimate(sc, rows)
    assert size is not None and size.requests == 2000


def test_progress_status_line():
    monitor = RunMonitor(20_000, 10_000.0)
    snap = Snapshot(sim_s=1234.5, arrived=6000, ended=5000, events=240_000)
    assert monitor.fraction(snap) == 0.25
    assert monitor.status(snap, elapsed_s=2.0) == ("1,234 s simulated, 5,000 of 20,000 requests finished, "
                                                   "120,000 events/s, about 6 s left")
    assert RunMonitor(None, 5000.0).fraction(snap) == pytest.approx(1234.5 / 5000)
    assert math.isclose(RunMonitor(10, 1.0).fraction(snap), 1.0)


def test_ctrl_c_while_the_results_folder_is_swapped_waits_for_the_swap():
    from simserve.cli import _sigint_held

    done = []
    with pytest.raises(KeyboardInterrupt), _sigint_held():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("swapped")
    assert done == ["swapped"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
