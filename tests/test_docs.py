"""The tables in docs/ say what the scripts they cite print today. Every run behind them is deterministic, so the
tolerance is the printed precision: a documented figure must equal the regenerated one as the page prints it (a
drift of half a unit in its last printed digit fails). A failure shows the difference and the command that prints
the table; paste its output into the page once you know why it moved.

Covered: docs/cluster.md (heterogeneous and disaggregated scenarios; with ../shared/data, the Mooncake hit-ratio and
router tables), docs/calibration.md (the op-level error tables and the shipped fits' figures; with ../shared/data,
the end-to-end replays of five real vLLM runs), docs/test-time-compute.md (the compute-equivalent configurations and
the parallel-sampling sweep), docs/policies.md (the seed's serving table and the scheduler comparison),
docs/capacity-planning.md (the router A/B at 3 and 10 seeds; its capacity searches take minutes and are not rerun
here). About 120 s
in all; tests needing ../shared/data skip without it."""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from simserve.perf.fits import load_fit, shipped_fits

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DATA = ROOT.parent / "shared" / "data"
MOONCAKE = DATA / "mooncake-conversation" / "conversation_trace.jsonl"
E2E = DATA / "e2e-ground-truth"


def bench(name: str) -> ModuleType:
    """A script of bench/ imported as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented(page: str, header: str) -> list[str]:
    """The lines of the table in docs/<page> whose header row is `header`."""
    lines = (DOCS / page).read_text().splitlines()
    assert header in lines, f"docs/{page} has no table headed\n{header}"
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def assert_current(page: str, printed: list[str], command: str) -> None:
    table = documented(page, printed[0])
    diff = "\n".join(difflib.unified_diff(table, printed, f"docs/{page}", command, lineterm=""))
    assert table == printed, f"docs/{page} no longer says what `{command}` prints:\n{diff}"


def test_cluster_scenario_tables_are_current():
    ct = bench("cluster_tables")
    assert_current("cluster.md", ct.heterogeneous_table(), "python bench/cluster_tables.py")
    assert_current("cluster.md", ct.disaggregated_table(), "python bench/cluster_tables.py")


needs_mooncake = pytest.mark.skipif(not MOONCAKE.is_file(), reason=f"shared data not found: {MOONCAKE}")
MOONCAKE_COMMAND = f"python bench/cluster_tables.py {MOONCAKE}"


@needs_mooncake
def test_mooncake_hit_ratio_table_is_current():
    assert_current("cluster.md", bench("cluster_tables").hit_ratio_table(MOONCAKE), MOONCAKE_COMMAND)


@needs_mooncake
def test_mooncake_router_table_is_current():
    ct = bench("cluster_tables")
    assert_current("cluster.md", ct.router_table(MOONCAKE), MOONCAKE_COMMAND)
    # The prose: round robin admitting prompts on their first chunk instead.
    said = re.search(r"`reserve_full_isl: false` \(admission on the first chunk\) it\s+preempts (\d+) times",
                     (DOCS / "cluster.md").read_text())
    assert said is not None
    assert int(said.group(1)) == ct.first_chunk_admission(MOONCAKE)["num_preemptions"]


def test_op_level_tables_are_current():
    ft = bench("fit_tables")
    assert_current("calibration.md", ft.heldout_table(), "python bench/fit_tables.py")
    assert_current("calibration.md", ft.cross_table(), "python bench/fit_tables.py")


def test_shipped_fits_are_what_the_page_says():
    """The shipped fits are fits of the imported profiles (same held-out errors as a fresh fit), and the two
    numbers fitted on a real run are those the page quotes."""
    ft = bench("fit_tables")
    for name in ("h100-sxm", "a100-80gb"):
        shipped, fresh = load_fit(shipped_fits()[name]), ft.fit_of(name)
        assert {t: f.stats for t, f in shipped.tables.items()} == {t: f.stats for t, f in fresh.tables.items()}
    h100 = load_fit(shipped_fits()["h100-sxm"])
    page = " ".join((DOCS / "calibration.md").read_text().split())  # line breaks as spaces
    assert f"the per-step host overhead ({h100.step_overhead_s * 1e3:.3f} ms," in page
    assert f"every FLOPs term (x{h100.compute_scale:.3f}," in page
    assert f"`compute_scale` ({h100.compute_scale:.3f} for the H100" in page


@pytest.mark.skipif(not E2E.is_dir(), reason=f"shared data not found: {E2E}")
def test_end_to_end_validation_tables_are_current():
    va = bench("validate_all")
    command = f"python bench/validate_all.py {E2E}"
    calibrated, roofline = va.replay_all(E2E, "calibrated"), va.replay_all(E2E, "roofline")
    assert_current("calibration.md", va.full_table(calibrated, marks=True), command)
    assert_current("calibration.md", va.versus_table(roofline, calibrated), command)
    # simserve's half of the comparison with BLIS (BLIS's figures come from its own runs).
    peers = documented("calibration.md",
                       "| run | TTFT mean BLIS / simserve | TTFT p50 | TPOT mean | e2e mean | e2e p99 |")
    columns = ["ttft_s_mean", "ttft_s_p50", "tpot_s_mean", "e2e_s_mean", "e2e_s_p99"]
    assert len(peers) == 2 + len(calibrated)
    for line in peers[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = cells[0].rstrip(" †‡")
        ours = [c.split("/")[1].strip().strip("*") for c in cells[1:]]
        assert ours == [f"{calibrated[name][f'{k}_rel_error']:.0%}" for k in columns], (name, command)


@pytest.mark.skipif(not E2E.is_dir(), reason=f"shared data not found: {E2E}")
def test_leave_one_run_out_table_is_current():
    fr = bench("fit_from_runs")
    assert_current("calibration.md", fr.table(fr.loro(E2E)), f"python bench/fit_from_runs.py {E2E}")


def test_test_time_compute_tables_are_current():
    ttc = bench("test_time_compute")
    command = "python bench/test_time_compute.py"
    assert_current("test-time-compute.md", ttc.configs_table(), command)
    assert_current("test-time-compute.md", ttc.sweep_table(ttc.sweep()), command)


def test_policies_tables_are_current():
    pol = bench("policies")
    command = "python bench/policies.py"
    assert_current("policies.md", pol.serving_table(pol.serving_rows()), command)
    assert_current("policies.md", pol.distilled_table(), command)
    assert_current("policies.md", pol.scheduler_table(pol.scheduler_rows()), command)


def test_capacity_planning_router_ab_is_current():
    """docs/capacity-planning.md's A/B of two routers: the p99 time to answer's paired difference is not significant
    at 3 seeds and is at 10, with the means, interval and p-value the page prints (20 runs of 2,400 requests,
    about 17 s)."""
    from simserve.report import number
    from simserve.sweep import MemoryCache, Point, compare_table, make_tasks, run_tasks, runs_table

    path = ROOT / "scenarios" / "capacity-planning.yaml"
    cache = MemoryCache()
    page = (DOCS / "capacity-planning.md").read_text()
    for n, significant in ((3, "no"), (10, "yes")):
        tasks = [t for v, s in (("A", "router=round_robin"), ("B", "router=least_kv"))
                 for t in make_tasks(path, [s], [Point(())], list(range(1, n + 1)), v)]
        row = compare_table(runs_table(tasks, run_tasks(tasks, None, cache)), "A", "B").set_index("figure").loc[
            "time_to_answer_s_p99"]
        cells = [number(row["a_mean"]), number(row["b_mean"]), number(row["diff_mean"]), f"{row['rel_diff']:+.1%}",
                 f"[{number(row['diff_ci_low'])}, {number(row['diff_ci_high'])}]", f"{row['p_value']:.3g}",
                 "yes" if row["significant"] else "no"]
        block = page.split(f"$ simserve compare ... --seeds {n} ...", 1)[1].split("$ simserve", 1)[0]
        line = next(x for x in block.splitlines() if x.startswith("│ time_to_answer_s_p99"))
        assert [c.strip() for c in line.strip("│").split("│")][1:] == cells, (n, line, cells)
        assert ("yes" if row["significant"] else "no") == significant
