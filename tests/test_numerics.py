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


# -- a decode run's step times are single steps' to the last bit ---------------------------------------------
def _perf_models():
    from simserve.hardware import GPUS, MODELS
    from simserve.perf import CalibratedPerfSpec, LinearPerfSpec, PerfContext, RooflinePerfSpec

    h100 = GPUS["h100-sxm"]
    yield "linear", LinearPerfSpec(step_overhead_s=0.003, per_prefill_token_s=1e-5, per_decode_seq_s=7e-5,
                                   per_kv_token_s=3.3e-8).build(PerfContext(h100, MODELS["llama-3.1-8b"]))
    for name, tp in [("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("qwen3-30b-a3b", 1), ("deepseek-r1", 8)]:
        ctx = PerfContext(h100, MODELS[name], tp)
        yield f"roofline {name} tp{tp}", RooflinePerfSpec().build(ctx)
        # compute-bound: the other side of the roofline, and runs that cross from one side to the other
        yield f"roofline {name} tp{tp} slow compute", RooflinePerfSpec(compute_efficiency=0.002).build(ctx)
        yield f"roofline {name} tp{tp} mid", RooflinePerfSpec(compute_efficiency=0.05).build(ctx)
    for name, tp in [("llama-3.1-8b", 1), ("qwen3-30b-a3b", 1), ("deepseek-r1", 8)]:
        yield f"calibrated {name} tp{tp}", CalibratedPerfSpec().build(PerfContext(h100, MODELS[name], tp))


@pytest.mark.parametrize("seed", range(6))
def test_decode_run_step_times_equal_single_steps_bit_for_bit(seed):
    """Fast-forward takes a run's step times from the perf model's closed form (decode_run_stats_s, or
    decode_run_times_s under KV caps); stepping takes each from step_time_s. They must be equal to the last bit,
    not to rounding: two replicas whose step ends tie in one mode must tie in the other, or a same-instant choice
    (whose cancel comes before whose plan) could differ between the modes. Random batches from 1 to 512
    sequences, contexts from 1 to 200k tokens, runs of up to 300 steps, with and without caps."""
    from simserve.perf import Batch

    rng = np.random.default_rng(seed)
    empty = np.zeros(0, np.int64)
    for label, perf in _perf_models():
        for _ in range(12):
            n = int(rng.choice([1, 2, 3, 7, 64, 255, 512]))
            contexts = rng.integers(1, int(rng.choice([50, 4000, 200_000])), size=n)
            k = int(rng.integers(1, 300))
            runs = perf.decode_run_times_s(contexts, k)
            stats = perf.decode_run_stats_s(n, int(contexts.sum()), int(contexts.max()), k)
            single = np.array([perf.step_time_s(Batch(contexts + s, empty, empty)) for s in range(k)])
            assert np.array_equal(runs, single), label
            assert np.array_equal(stats, single), label
            caps = contexts + rng.integers(0, k + 5, size=n)
            capped = perf.decode_run_times_s(contexts, k, caps)
            single = np.array([perf.step_time_s(Batch(np.minimum(contexts + s, caps), empty, empty))
                               for s in range(k)])
            assert np.array_equal(capped, single), label


def test_roofline_reads_an_moe_models_weights_by_its_tokens_and_a_dense_models_whole():
    """The roofline's weight side: a dense model reads all its weights each step; a mixture of experts reads the
    experts its tokens touch (model.weight_bytes_read), fewer at batch 1 than at 256. (The model's kind is read once
    when the model is built: a pydantic attribute read each step was a generic lookup.)"""
    from simserve.hardware import GPUS, MODELS
    from simserve.perf import PerfContext, RooflinePerfSpec

    h100 = GPUS["h100-sxm"]
    for name, tp in [("llama-3.1-8b", 1), ("qwen3-30b-a3b", 1), ("deepseek-r1", 8)]:
        model = MODELS[name]
        perf = RooflinePerfSpec().build(PerfContext(h100, model, tp))
        for tokens in (1.0, 256.0):
            if model.moe is None:
                assert perf._weight_s(tokens) == perf.weight_s
            else:
                assert perf._weight_s(tokens) == model.weight_bytes_read(tokens) / perf.bw_per_gpu
        if model.moe is not None:
            assert perf._weight_s(1.0) < perf._weight_s(256.0) <= perf.weight_s * (1 + 1e-12)


@pytest.mark.parametrize("steps, cross_at", [(250, 100), (60, 30)])
def test_roofline_runs_that_cross_from_memory_to_compute_bound_equal_single_steps(steps, cross_at):
    """The roofline's closed form picks one side for a whole run where it dominates with a margin; a run whose
    memory and compute times cross takes the max step by step. Runs that cross at their 100th step (array code)
    or, short runs timed with floats, at their 30th, for every roofline of _perf_models whose sides cross at a
    reachable context (8B at 512 sequences of ~240 tokens does, at the default efficiencies)."""
    from simserve.perf import Batch, analytic

    assert (steps <= analytic._SCALAR_STEPS) == (steps == 60)

    empty = np.zeros(0, np.int64)
    crossing = 0
    for label, perf in _perf_models():
        if not label.startswith("roofline"):
            continue
        for n in (1, 8, 64, 512):
            kvs, attn = perf.kv_s_per_token, perf.attn_s_per_pair
            at = (perf._weight_s(float(n)) + kvs * n - perf.linear_s_per_token * n) / (attn - kvs)
            per_seq = int(at / n) - cross_at
            if not 50 <= per_seq <= 100_000:
                continue
            crossing += 1
            contexts = np.full(n, per_seq)
            single = np.array([perf.step_time_s(Batch(contexts + s, empty, empty)) for s in range(steps)])
            ctx = n * (per_seq + np.arange(float(steps)))
            memory_bound = perf._weight_s(float(n)) + kvs * (ctx + n) > perf.linear_s_per_token * n + attn * ctx
            assert memory_bound[0] != memory_bound[-1]  # the run does cross
            assert np.array_equal(perf.decode_run_stats_s(n, int(contexts.sum()), per_seq, steps), single), label
    assert crossing >= 4


def test_calibrated_run_operands_follow_the_token_tables():
    """A calibrated decode run keeps, per batch size, the step's time outside attention as a 0-d array; the token
    tables it comes from are rebuilt larger when a step has more tokens than they cover. The kept operands must go
    with the tables they were read from, so a run after a rebuild still equals its single steps to the last bit."""
    from simserve.perf import Batch

    empty = np.zeros(0, np.int64)
    for label, perf in _perf_models():
        if not label.startswith("calibrated"):
            continue
        contexts = np.array([900, 1700, 35, 4000, 12, 640, 2222])
        n, k = len(contexts), 40
        for rebuilt in (False, True):
            if rebuilt:
                size = len(perf._token_table)
                perf.step_time_s(Batch(empty, np.array([size + 10]), np.array([0])))  # a prefill past the table
                assert len(perf._token_table) > size and not perf._run_operands, label
            single = np.array([perf.step_time_s(Batch(contexts + s, empty, empty)) for s in range(k)])
            run = perf.decode_run_stats_s(n, int(contexts.sum()), int(contexts.max()), k)
            assert np.array_equal(run, single), (label, rebuilt)
            assert n in perf._run_operands, label


def test_calibrated_attention_rows_built_in_blocks_equal_rows_built_alone():
    """The calibrated model builds its decode attention rows (log seconds over the context grid) for 16 batch sizes
    at a time; each must be, to the last bit, the row of that batch size alone, and none another's."""
    from simserve.perf.calibrated import _KV_GRID

    for label, perf in _perf_models():
        if not label.startswith("calibrated"):
            continue
        for b in (17, 1, 16, 40, 33, 256, 255):  # across blocks, in an order that starts mid-block
            alone = np.log(perf.decode_attention_s(np.full_like(_KV_GRID, b), _KV_GRID))
            assert np.array_equal(perf._decode_row(b), alone), (label, b)
        assert sorted(perf._decode_rows) == list(range(1, 49)) + list(range(241, 257)), label


def test_calibrated_runs_where_one_attention_side_dominates_equal_single_steps():
    """The calibrated model times a decode batch's attention as max(b sequences of the mean context, one of the
    longest). A run where one side's first step is above the other's last by far more than rounding computes that
    side only (its rows rise past a few tokens, so each side rises over the run), and a single step likewise. Runs
    where the mean side dominates, where the longest does, where they cross (both computed), one sequence, and
    contexts below where the measured rows rise, must all equal single steps to the last bit."""
    from simserve.hardware import GPUS, MODELS
    from simserve.perf import Batch, CalibratedPerfSpec, PerfContext, calibrated

    empty = np.zeros(0, np.int64)
    seen = set()
    for name, tp in [("llama-3.1-8b", 1), ("qwen3-30b-a3b", 1)]:
        perf = CalibratedPerfSpec().build(PerfContext(GPUS["h100-sxm"], MODELS[name], tp))
        cases = [np.full(n, c) for n in (1, 2, 17, 256) for c in (3, 40, 2000, 60_000)]
        cases += [np.array([c] + [8] * (n - 1)) for n in (2, 5, 17) for c in (500, 30_000)]  # one long sequence
        for n in (2, 4, 17, 64):  # the longest sequence's side close to the mean side's: the run crosses or nearly
            row_b, _ = perf._rising_row(perf._rank_batch(n))
            row_1, _ = perf._rising_row(1)
            for longest in (300, 3000, 30_000):
                short = min(range(1, longest), key=lambda x: abs(calibrated._log_attention_near(
                    row_b, (longest + (n - 1) * x) / n) - calibrated._log_attention_near(row_1, float(longest))))
                cases.append(np.array([longest] + [short] * (n - 1)))
        for contexts in cases:
            n, k = len(contexts), 300
            row_b, rises_b = perf._rising_row(perf._rank_batch(n))
            row_1, rises_1 = perf._rising_row(1)
            mean0, mean1 = contexts.sum() / n, contexts.sum() / n + k - 1
            a0, a1 = (calibrated._log_attention_near(row_b, float(m)) for m in (mean0, mean1))
            b0, b1 = (calibrated._log_attention_near(row_1, float(m)) for m in (contexts.max(), contexts.max() + k - 1))
            rising = mean0 >= rises_b and contexts.max() >= rises_1
            seen.add("one" if n == 1 else "below" if not rising else "mean" if a0 > b1 + 1e-6 else
                     "longest" if b0 > a1 + 1e-6 else "both")
            single = np.array([perf.step_time_s(Batch(contexts + s, empty, empty)) for s in range(k)])
            stats = perf.decode_run_stats_s(n, int(contexts.sum()), int(contexts.max()), k)
            assert np.array_equal(stats, single), (name, contexts[:3], n)
    assert seen == {"one", "below", "mean", "longest", "both"}


@pytest.mark.parametrize("seed", range(4))
def test_a_runs_kv_integrals_are_sums_in_step_order_with_floats_or_arrays_alike(seed):
    """A fast-forwarded run's KV over time (blocks taken beyond its start, and KV tokens attended over, each times
    its step's duration, summed over the steps) is added in step order: with floats for a short run, with arrays
    (ordered_dot) for a long one. Both must give the bits of a plain loop over the steps, so that a run's figures
    do not depend on its length's side of the threshold, nor on the machine (np.dot's BLAS kernel orders its sum
    by CPU)."""
    from simserve.engine.decodes import BlockDemand, FastForwardRun
    from simserve.perf.base import ordered_dot

    rng = np.random.default_rng(seed)
    for _ in range(40):
        k = int(rng.integers(1, 400))
        n = int(rng.integers(1, 512))
        context_sum = float(rng.integers(n, n * 100_000))
        times = rng.uniform(0.005, 0.2, k)
        extra = np.cumsum(rng.integers(0, 4, k)).astype(np.int64)
        bounds = np.concatenate([[rng.uniform(0, 1e4)], times]).cumsum()
        run = FastForwardRun(bounds, times, BlockDemand(k, extra), k, n, 0, context_sum=context_sum)
        for done in {0, 1, int(rng.integers(1, k + 1)), k}:
            loop_extra = loop_tokens = 0.0
            for i in range(done):
                loop_extra += float(extra[i]) * float(times[i])
                loop_tokens += (context_sum + float(n * i)) * float(times[i])
            want = (loop_extra, loop_tokens)
            assert run.kv_integrals(done, scalar_up_to=done) == want  # floats
            assert run.kv_integrals(done, scalar_up_to=0) == want  # arrays
    a, b = rng.uniform(-1, 1, 1000), rng.uniform(-1, 1, 1000)
    assert ordered_dot(a, b) == float(np.cumsum(a * b)[-1])
    assert ordered_dot(a[:0], b[:0]) == 0.0


def test_a_batch_of_lists_times_as_the_same_batch_of_arrays():
    """The engine hands a step's prefill chunks to the perf model as lists (Batch makes arrays of them only when a
    model reads them as arrays): every model times a batch given as lists and as arrays to the same bits."""
    from simserve.perf import Batch

    rng = np.random.default_rng(5)
    for label, perf in _perf_models():
        for _ in range(5):
            ctx = rng.integers(1, 50_000, int(rng.integers(0, 64)))
            new = rng.integers(1, 8192, int(rng.integers(1, 4))).tolist()
            cached = rng.integers(0, 30_000, len(new)).tolist()
            as_lists = Batch(ctx, list(new), list(cached))
            assert as_lists.prefill_lists() == (new, cached)
            t = perf.step_time_s(as_lists)
            assert t == perf.step_time_s(Batch(ctx, np.array(new), np.array(cached))), label
            assert np.array_equal(as_lists.prefill_new_tokens, new)
            assert np.array_equal(as_lists.prefill_cached_tokens, cached)
            assert perf.step_time_s(as_lists) == t, label  # read again, now from the arrays made on first read
            # The context sum a caller gives (the engine's plan has it) is the one computed, and the time the same.
            given = Batch(ctx, list(new), list(cached), float(ctx.sum()) if len(ctx) else 0.0)
            assert as_lists.decode_context_sum == given.decode_context_sum == float(ctx.sum()), label
            assert perf.step_time_s(given) == t, label
    with pytest.raises(ValueError, match="2 prefill chunks"):
        Batch(np.zeros(0, np.int64), [1, 2], [0])
