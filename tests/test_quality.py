"""The answer-quality model (simserve/quality): voting against the binomial majority formula, budgets and early exit
only ever shorten reasoning, the curve's value at natural length is the mean accuracy, the shipped defaults
reproduce the figures they were fitted to, and docs/quality.md still prints what bench/quality_validation.py prints.
About 25 s; the tests that need ../shared/data skip without it."""

from __future__ import annotations

import difflib
import importlib.util
import itertools
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from simserve.hardware import MODELS
from simserve.quality import (
    EarlyExitSpec,
    ParallelSpec,
    QualityModel,
    QualitySpec,
    defaults,
    majority_accuracy,
    plurality,
    resolve,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "reasoning-quality"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found: {DATA}")


def bench(name: str) -> ModuleType:
    """A script of bench/ imported as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def binomial_model(p: float, n: int, dispersion: float = 0.0) -> QualityModel:
    """One success rate for every question (dispersion 0, no levels), one wrong answer, n samples."""
    spec = QualitySpec(pass_at_1=p, no_thinking_accuracy=p / 2, dispersion=dispersion, difficulty="none",
                       num_wrong_answers=1)
    return QualityModel.build(spec, "r1-distill-qwen-7b", "math_word", parallel=ParallelSpec(n=n))


def vote_accuracy(qm: QualityModel, m: int, seed: int) -> float:
    d = qm.draw(np.random.default_rng(seed), np.full(m, 2000.0))
    return float(np.mean([plurality(d.answer_id[i], d.tiebreak[i]) == 0 for i in range(m)]))


# ----------------------------------------------------------------------------------------------- voting


@pytest.mark.parametrize("n", range(1, 9))
@pytest.mark.parametrize("p", [0.3, 0.5, 0.6, 0.74])
def test_plurality_over_every_outcome_is_the_binomial_majority(p, n):
    """Exact: every right/wrong outcome of n samples, weighted by its probability, and every sample in turn
    holding the smallest tie-break key (uniform keys: each equally likely)."""
    total = 0.0
    for outcome in itertools.product((0, 1), repeat=n):
        answers = np.array(outcome)
        k = n - int(answers.sum())
        weight = p**k * (1.0 - p) ** (n - k)
        wins = 0
        for first in range(n):
            keys = np.ones(n)
            keys[first] = 0.0
            wins += plurality(answers, keys) == 0
        total += weight * wins / n
    assert total == pytest.approx(majority_accuracy(p, n), abs=1e-12)


@pytest.mark.parametrize(("p", "n"), [(0.6, 5), (0.6, 16), (0.45, 9)])
def test_voting_with_one_success_rate_matches_the_binomial_formula(p, n):
    m = 20_000
    got = vote_accuracy(binomial_model(p, n), m, seed=3)
    want = majority_accuracy(p, n)
    assert abs(got - want) < 4 * math.sqrt(want * (1 - want) / m)


def test_questions_that_differ_vote_below_the_binomial_formula():
    p, n, m = 0.6, 15, 8000
    got = vote_accuracy(binomial_model(p, n, dispersion=1.5), m, seed=4)
    assert got < majority_accuracy(p, n) - 0.05


# ----------------------------------------------------------------------------------------------- budgets, early exit


def draws_pair(budget: int | None, ee: EarlyExitSpec | None, seed: int = 5):
    spec = QualitySpec(pass_at_1=0.7, no_thinking_accuracy=0.3)
    natural = np.random.default_rng(0).lognormal(math.log(6000), 0.6, 3000)
    plain = QualityModel.build(spec, "r1-distill-qwen-7b", "competition_math", parallel=ParallelSpec(n=4))
    limited = QualityModel.build(spec, "r1-distill-qwen-7b", "competition_math", budget, ee, ParallelSpec(n=4))
    rng_a, rng_b = np.random.default_rng(seed), np.random.default_rng(seed)
    a, b = plain.draw(rng_a, natural), limited.draw(rng_b, natural)
    assert rng_a.random() == rng_b.random()  # the same RNG calls with and without
    return a, b


@pytest.mark.parametrize(("budget", "ee"), [
    (2000, None), (20000, None), (None, EarlyExitSpec(probe_every_tokens=256)),
    (4000, EarlyExitSpec(probe_every_tokens=100, settle_share=0.9, settle_spread=0.1)),
])
def test_budgets_and_early_exit_never_lengthen_a_sample(budget, ee):
    a, b = draws_pair(budget, ee)
    assert np.array_equal(a.natural_tokens, b.natural_tokens)
    assert np.array_equal(a.reasoning_tokens, a.natural_tokens)
    assert (b.reasoning_tokens <= a.reasoning_tokens).all()
    assert (b.reasoning_tokens < a.reasoning_tokens).any()
    if budget is not None:
        assert (b.reasoning_tokens <= budget).all()
    if ee is None:  # a cut sample can only turn wrong
        assert not (b.correct & ~a.correct).any()
        assert (b.p_correct <= a.p_correct + 1e-12).all()


# ----------------------------------------------------------------------------------------------- curve


@pytest.mark.parametrize(("p1", "dispersion", "difficulty"), [
    (0.74, 0.0, "none"), (0.74, 2.0, "none"), (0.3, 1.0, "math500"), (0.95, 3.0, "math500"),
])
def test_mean_accuracy_at_natural_length_is_pass_at_1(p1, dispersion, difficulty):
    spec = QualitySpec(pass_at_1=p1, no_thinking_accuracy=0.1, dispersion=dispersion, difficulty=difficulty)
    qm = QualityModel.build(spec, "deepseek-r1", "math_word")
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    weights = weights / weights.sum()
    mean = sum(share * (qm.success(np.ones_like(nodes), np.full(len(nodes), k), nodes) @ weights)
               for k, share in enumerate(qm.shares))
    assert float(qm.params.curve(1.0)) == pytest.approx(p1, abs=1e-12)
    assert mean == pytest.approx(p1, abs=1e-4)
    d = qm.draw(np.random.default_rng(1), np.full(50_000, 3000.0))
    assert d.correct.mean() == pytest.approx(p1, abs=4 * math.sqrt(p1 * (1 - p1) / 50_000))


# ----------------------------------------------------------------------------------------------- shipped defaults


def test_every_model_preset_has_every_query_type_and_a_source():
    d = defaults()
    for model in MODELS:
        entry = d["models"][model]
        for qt in ("factual", "coding", "math_word", "competition_math", "proof", "deepseek-r1-production"):
            r = resolve(None, model, qt)
            assert 0.0 <= r.curve.floor < float(r.curve(1.0)) < 1.0, (model, qt)
            assert entry[qt]["source"] in r.source
        assert 0.31 <= entry["_early_exit"]["settle_share"] <= 1.0
    assert "assumed" in resolve(None, "llama-3.1-8b", "proof").source
    assert "assumed" in resolve(None, "no-such-model", "coding").source


def test_non_reasoning_models_gain_little_from_reasoning():
    for model in ("llama-3.1-8b", "llama-3.1-70b", "qwen2.5-32b"):
        for qt in ("factual", "coding", "math_word", "competition_math"):
            c = resolve(None, model, qt).curve
            assert float(c(1.0)) - c.floor <= 0.05 * float(c(1.0)) + 1e-3  # 4-digit rounding


@needs_data
def test_shipped_defaults_reproduce_what_they_were_fitted_to():
    qv = bench("quality_validation")
    p = qv.shipped()
    d = defaults()
    # Voting and best-of-n (seed 002, MATH-500): within the documented misses.
    sim = qv.voting(p, m=4000)
    assert abs(sim["single"] - 0.74) < 0.015
    assert abs(sim["best@16"] - 0.91) < 0.02 and abs(sim["best@64"] - 0.94) < 0.02
    assert abs(sim["vote@16"] - 0.85) < 0.025 and abs(sim["vote@64"] - 0.90) < 0.025
    assert sim["vote@16"] < majority_accuracy(0.74, 16) - 0.05  # far below independent samples
    # Two curves: the stored residual is what the shipped curve gives, and it is small.
    for cd in qv.curve_data(DATA):
        if cd.name in ("qwen3-235b-a22b/aime24", "qwen3-235b-a22b/gpqa-diamond"):
            got = qv.rmse_points(qv.budget_accuracy(cd, qv.curve_of(p["curves"][cd.name]), p, m=20_000),
                                 [a for _, a in cd.points])
            assert got < 3.0
            assert got == pytest.approx(p["curves"][cd.name]["rmse_pts"], abs=0.5)
    # DEER: one model's mean token ratio and accuracy change.
    rows = [r for r in qv.deer_rows(DATA) if r.model == "R1-Distill-Qwen-7B"]
    q = qv.deer_params("R1-Distill-Qwen-7B", p)
    runs = [qv.deer_run(r, q, m=10_000) for r in rows]
    cr = np.mean([b / a for a, b, _, _ in runs])
    assert cr == pytest.approx(np.mean([r.deer_tokens / r.vanilla_tokens for r in rows]), abs=0.01)
    da = np.mean([dd - c for _, _, c, dd in runs])
    assert da == pytest.approx(np.mean([r.deer_acc - r.vanilla_acc for r in rows]), abs=0.005)
    assert d["early_exit"]["settle_share"] >= d["early_exit"]["min_settle_share"]


# ----------------------------------------------------------------------------------------------- docs drift


def documented(header: str) -> list[str]:
    lines = (ROOT / "docs" / "quality.md").read_text().splitlines()
    assert header in lines, f"docs/quality.md has no table headed\n{header}"
    start = lines.index(header)
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


@needs_data
def test_quality_tables_are_current():
    """Every table bench/quality_validation.py prints is in docs/quality.md as printed (the runs are seeded)."""
    qv = bench("quality_validation")
    command = "python bench/quality_validation.py"
    for name in qv.TABLES:
        printed = getattr(qv, name)()
        table = documented(printed[0])
        diff = "\n".join(difflib.unified_diff(table, printed, "docs/quality.md", command, lineterm=""))
        assert table == printed, f"docs/quality.md no longer says what `{command}` prints ({name}):\n{diff}"
