"""Validate the answer-quality model against published figures and print the tables of docs/quality.md exactly as
the page has them (tests/test_quality.py checks that the page still says what this prints): Qwen3-235B-A22B and
s1-32B accuracy against thinking tokens, MATH-500 accuracy and tokens by difficulty level, DEER early exit (tokens
and accuracy with and without it), majority voting and best-of-N on MATH-500, and the shipped defaults with their
sources. Every figure is simulated through simserve.quality.QualityModel with fixed seeds. About 10 s.

    python bench/quality_validation.py [../shared/data/reasoning-quality]

bench/fit_quality.py fits the defaults with the same simulation helpers (this module's `simulate`, `budget_accuracy`,
`deer_run`, `voting`), so a fitted figure here matches what the fit saw.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simserve.quality import (
    Curve,
    DifficultyLevel,
    Draws,
    EarlyExitSpec,
    ParallelSpec,
    QualityModel,
    Resolved,
    majority_accuracy,
    plurality,
)
from simserve.quality import defaults as shipped_defaults

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "reasoning-quality"
SEED = 16
QUESTION_TOKENS_CV = 0.5  # assumed spread of natural reasoning length between questions (lognormal CV)
PROBE_EVERY_TOKENS = 256  # DEER probes at reasoning transitions ("Wait"); we probe every 256 tokens
M_CURVE, M_LEVELS, M_DEER, M_VOTE = 40_000, 100_000, 20_000, 10_000  # questions per simulated setting

# Seed article 002, section 6 ("Verification Strategy Comparison on MATH-500"): accuracy in points.
SEED_VOTING = {"single": 74.0, "vote@16": 85.0, "vote@64": 90.0, "PRM@16": 91.0, "PRM@64": 94.0, "ORM@16": 87.0}
MATH_BENCHMARKS = {"GSM8K", "MATH-500", "MATH500", "AMC23", "AIME24", "AIME25", "OlympiadBench", "math-avg"}


# ----------------------------------------------------------------------------------------------- parameters


def shipped() -> dict[str, Any]:
    """The shipped parameters as one flat dict (what `resolved` takes)."""
    d = shipped_defaults()
    return {**{k: d["voting"][k] for k in ("dispersion", "num_wrong_answers", "top_wrong_share",
                                           "reward_separation")},
            "wrong_tokens_factor": d["lengths"]["wrong_tokens_factor"],
            "sample_tokens_cv": d["lengths"]["sample_tokens_cv"],
            "settle_share": d["early_exit"]["settle_share"], "accuracy_change": d["early_exit"]["accuracy_change"],
            "min_settle_share": d["early_exit"]["min_settle_share"], "math500": d["levels"]["math500"],
            "curve_shape": d["curve_shape"], "curves": d["curves"], "models": d["models"]}


def resolved(curve: Curve, levels: bool, p: dict[str, Any], **over: Any) -> Resolved:
    """A query type's full parameter set: `curve`, MATH-500's levels or none, the rest from `p` (then `over`)."""
    q = {**p, **over}
    lv = tuple(DifficultyLevel(**x) for x in q["math500"]) if levels else ()
    return Resolved(curve=curve, dispersion=q["dispersion"], num_wrong_answers=q["num_wrong_answers"],
                    top_wrong_share=q["top_wrong_share"], wrong_tokens_factor=q["wrong_tokens_factor"],
                    sample_tokens_cv=q["sample_tokens_cv"], reward_separation=q["reward_separation"], levels=lv,
                    settle_share=q["settle_share"], settle_spread=0.2, accuracy_change=q["accuracy_change"],
                    min_settle_share=q["min_settle_share"], source="bench")


def variant(qm: QualityModel, budget: int | None = None, early_exit: EarlyExitSpec | None = None) -> QualityModel:
    """The same model (its solved log-odds offsets reused) with another budget or early exit."""
    out = copy.copy(qm)
    out.budget_tokens, out.early_exit = budget, early_exit
    return out


def early_exit(p: dict[str, Any]) -> EarlyExitSpec:
    """DEER as simulated here: a probe every PROBE_EVERY_TOKENS, probe tokens not counted."""
    return EarlyExitSpec(probe_every_tokens=PROBE_EVERY_TOKENS, probe_tokens=0, settle_share=p["settle_share"],
                         accuracy_change=p["accuracy_change"])


def simulate(qm: QualityModel, mean_tokens: float, m: int, seed: int = SEED) -> Draws:
    """m questions whose natural reasoning lengths are lognormal (mean `mean_tokens`, CV QUESTION_TOKENS_CV), as a
    workload's reasoning_tokens would be, drawn through the model. A fixed seed gives the same questions, samples
    and uniforms whatever the budget or early exit (the draws' RNG calls do not depend on them)."""
    rng = np.random.default_rng(seed)
    s2 = math.log1p(QUESTION_TOKENS_CV**2)
    natural = rng.lognormal(math.log(mean_tokens) - 0.5 * s2, math.sqrt(s2), m)
    return qm.draw(rng, natural)


def curve_of(entry: dict[str, Any]) -> Curve:
    return Curve(entry["floor"], entry["ceiling"], entry["mid_ratio"], entry["width"])


# ----------------------------------------------------------------------------------------------- published data


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _num(text: str) -> float:
    return float(text.strip().lstrip("~"))


@dataclass(frozen=True)
class CurveData:
    """One published accuracy curve: points (tokens, accuracy) and what the tokens mean."""

    name: str  # the shipped curve's name
    model: str
    benchmark: str
    kind: str  # "budget": a thinking budget cuts each sample; "mean": the mean thinking tokens spent
    points: tuple[tuple[float, float], ...]  # (tokens, accuracy 0..1)
    floor: float | None  # published non-thinking accuracy (None: fitted)
    natural_tokens: float
    natural_source: str
    levels: bool


# Natural (unbudgeted) mean thinking tokens. DEER ran with a 16k-token cap, so its means are lower bounds.
QWEN3_NATURAL = {
    "AIME24": (11374, "DEER Table 5, Qwen3-32B vanilla AIME24 (16k cap: a lower bound)"),
    "AIME25": (12446, "DEER Table 5, Qwen3-32B vanilla AIME25 (16k cap: a lower bound)"),
    "GPQA-Diamond": (6893, "DEER Table 5, Qwen3-32B vanilla GPQA-D (16k cap: a lower bound)"),
    "LiveCodeBench-v5": (11910, "assumed: the mean of DEER's Qwen3-32B AIME24/AIME25 means (no published Qwen3 "
                                "LiveCodeBench length found; its budget curve saturates like AIME's)"),
}
CURVE_NAMES = {"AIME24": "aime24", "AIME25": "aime25", "LiveCodeBench-v5": "livecodebench-v5",
               "GPQA-Diamond": "gpqa-diamond", "MATH500": "math500"}


def curve_data(data: Path = DATA) -> list[CurveData]:
    """Qwen3-235B-A22B's thinking-budget curves (floor: its non-thinking score) and s1-32B's budget-forcing curves
    (x: mean thinking tokens; natural length: assumed to be the longest point's)."""
    rows = read_csv(data / "budget_curves.csv")
    out = []
    for bench in ("AIME24", "AIME25", "LiveCodeBench-v5", "GPQA-Diamond"):
        pts = tuple((float(r["thinking_budget_tokens"]), _num(r["accuracy_pct"]) / 100) for r in rows
                    if r["model"] == "Qwen3-235B-A22B" and r["benchmark"] == bench)
        floor = next(_num(r["accuracy_pct"]) / 100 for r in rows
                     if r["model"] == "Qwen3-235B-A22B(non-thinking)" and r["benchmark"] == bench)
        nat, src = QWEN3_NATURAL[bench]
        out.append(CurveData(f"qwen3-235b-a22b/{CURVE_NAMES[bench]}", "Qwen3-235B-A22B", bench, "budget", pts,
                             floor, nat, src, bench in MATH_BENCHMARKS))
    for bench in ("MATH500", "AIME24", "GPQA-Diamond"):
        pts = tuple((_num(r["avg_thinking_tokens"]), _num(r["accuracy_pct"]) / 100) for r in rows
                    if r["model"] == "s1-32B(budget forcing)" and r["benchmark"] == bench)
        out.append(CurveData(f"s1-32b/{CURVE_NAMES[bench]}", "s1-32B", bench, "mean", pts, None, pts[-1][0],
                             "assumed: the longest budget-forcing point's mean thinking tokens", bench in
                             MATH_BENCHMARKS))
    return out


def budget_for_mean(draws: Draws, mean_tokens: float) -> int:
    """The budget at which the samples' mean reasoning spent is `mean_tokens` (s1's x-axis)."""
    nat = np.sort(draws.natural_tokens.ravel().astype(float))
    lo, hi = 0.0, float(nat[-1])
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.minimum(nat, mid).mean() < mean_tokens else (lo, mid)
    return max(1, round(0.5 * (lo + hi)))


def budget_accuracy(cd: CurveData, curve: Curve, p: dict[str, Any], m: int = M_CURVE) -> list[float]:
    """Simulated accuracy at each of the curve's points."""
    qm = QualityModel(resolved(curve, cd.levels, p))
    base = simulate(qm, cd.natural_tokens, m)
    out = []
    for tokens, _ in cd.points:
        budget = int(tokens) if cd.kind == "budget" else budget_for_mean(base, tokens)
        out.append(float(simulate(variant(qm, budget), cd.natural_tokens, m).correct.mean()))
    return out


def rmse_points(sim: Iterable[float], pub: Iterable[float]) -> float:
    err = np.asarray(list(sim)) - np.asarray(list(pub))
    return float(100 * math.sqrt(float(np.mean(err**2))))


# ----------------------------------------------------------------------------------------------- DEER


@dataclass(frozen=True)
class DeerRow:
    model: str
    benchmark: str
    vanilla_acc: float
    vanilla_tokens: float
    deer_acc: float
    deer_tokens: float


def deer_rows(data: Path = DATA) -> list[DeerRow]:
    return [DeerRow(r["model"], r["benchmark"], float(r["vanilla_acc"]) / 100, float(r["vanilla_tok"]),
                    float(r["deer_acc"]) / 100, float(r["deer_tok"])) for r in read_csv(data / "deer_early_exit.csv")]


def deer_run(row: DeerRow, p: dict[str, Any], m: int = M_DEER) -> tuple[float, float, float, float]:
    """(mean reasoning tokens without and with early exit, accuracy without and with) for a query type whose
    pass@1 and natural length are the row's vanilla figures."""
    floor = 0.5 * row.vanilla_acc
    shape = p["curve_shape"]
    curve = Curve.through(floor, min(row.vanilla_acc, 0.999), shape["mid_ratio"], shape["width"])
    qm = QualityModel(resolved(curve, row.benchmark in MATH_BENCHMARKS, p))
    plain = simulate(qm, row.vanilla_tokens, m)
    ee = simulate(variant(qm, None, early_exit(p)), row.vanilla_tokens, m)
    return (float(plain.reasoning_tokens.mean()), float(ee.reasoning_tokens.mean()), float(plain.correct.mean()),
            float(ee.correct.mean()))


# ----------------------------------------------------------------------------------------------- voting


def voting(p: dict[str, Any], pass_at_1: float = SEED_VOTING["single"] / 100, ns: tuple[int, ...] = (16, 64),
           m: int = M_VOTE, separation: float | None = None) -> dict[str, float]:
    """A MATH-500-like query type (MATH-500's levels) with this pass@1: single-sample accuracy, plurality vote@n
    and best-of-n by reward score over the first n of max(ns) samples per question (Answer.decide's rules)."""
    shape = p["curve_shape"]
    curve = Curve.through(0.5 * pass_at_1, pass_at_1, shape["mid_ratio"], shape["width"])
    over = {} if separation is None else {"reward_separation": separation}
    qm = QualityModel(resolved(curve, True, p, **over), parallel=ParallelSpec(n=max(ns)))
    d = simulate(qm, 4000.0, m)
    out = {"single": float(d.correct.mean())}
    rows = range(d.correct.shape[0])
    for n in ns:
        out[f"vote@{n}"] = float(np.mean([plurality(d.answer_id[i, :n], d.tiebreak[i, :n]) == 0 for i in rows]))
        best = np.argmax(d.score[:, :n], axis=1)
        out[f"best@{n}"] = float(d.correct[np.arange(len(best)), best].mean())
    return out


# ----------------------------------------------------------------------------------------------- levels


def level_data(data: Path = DATA) -> dict[str, dict[int, dict[str, float]]]:
    """MATH-500 by level: model -> level -> {n, accuracy, tokens} (whatever the file has)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for r in read_csv(data / "math500_by_level.csv"):
        row = out.setdefault(r["model"], {}).setdefault(int(r["level"]), {})
        for key, col in (("n", "n_questions"), ("accuracy", "accuracy"), ("tokens", "mean_reasoning_tokens")):
            if r[col].strip():
                row[key] = _num(r[col])
    return out


def by_level(p: dict[str, Any], pass_at_1: float, mean_tokens: float, m: int = M_LEVELS) -> dict[int, tuple]:
    """Simulated (accuracy, mean natural reasoning tokens) per MATH-500 level for this pass@1 and mean length."""
    shape = p["curve_shape"]
    qm = QualityModel(resolved(Curve.through(0.5 * pass_at_1, pass_at_1, shape["mid_ratio"], shape["width"]),
                               True, p))
    d = simulate(qm, mean_tokens, m)
    return {lv: (float(d.correct[d.difficulty == lv].mean()), float(d.natural_tokens[d.difficulty == lv].mean()))
            for lv in range(1, 6)}


def weighted_accuracy(levels: dict[int, dict[str, float]], sizes: dict[int, float]) -> float:
    return sum(sizes[lv] * levels[lv]["accuracy"] for lv in sizes) / sum(sizes.values())


# ----------------------------------------------------------------------------------------------- tables


def _row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _pt(x: float) -> str:
    return f"{100 * x:.1f}"


def _err(sim: float, pub: float) -> str:
    return f"{100 * (sim - pub):+.1f}"


def curve_table(data: Path = DATA) -> list[str]:
    p = shipped()
    lines = ["| model | benchmark | thinking tokens | published % | simulated % | error (pt) |",
             "|---|---|---|---|---|---|"]
    for cd in curve_data(data):
        sim = budget_accuracy(cd, curve_of(p["curves"][cd.name]), p)
        what = "budget" if cd.kind == "budget" else "mean"
        for (tokens, pub), s in zip(cd.points, sim, strict=True):
            lines.append(_row(cd.model, cd.benchmark, f"{what} {tokens:,.0f}", _pt(pub), _pt(s), _err(s, pub)))
    return lines


def curve_fit_table() -> list[str]:
    p = shipped()
    lines = ["| curve | floor | ceiling | mid_ratio | width | natural tokens (mean) | A(1) % | RMSE (pt) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, c in p["curves"].items():
        lines.append(_row(name, f"{c['floor']:.3f}", f"{c['ceiling']:.3f}", f"{c['mid_ratio']:.3f}",
                          f"{c['width']:.3f}", f"{c['natural_tokens']:,.0f}", _pt(float(curve_of(c)(1.0))),
                          f"{c['rmse_pts']:.1f}"))
    return lines


def level_table(data: Path = DATA) -> list[str]:
    """MATH-500 by level: the shipped levels (fitted on R1-Distill-Qwen-7B) on that model and, held out, on
    Qwen2.5-Math-7B-Instruct (accuracy) and three reasoning models (tokens)."""
    p, lv = shipped(), level_data(data)
    sizes = {k: v["n"] for k, v in lv["DeepSeek-R1-Distill-Qwen-7B"].items() if "n" in v}
    lines = ["| model | what | level 1 | level 2 | level 3 | level 4 | level 5 | RMSE |",
             "|---|---|---|---|---|---|---|---|"]
    for model, fitted in (("DeepSeek-R1-Distill-Qwen-7B", True), ("Qwen2.5-Math-7B-Instruct(non-reasoning)", False)):
        levels = lv[model]
        acc = weighted_accuracy(levels, sizes)
        tok = sum(sizes[k] * levels[k]["tokens"] for k in sizes) / sum(sizes.values())
        sim = by_level(p, acc, tok)
        label = model.split("(")[0] + ("" if fitted else " (held out)")
        pub_a = [levels[k]["accuracy"] for k in range(1, 6)]
        sim_a = [sim[k][0] for k in range(1, 6)]
        lines.append(_row(label, "accuracy % published", *[_pt(x) for x in pub_a], ""))
        lines.append(_row("", "accuracy % simulated", *[_pt(x) for x in sim_a], f"{rmse_points(sim_a, pub_a):.1f} pt"))
        if fitted:
            pub_t = [levels[k]["tokens"] for k in range(1, 6)]
            sim_t = [sim[k][1] for k in range(1, 6)]
            lines.append(_row("", "tokens published", *[f"{x:,.0f}" for x in pub_t], ""))
            lines.append(_row("", "tokens simulated", *[f"{x:,.0f}" for x in sim_t], _rel_rmse(sim_t, pub_t)))
    for model in ("DeepSeek-R1", "QwQ-32B", "DeepSeek-R1-Distill-Qwen-32B"):
        levels = lv[model]
        pub_t = [levels[k]["tokens"] for k in range(1, 6)]
        tok = sum(sizes[k] * levels[k]["tokens"] for k in sizes) / sum(sizes.values())
        sim = by_level(p, 0.9, tok)
        sim_t = [sim[k][1] for k in range(1, 6)]
        lines.append(_row(f"{model} (held out)", "tokens published", *[f"{x:,.0f}" for x in pub_t], ""))
        lines.append(_row("", "tokens simulated", *[f"{x:,.0f}" for x in sim_t], _rel_rmse(sim_t, pub_t)))
    return lines


def _rel_rmse(sim: list[float], pub: list[float]) -> str:
    rel = (np.asarray(sim) - np.asarray(pub)) / np.asarray(pub)
    return f"{100 * math.sqrt(float(np.mean(rel**2))):.0f}%"


DEER_TABLE_MODELS = ("R1-Distill-Qwen-7B", "R1-Distill-Qwen-14B", "R1-Distill-Qwen-32B", "Qwen3-8B", "Qwen3-14B",
                     "Qwen3-32B", "QwQ-32B", "Llama-3.1-Nemotron-Nano-8B-v1")


def deer_params(model: str, p: dict[str, Any]) -> dict[str, Any]:
    fit = shipped_defaults()["early_exit"]["deer_fits"][model]
    return {**p, "settle_share": fit["settle_share"], "accuracy_change": fit["accuracy_change"]}


def deer_table(data: Path = DATA) -> list[str]:
    """Per DEER model, the mean over its seven benchmarks (what settle_share and accuracy_change are fitted to)."""
    p, rows = shipped(), deer_rows(data)
    lines = ["| model | settle share | vanilla tokens | DEER tokens published | simulated | token ratio published | "
             "simulated | accuracy change published (pt) | simulated (pt) |", "|---|---|---|---|---|---|---|---|---|"]
    for model in DEER_TABLE_MODELS:
        mine = [r for r in rows if r.model == model]
        q = deer_params(model, p)
        runs = [deer_run(r, q) for r in mine]
        van = np.mean([r.vanilla_tokens for r in mine])
        sim_tok = np.mean([r.vanilla_tokens * b / a for r, (a, b, _, _) in zip(mine, runs, strict=True)])
        cr_pub = np.mean([r.deer_tokens / r.vanilla_tokens for r in mine])
        cr_sim = np.mean([b / a for a, b, _, _ in runs])
        da_pub = np.mean([r.deer_acc - r.vanilla_acc for r in mine])
        da_sim = np.mean([d - c for _, _, c, d in runs])
        lines.append(_row(model, f"{q['settle_share']:.3f}", f"{van:,.0f}",
                          f"{np.mean([r.deer_tokens for r in mine]):,.0f}", f"{sim_tok:,.0f}", f"{cr_pub:.1%}",
                          f"{cr_sim:.1%}", f"{100 * da_pub:+.1f}", f"{100 * da_sim:+.1f}"))
    return lines


def deer_benchmark_table(data: Path = DATA, model: str = "R1-Distill-Qwen-7B") -> list[str]:
    """One model's benchmarks one by one with its single fitted settle share: the spread the mean hides."""
    p, rows = shipped(), [r for r in deer_rows(data) if r.model == model]
    q = deer_params(model, p)
    lines = [f"| {model}: benchmark | vanilla tokens | token ratio published | simulated | error (pt) | "
             "accuracy change published (pt) | simulated (pt) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b, c, d = deer_run(r, q)
        cr = r.deer_tokens / r.vanilla_tokens
        lines.append(_row(r.benchmark, f"{r.vanilla_tokens:,.0f}", f"{cr:.1%}", f"{b / a:.1%}",
                          f"{100 * (b / a - cr):+.1f}", f"{100 * (r.deer_acc - r.vanilla_acc):+.1f}",
                          f"{100 * (d - c):+.1f}"))
    return lines


def voting_table() -> list[str]:
    p = shipped()
    sim = voting(p)
    orm = voting(p, ns=(16,), separation=shipped_defaults()["voting"]["orm_reward_separation"])
    single = SEED_VOTING["single"] / 100
    lines = ["| MATH-500 (seed 002) | published % | simulated % | error (pt) | independent samples at 74%, one "
             "wrong answer (binomial) % |", "|---|---|---|---|---|"]
    keys = [("single", "single sample", "single", 1), ("vote@16", "majority vote, 16 samples", "vote@16", 16),
            ("vote@64", "majority vote, 64 samples", "vote@64", 64), ("PRM@16", "best-of-16, PRM", "best@16", 0),
            ("PRM@64", "best-of-64, PRM", "best@64", 0)]
    for pub_key, label, sim_key, n in keys:
        pub = SEED_VOTING[pub_key] / 100
        binom = _pt(majority_accuracy(single, n)) if n else ""
        lines.append(_row(label, _pt(pub), _pt(sim[sim_key]), _err(sim[sim_key], pub), binom))
    pub = SEED_VOTING["ORM@16"] / 100
    lines.append(_row("best-of-16, ORM (separation fitted alone)", _pt(pub), _pt(orm["best@16"]),
                      _err(orm["best@16"], pub), ""))
    return lines


QUERY_TYPE_ORDER = ("factual", "coding", "math_word", "competition_math", "proof", "deepseek-r1-production")


def defaults_table() -> list[str]:
    """Every shipped (model, query type): pass@1 at natural length, accuracy without reasoning, and the source."""
    p = shipped()
    lines = ["| model | query type | pass@1 % | no reasoning % | source |", "|---|---|---|---|---|"]
    for model, entry in p["models"].items():
        for qt in QUERY_TYPE_ORDER:
            e = entry.get(qt)
            if e is None:
                continue
            if "curve" in e:
                c = curve_of(p["curves"][e["curve"]])
                p1, floor = float(c(1.0)), c.floor
            else:
                p1, floor = e["pass_at_1"], e["no_thinking_accuracy"]
            lines.append(_row(model, qt, _pt(p1), _pt(floor), e["source"]))
    return lines


def early_exit_defaults_table() -> list[str]:
    lines = ["| model | settle share | accuracy change (pt) | source |", "|---|---|---|---|"]
    for model, entry in shipped()["models"].items():
        e = entry.get("_early_exit")
        if e is not None:
            lines.append(_row(model, f"{e['settle_share']:.3f}", f"{100 * e['accuracy_change']:+.1f}", e["source"]))
    return lines


TABLES = ("curve_fit_table", "curve_table", "level_table", "deer_table", "deer_benchmark_table", "voting_table",
          "defaults_table", "early_exit_defaults_table")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=DATA, help="../shared/data/reasoning-quality")
    args = parser.parse_args()
    printed = [curve_fit_table(), curve_table(args.data), level_table(args.data), deer_table(args.data),
               deer_benchmark_table(args.data), voting_table(), defaults_table(), early_exit_defaults_table()]
    print("\n\n".join("\n".join(t) for t in printed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
