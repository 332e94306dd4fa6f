"""KV compression (issue 17): blocks capped at prompt + budget, closed-form fast-forward with caps, the kept
contexts the perf models see, the accuracy retention fit, and longer traces at low budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simserve.engine.decodes import Decodes
from simserve.perf import kept_context_sums
from simserve.quality import KvCompressionSpec
from simserve.request import Request
from simserve.scenario import Scenario, ScenarioError, parse_scenario
from simserve.sim import Simulation

CSV = Path(__file__).resolve().parents[2] / "shared/data/reasoning-quality/rkv_kv_budget.csv"


def _decodes(rng: np.random.Generator, bt: int, n: int) -> Decodes:
    dec = Decodes(n, bt, compressed=True)
    for i in range(n):
        prompt = int(rng.integers(1, 50))
        req = Request(i, 0, "q", 0.0, prompt, 500, 5)
        req.generated_tokens = int(rng.integers(0, 60))
        req.computed_tokens = prompt + req.generated_tokens
        req.kv_keep_tokens = 0 if rng.random() < 0.3 else prompt + int(rng.integers(1, 80))
        keep = req.kv_keep_tokens or req.computed_tokens
        dec.add(req, -(-min(req.computed_tokens, keep) // bt))
    return dec


@pytest.mark.parametrize("seed", range(20))
def test_extra_blocks_and_advance_with_caps_equal_stepping(seed):
    rng = np.random.default_rng(seed)
    bt = int(rng.choice([1, 2, 4, 16]))
    dec = _decodes(rng, bt, int(rng.integers(1, 12)))
    k = int(rng.integers(2, 300))
    demand = dec.extra_blocks(bt, k, np.zeros(bt + 1, np.int64))
    assert demand.array is not None  # caps: not periodic
    extra = demand.values(k).copy()
    blocks0, ctx0 = dec.blocks[: dec.n].sum(), dec.ctx[: dec.n].copy()
    stepped = Decodes(dec.n, bt, compressed=True)
    stepped._rows[:] = dec._rows
    stepped.n = dec.n
    for s in range(1, k):
        need, _ = stepped.schedule_all(bt, 1 << 40)
        assert need >= 0
        assert stepped.blocks[: dec.n].sum() - blocks0 == extra[s], s
    dec.advance(k - 1, bt)
    assert (dec.blocks[: dec.n] == stepped.blocks[: dec.n]).all()
    assert (dec.blocks[: dec.n] <= dec.cap[: dec.n]).all()
    assert (dec.ctx[: dec.n] == ctx0 + k - 1).all()


@pytest.mark.parametrize("seed", range(20))
def test_kept_context_sums_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 10)), int(rng.integers(1, 200))
    ctx = rng.integers(1, 100, n)
    caps = np.where(rng.random(n) < 0.3, 1 << 62, ctx + rng.integers(0, 150, n))
    total, longest = kept_context_sums(ctx, caps, k)
    kept = np.minimum(ctx[None, :] + np.arange(k)[:, None], caps[None, :])
    assert (total == kept.sum(axis=1)).all()
    assert (longest == kept.max(axis=1)).all()


def _scenario(compression: dict | None, exact: bool = False, asynchronous: bool = False, reasoning: int = 4000,
              quality: bool = False) -> Scenario:
    pool = {"name": "p", "gpu": "h100-sxm", "max_num_seqs": 256, "num_kv_blocks": 2000,
            "async_scheduling": asynchronous}
    if compression:
        pool["kv_compression"] = compression
    mix = {"query_type": "math_word", "prompt_tokens": {"dist": "constant", "value": 200},
           "reasoning_tokens": {"dist": "constant", "value": reasoning},
           "answer_tokens": {"dist": "constant", "value": 50}}
    if quality:
        mix["quality"] = {}
    return parse_scenario({
        "name": "kvc", "seed": 3, "model": "llama-3.1-8b", "cluster": {"pools": [pool]},
        "workload": {"num_requests": 120, "arrival": {"process": "poisson", "rate_per_s": 50.0}, "mix": [mix]},
        "engine": {"exact_steps": exact, "check_invariants": True}})


HALF = {"method": "rkv", "budget_share": 0.5, "window_tokens": 128}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_fast_forward_equals_exact_steps_with_compression(asynchronous):
    ff = Simulation(_scenario(HALF, asynchronous=asynchronous)).run().requests
    ex = Simulation(_scenario(HALF, exact=True, asynchronous=asynchronous)).run().requests
    for col in ("first_token_s", "finish_s"):
        np.testing.assert_array_equal(ff[col].to_numpy(), ex[col].to_numpy())  # to the last bit
    assert (ff["num_preemptions"] == ex["num_preemptions"]).all()


def test_compression_raises_concurrency_and_lowers_step_time():
    full = Simulation(_scenario(None)).run().summary
    half = Simulation(_scenario(HALF)).run().summary
    # memory-bound: 2,000 blocks hold about 7 uncompressed sequences of 4,250 tokens, 14 at half the reasoning
    assert half["batch_size_mean"] > 1.2 * full["batch_size_mean"]
    assert half["tpot_s_mean"] < 0.85 * full["tpot_s_mean"]
    assert half["num_preemptions"] < full["num_preemptions"]
    assert half["makespan_s"] < 0.85 * full["makespan_s"]
    assert 0.9 < half["kv_memory_efficiency"] <= 1.0


def test_blocks_capped_at_prompt_plus_budget():
    sim = Simulation(_scenario({"method": "snapkv", "budget_tokens": 300, "window_tokens": 64}))
    seen = []
    step = sim.env.step

    def step_and_look():  # after every event (the compiled engine's methods cannot be wrapped; SimPy's can)
        step()
        dec = sim.replicas[0].planner.decodes
        seen.append(int(dec.blocks[: dec.n].max(initial=0)))
    sim.env.step = step_and_look  # type: ignore[method-assign]
    sim.run()
    assert max(seen) == -(-(200 + 300) // 16)  # prompt + budget, in blocks: reached, never passed


def test_retention_fit_reproduces_rkv_csv():
    rows = pd.read_csv(CSV, comment="#")
    mean_len = {"MATH-500": 2979, "AIME24": 15536}
    for method, col, rmse_max in (("rkv", "rkv_acc", 5.0), ("snapkv", "snapkv_acc", 4.0)):
        spec = KvCompressionSpec(method=method, budget_tokens=1, window_tokens=0)
        k = rows.kv_budget_tokens / rows.benchmark.map(mean_len)
        err = spec.retention(k.to_numpy()) * rows.fullkv_acc - rows[col]
        assert np.sqrt(np.mean(err**2)) < rmse_max, method
        assert np.abs(err).max() < 10.0, method


def test_low_budgets_lengthen_traces_and_cost_accuracy():
    base = Simulation(_scenario(None, quality=True)).run()
    low = Simulation(_scenario({"method": "rkv", "budget_share": 0.05, "window_tokens": 0}, quality=True)).run()
    assert low.requests["reasoning_tokens"].mean() > 1.1 * base.requests["reasoning_tokens"].mean()
    assert low.summary["accuracy"] < base.summary["accuracy"] - 0.1


def test_pools_must_share_compression():
    pool = {"gpu": "h100-sxm", "num_kv_blocks": 2000}
    with pytest.raises(ScenarioError, match="kv_compression"):
        parse_scenario({"name": "x", "model": "llama-3.1-8b", "cluster": {"pools": [
            {**pool, "name": "a", "kv_compression": HALF}, {**pool, "name": "b"}]},
            "workload": {"num_requests": 1, "arrival": {"process": "poisson", "rate_per_s": 1.0},
                         "mix": [{"query_type": "factual"}]}})


def test_retention_validation_table_in_docs_is_current():
    rows = pd.read_csv(CSV, comment="#")
    k = (rows.kv_budget_tokens / rows.benchmark.map({"MATH-500": 2979, "AIME24": 15536})).to_numpy()
    doc = (Path(__file__).resolve().parents[1] / "docs/quality.md").read_text()
    for method, col in (("rkv", "rkv_acc"), ("snapkv", "snapkv_acc")):
        spec = KvCompressionSpec(method=method, budget_tokens=1, window_tokens=0)
        err = spec.retention(k) * rows.fullkv_acc - rows[col]
        groups = [(f"{m} {b}", g) for (m, b), g in rows.assign(err=err).groupby(["model", "benchmark"])]
        for name, g in [*groups, ("all", rows.assign(err=err))]:
            line = (f"| {method} | {name} | {len(g)} | {np.sqrt((g.err ** 2).mean()):.1f} | "
                    f"{g.err.abs().max():.1f} |")
            assert line in doc, line
