"""Numerics a library does, checked against the library: the run-time grid interpolation against scipy's
RegularGridInterpolator, the root finding that fits a parameter to a replayed run, and the one summary helper that
both a run and a replay use."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.interpolate import RegularGridInterpolator

from simserve import load_scenario, run
from simserve.calibration.fitting import solve_increasing
from simserve.calibration.replay import STATS, compare
from simserve.perf.fits import _interp_grid

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("seed", range(20))
def test_run_time_grid_interpolation_equals_regular_grid_interpolator(seed):
    """simserve.perf.fits interpolates the correction grids with numpy (scipy stays out of the run-time path:
    docs/calibration.md); it is the same multilinear interpolation as scipy's, to rounding, on random non-uniform
    grids of one to five axes (single-point axes included) at random points inside them and on their nodes."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(1, 7, size=int(rng.integers(1, 6))))
    axes = [np.sort(rng.choice(np.linspace(-3, 9, 200), size=n, replace=False)) for n in shape]
    values = rng.normal(size=shape)
    n = 500
    pts = [rng.uniform(a[0], a[-1], n) for a in axes]
    for p, a in zip(pts, axes, strict=True):  # a fifth of the points on grid nodes, where cells meet
        on = rng.random(n) < 0.2
        p[on] = rng.choice(a, size=int(on.sum()))
    want = RegularGridInterpolator(axes, values, method="linear")(np.column_stack(pts))
    got = _interp_grid(axes, values, pts)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_root_finding_reaches_the_target_and_clamps_at_the_bounds():
    calls: list[float] = []

    def cube(x: float) -> float:
        calls.append(x)
        return x ** 3

    x = solve_increasing(cube, 2.0, 0.0, 3.0, xtol=1e-9)
    assert x == pytest.approx(2 ** (1 / 3), abs=2e-9)
    assert len(calls) == len(set(calls)) < 40  # no replay run twice; Brent beats 32 bisections
    assert solve_increasing(cube, -1.0, 0.0, 3.0, xtol=1e-9) == 0.0  # the target below f(lo)
    assert solve_increasing(cube, 100.0, 0.0, 3.0, xtol=1e-9) == 3.0  # above f(hi)
    steps = solve_increasing(lambda v: math.floor(v * 10) / 10, 0.45, 0.0, 1.0, xtol=1e-6)
    assert steps == pytest.approx(0.5, abs=2e-6)  # a step function: the step that crosses the target


def test_a_replay_summarises_latencies_as_a_run_does():
    """compare() (simserve validate) and a run's summary share one helper: identical statistics, bit for bit."""
    results = run(load_scenario(ROOT / "scenarios" / "quickstart.yaml", ["workload.num_requests=300"]))
    sim = results.requests
    real = sim[sim.status == "completed"][["ttft_s", "tpot_s", "e2e_s"]].reset_index(drop=True)
    report = compare(real, sim)
    for m in ("ttft_s", "tpot_s", "e2e_s"):
        for st in STATS:
            assert report[f"{m}_{st}_sim"] == results.summary[f"{m}_{st}"], (m, st)
            assert report[f"{m}_{st}_real"] == report[f"{m}_{st}_sim"], (m, st)
    for st in ("p50", "p90", "p99"):
        assert report[f"ttft_s_{st}_real"] == float(np.percentile(real.ttft_s, int(st[1:])))
    empty = compare(pd.DataFrame({"ttft_s": [], "tpot_s": [], "e2e_s": []}), sim)
    assert math.isnan(empty["ttft_s_mean_real"]) and math.isnan(empty["ttft_s_mean_rel_error"])
