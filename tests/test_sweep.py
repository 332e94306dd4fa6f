"""Sweeps, comparisons and capacity searches (simserve.sweep, simserve.plan): the grid expands as documented, the
confidence interval covers at its nominal rate, the cache reruns nothing it has, compare tells a real difference
from none, plan finds the replica count queueing theory gives for an M/D/c queue. About 20 s; the command line
(progress, files, errors, the Dask backend) is in test_sweep_cli.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import tiny

from simserve.output import CacheFolder
from simserve.plan import Bisection, Knob, pareto_front, parse_slo, parse_vary, plan
from simserve.sweep import (
    MemoryCache,
    Point,
    SweepError,
    Tally,
    compare_table,
    expand,
    make_tasks,
    mean_ci,
    paired,
    run_tasks,
    runs_table,
    split_values,
    summary_table,
)

SERVICE_S = 0.5  # 50 output tokens, one step each, 10 ms a step, one request at a time per replica


def mdc(tmp_path: Path, rate_per_s: float = 7.0, replicas: int = 1, num_requests: int = 600) -> Path:
    """An M/D/c queue as a scenario file: Poisson arrivals, `replicas` servers each serving one request at a time
    for exactly SERVICE_S (tests/test_queueing.py's single server, c times)."""
    data = tiny(pool={"max_num_seqs": 1, "replicas": replicas}, perf={"kind": "linear", "step_overhead_s": 0.01})
    data["workload"] = {
        "num_requests": num_requests, "arrival": {"process": "poisson", "rate_per_s": rate_per_s},
        "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 1},
                 "output_tokens": {"dist": "constant", "value": 50},
                 "reasoning_share": {"dist": "constant", "value": 0.0}}]}
    path = tmp_path / "mdc.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------------------ the grid


def test_grid_expands_as_documented():
    points = expand(["a=1,2", "b=x,y,z"], ["c=10,20", "d=p,q"])
    assert [p.values for p in points[:3]] == [
        (("a", "1"), ("b", "x"), ("c", "10"), ("d", "p")),
        (("a", "1"), ("b", "x"), ("c", "20"), ("d", "q")),
        (("a", "1"), ("b", "y"), ("c", "10"), ("d", "p")),
    ]
    assert len(points) == 2 * 3 * 2  # grid axes multiply; the zipped keys vary together, one axis
    assert points[-1].typed() == {"a": 2, "b": "z", "c": 20, "d": "q"}  # values read as YAML
    assert expand() == [Point(())]  # no axes: the scenario as written
    assert split_values("1..4") == ["1", "2", "3", "4"]
    assert split_values("[1,2],{a: 1, b: 2},'x,y'") == ["[1,2]", "{a: 1, b: 2}", "'x,y'"]
    assert expand(["k=[1,2],{a: 1},x"])[0].typed() == {"k": "[1,2]"}  # a list or mapping stays text in tables


@pytest.mark.parametrize("grid, zips, needle", [
    (["replicas"], [], "expected dotted.key=v1,v2"),
    (["a=1,,2"], [], "an empty value"),
    (["a=4..1"], [], "an empty range"),
    (["a=1", "a=2"], [], "swept twice"),
    (["seed=1,2"], [], "give --seeds"),
    ([], ["a=1,2", "b=1,2,3"], "equally many values"),
])
def test_bad_grids_are_errors(grid, zips, needle):
    with pytest.raises(SweepError, match=needle):
        expand(grid, zips)


def test_an_unknown_key_names_the_point(tmp_path):
    with pytest.raises(SweepError, match=r"(?s)cluster\.pools\.0\.replicaz=2: .*unknown key"):
        make_tasks(mdc(tmp_path), [], expand(["cluster.pools.0.replicaz=2"]), [0])


# ------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize("n", [2, 5, 20])
def test_the_interval_covers_the_mean_at_its_nominal_rate(n):
    """Normal samples: the Student-t interval is exact, so 95% of intervals hold the true mean (to within four
    binomial standard errors over 4,000 replications); the one-sided bound plan uses holds it 95% of the time."""
    rng = np.random.default_rng(n)
    reps = 4000
    covered = upper = 0
    for _ in range(reps):
        x = rng.normal(3.0, 2.0, size=n)
        _, low, high, _ = mean_ci(x)
        covered += low <= 3.0 <= high
        upper += mean_ci(x, 0.90)[2] >= 3.0
    tol = 4 * math.sqrt(0.95 * 0.05 / reps)
    assert abs(covered / reps - 0.95) < tol
    assert abs(upper / reps - 0.95) < tol


def test_the_interval_of_one_value_is_undefined_and_nan_is_dropped():
    mean, low, high, n = mean_ci([2.0])
    assert (mean, n) == (2.0, 1) and math.isnan(low) and math.isnan(high)
    assert mean_ci([1.0, math.nan, 3.0])[::3] == (2.0, 2)
    # t(0.975, 4) = 2.7764: the textbook value.
    _, low, high, _ = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (high - low) / 2 == pytest.approx(2.7764 * math.sqrt(2.5) / math.sqrt(5), rel=1e-4)


def test_paired_differences():
    same = paired([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same["diff_mean"] == 0 and same["p_value"] == 1.0
    shifted = paired([1.0, 5.0, 3.0, 8.0], [1.5, 5.4, 3.6, 8.5])  # noisy levels, a steady shift: pairing finds it
    assert shifted["diff_ci_low"] > 0 and shifted["p_value"] < 0.01
    assert math.isnan(paired([1.0], [2.0])["p_value"])


# ------------------------------------------------------------------------------------------ runs and the cache


def test_the_cache_runs_only_what_is_new(tmp_path):
    path = mdc(tmp_path, num_requests=100)
    cache = CacheFolder(tmp_path / "cache")
    seeds = [0, 1]
    first = Tally()
    tasks = make_tasks(path, [], expand(["cluster.pools.0.replicas=2,3"]), seeds)
    rows1 = run_tasks(tasks, None, cache, tally=first)
    assert (first.ran, first.cached) == (4, 0)
    again = Tally()
    rows2 = run_tasks(make_tasks(path, [], expand(["cluster.pools.0.replicas=2,3"]), seeds), None, cache, tally=again)
    assert (again.ran, again.cached) == (0, 4)
    assert runs_table(tasks, rows2).equals(runs_table(tasks, rows1))  # read back exactly (NaN included)
    extended = Tally()
    more = make_tasks(path, [], expand(["cluster.pools.0.replicas=2,3,4"]), [0, 1, 2])
    run_tasks(more, None, cache, tally=extended)
    assert (extended.ran, extended.cached) == (9 - 4, 4)
    # A table from cached runs is the table of fresh runs.
    fresh = runs_table(tasks, run_tasks(tasks, None, MemoryCache()))
    assert runs_table(tasks, rows2).equals(fresh)


def test_tables(tmp_path):
    tasks = make_tasks(mdc(tmp_path, num_requests=100), [], expand(["cluster.pools.0.replicas=2,3"]), [0, 1, 2])
    runs = runs_table(tasks, run_tasks(tasks, None, MemoryCache()))
    assert list(runs.columns[:3]) == ["cluster.pools.0.replicas", "seed", "scenario_hash"]
    assert runs["seed"].tolist() == [0, 1, 2, 0, 1, 2]
    assert runs["usd_per_hour"].tolist() == [5.8] * 3 + [8.7] * 3  # H100 list price x GPUs
    assert "wall_time_s" not in runs.columns  # differs run to run: kept out so tables are the same bytes
    summary = summary_table(runs, ["cluster.pools.0.replicas"])
    row = summary[(summary["figure"] == "e2e_s_mean") & (summary["cluster.pools.0.replicas"] == 3)].iloc[0]
    x = runs[runs["cluster.pools.0.replicas"] == 3]["e2e_s_mean"]
    assert row["mean"] == pytest.approx(x.mean()) and row["num_seeds"] == 3
    assert row["ci_low"] < row["mean"] < row["ci_high"]


# ------------------------------------------------------------------------------------------ compare


def compare_runs(tmp_path: Path, set_a: list[str], set_b: list[str], seeds: list[int]):
    path = mdc(tmp_path, num_requests=300, replicas=4)
    tasks = (make_tasks(path, set_a, [Point(())], seeds, "A") + make_tasks(path, set_b, [Point(())], seeds, "B"))
    return compare_table(runs_table(tasks, run_tasks(tasks, None, MemoryCache())), "A", "B").set_index("figure")


def test_compare_finds_no_difference_between_a_scenario_and_itself(tmp_path):
    table = compare_runs(tmp_path, [], [], list(range(5)))
    assert not table["significant"].any()
    assert (table["diff_mean"].fillna(0) == 0).all()


def test_compare_finds_a_real_difference(tmp_path):
    # Four replicas against five at load 3.5: the fifth server cuts the mean wait (M/D/c theory: by over half).
    table = compare_runs(tmp_path, [], ["cluster.pools.0.replicas=5"], list(range(5)))
    e2e = table.loc["e2e_s_mean"]
    assert e2e["significant"] and e2e["diff_ci_high"] < 0
    assert table.loc["usd_per_hour"]["significant"]  # a replica more costs more, every seed alike
    assert not table.loc["num_completed"]["significant"]


# ------------------------------------------------------------------------------------------ plan


def erlang_c_wait_s(c: int, offered: float, service_s: float) -> float:
    """M/M/c mean wait in queue (Erlang C): an upper bound on the M/D/c wait (deterministic service waits less)."""
    head = sum(offered**k / math.factorial(k) for k in range(c))
    tail = offered**c / math.factorial(c) * c / (c - offered)
    return tail / (head + tail) * service_s / (c - offered)


def test_plan_finds_the_replica_count_queueing_theory_gives(tmp_path):
    """Offered load a = lambda s = 3.5: three servers are unstable (the wait grows with every request), four are
    stable and wait less than M/M/4 would. So with the SLO 'mean time in system <= s + W_q(M/M/4)', four is the
    smallest count: floor(a) + 1."""
    rate = 7.0
    offered = rate * SERVICE_S
    c_star = math.floor(offered) + 1
    target = SERVICE_S + erlang_c_wait_s(c_star, offered, SERVICE_S)
    knob, combos = parse_vary(["cluster.pools.0.replicas=1..16"])
    cache = MemoryCache()
    tally = Tally()
    result = plan(mdc(tmp_path, rate), ["router=round_robin"], [parse_slo(f"e2e_s_mean<={target:.4f}")], knob,
                  combos, [0, 1, 2, 3], None, cache, tally=tally)
    assert result.cheapest is not None and result.cheapest["cluster.pools.0.replicas"] == c_star == 4
    assert result.cheapest["objective"] == pytest.approx(4 * 2.9)  # usd_per_hour: four H100s at list price
    tried = sorted(result.probes["cluster.pools.0.replicas"])
    assert tried == [2, 3, 4, 8, 16]  # the top first, then bisection
    assert tally.ran == 5 * 4
    # Three servers are past the cliff: the run's saturation test sees the queue grow in every seed.
    slo = f"e2e_s_mean<={float(f'{target:.4f}'):g}"
    assert result.answers.iloc[0]["binds"] == f"{slo} (not met at 3; saturated in 4 of 4 seeds)"
    # Below the answer the wait has no bound: at three servers it is over ten times the target.
    three = result.probes[result.probes["cluster.pools.0.replicas"] == 3].iloc[0]
    assert three["e2e_s_mean_mean"] > 5 * target


def test_plan_says_when_nothing_meets_the_target(tmp_path):
    knob, combos = parse_vary(["cluster.pools.0.replicas=1..3", "router=round_robin,least_outstanding"])
    result = plan(mdc(tmp_path, num_requests=200), [], [parse_slo("e2e_s_mean<=1")], knob, combos, [0, 1],
                  None, MemoryCache())
    assert result.cheapest is None
    assert list(result.answers["meets"]) == [False, False]
    assert all("even at 3, the top of the range" in b for b in result.answers["binds"])
    assert len(result.probes) == 2  # only the top of each range was tried


def test_plan_bottom_of_range_and_bad_input(tmp_path):
    knob, combos = parse_vary(["cluster.pools.0.replicas=6..8"])
    result = plan(mdc(tmp_path, num_requests=200), [], [parse_slo("ttft_s_p99<=5"), parse_slo("goodput>=0.5")],
                  knob, combos, [0, 1], None, MemoryCache())
    assert result.cheapest is not None and result.cheapest["cluster.pools.0.replicas"] == 6
    assert result.answers.iloc[0]["binds"].startswith("none (met at 6")
    with pytest.raises(SweepError, match="did you mean ttft_s_p99"):
        plan(mdc(tmp_path, num_requests=50), [], [parse_slo("ttft_p99<=5")], knob, combos, [0, 1], None,
             MemoryCache())
    with pytest.raises(SweepError, match="at least 2 seeds"):
        plan(mdc(tmp_path), [], [parse_slo("ttft_s_p99<=5")], knob, combos, [0], None, MemoryCache())


@pytest.mark.parametrize("text", ["ttft<2", "ttft_s_p99 <= two", "ttft_s_p99<=inf", "<=2"])
def test_bad_slos(text):
    with pytest.raises(SweepError, match="expected FIGURE<=NUMBER"):
        parse_slo(text)


def test_bad_vary():
    with pytest.raises(SweepError, match="give the knob"):
        parse_vary(["router=a,b"])
    with pytest.raises(SweepError, match="only one knob"):
        parse_vary(["a=1..4", "b=1..4"])


def test_bisection_and_pareto():
    b = Bisection(1, 64)
    need = 23
    while (v := b.next()) is not None:
        b.known[v] = v >= need
    assert b.answer() == need and len(b.known) <= 8  # log2(64) + the top
    assert pareto_front([1, 2, 3, 2], [10, 5, 6, 7]) == [True, True, False, False]
    assert pareto_front([1, 2], [0.9, 0.99], ">=") == [True, True]
    assert Knob("k", 1, 2).hi == 2


def test_an_undecided_probe_gets_more_seeds(tmp_path):
    """Four servers at load 3.5 wait about 0.35 s (mean time in system ~0.85 s): with two seeds the bound of the
    mean straddles a 1 s target (t(0.95, 1) = 6.3), so the search settles on five unless the probe may grow; with up
    to eight seeds the bound narrows below the target and four, the answer queueing theory gives, is found."""
    knob, combos = parse_vary(["cluster.pools.0.replicas=3..6"])
    slo = [parse_slo("e2e_s_mean<=1.0")]
    fixed = plan(mdc(tmp_path), ["router=round_robin"], slo, knob, combos, [0, 1], None, MemoryCache(), max_seeds=2)
    grown = plan(mdc(tmp_path), ["router=round_robin"], slo, knob, combos, [0, 1], None, MemoryCache(), max_seeds=8)
    assert fixed.cheapest is not None and fixed.cheapest["cluster.pools.0.replicas"] == 5
    four = fixed.probes[fixed.probes["cluster.pools.0.replicas"] == 4].iloc[0]
    assert four["undecided"] and four["e2e_s_mean_mean"] < 1.0 < four["e2e_s_mean_bound"]
    assert grown.cheapest is not None and grown.cheapest["cluster.pools.0.replicas"] == 4
    assert grown.cheapest["num_seeds"] == 8
    assert sorted(grown.runs[grown.runs["cluster.pools.0.replicas"] == 4]["seed"]) == list(range(8))


def test_a_combination_that_cannot_be_built_is_reported_not_fatal(tmp_path):
    knob, combos = parse_vary(["cluster.pools.0.replicas=4..6", "cluster.pools.0.num_kv_blocks=100000000,500"])
    result = plan(mdc(tmp_path, num_requests=200), [], [parse_slo("e2e_s_mean<=1")], knob, combos, [0, 1], None,
                  MemoryCache())
    bad, good = result.answers.iloc[0], result.answers.iloc[1]
    assert not bad["meets"] and bad["binds"].startswith("cannot be built: ") and "num_kv_blocks" in bad["binds"]
    assert good["meets"] and result.cheapest is not None and result.cheapest["cluster.pools.0.num_kv_blocks"] == 500
    with pytest.raises(SweepError, match="num_kv_blocks"):
        plan(mdc(tmp_path), [], [parse_slo("e2e_s_mean<=1")], *parse_vary(
            ["cluster.pools.0.replicas=4..6", "cluster.pools.0.num_kv_blocks=100000000"]), [0, 1], None, MemoryCache())


def test_batch_progress_writes_plain_lines_on_a_stream_that_is_not_a_terminal():
    import io
    import time

    from simserve.progress import BatchProgress

    stream = io.StringIO()
    progress = BatchProgress("simserve sweep", 4, stream=stream, every_s=0.05)
    with progress.watching():
        for cached in (True, False, False):
            progress.done(None, {"figures": {"num_requests": 100, "makespan_s": 50.0}}, cached)
            time.sleep(0.06)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "simserve sweep: 0/4 runs, 0 requests and 0 s simulated, 0 s elapsed"
    assert len(lines) >= 3 and "\x1b[" not in stream.getvalue()  # periodic lines, no terminal codes
    assert lines[-1].startswith("simserve sweep: 3/4 runs (1 from the cache), 300 requests and 150 s simulated")
    assert "left" in lines[-1]  # an estimate from the runs made so far
