"""Fit the answer-quality defaults and write simserve/data/quality/defaults.json (docs/quality.md says what each
figure is and where it comes from). Every fit simulates through simserve.quality.QualityModel with fixed seeds
(bench/quality_validation.py's helpers), so the shipped model reproduces the published figures as the simulator
draws them. scipy is used here only, never by simserve at run time. About 4 minutes.

    python bench/fit_quality.py [../shared/data/reasoning-quality] [--out simserve/data/quality/defaults.json]

In order: MATH-500's difficulty levels (token factors and log-odds shifts, from R1-Distill-Qwen-7B by level) and
the voting parameters (per-question dispersion and the most common wrong answer's share, to seed 002's vote@16 and
vote@64), iterated twice since each depends on the other; the reward model's separation (PRM@16, PRM@64); the
Qwen3-235B-A22B and s1-32B accuracy curves; the generic curve shape; DEER's early exit per model; and the per-model
table (published pass@1 per query type's benchmark, rules for what is not published).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import quality_validation as qv
from scipy.optimize import brentq, least_squares, minimize, minimize_scalar

from simserve.quality import Curve, QualityModel

OUT = qv.ROOT / "simserve" / "data" / "quality" / "defaults.json"
NUM_WRONG_ANSWERS = 4  # assumed: distinct wrong answers per question (the top one's share is fitted)
WRONG_TOKENS_FACTOR = 1.3  # assumed: a wrong sample's reasoning length relative to a right one of the same question
SAMPLE_TOKENS_CV = 0.3  # assumed: spread of reasoning length between samples of one question
MIN_SETTLE_SHARE = 0.31  # 42-69% of MATH-500 thinking comes after the first correct answer: settles after >= 31%
VOTING_ITERATIONS = 2
# Where the fits start (the provisional guesses): the fit reads nothing from the defaults it writes, so rerunning
# it reproduces them.
START = {"dispersion": 2.0, "top_wrong_share": 0.6, "reward_separation": 1.5, "settle_share": 0.65,
         "accuracy_change": 0.02, "curve_shape": {"mid_ratio": 0.2, "width": 0.9}}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


# ----------------------------------------------------------------------------------------------- levels


def fit_levels(p: dict[str, Any], data: Path) -> list[dict[str, float]]:
    """MATH-500's five levels from R1-Distill-Qwen-7B (evalscope): shares = questions per level, token factors =
    mean tokens per level over their question-weighted mean, log-odds shifts solved so that the model's level
    accuracies (mean over the per-question spread, at the levels' overall accuracy) equal the published ones."""
    lv = qv.level_data(data)["DeepSeek-R1-Distill-Qwen-7B"]
    sizes = np.array([lv[k]["n"] for k in range(1, 6)])
    acc = np.array([lv[k]["accuracy"] for k in range(1, 6)])
    tokens = np.array([lv[k]["tokens"] for k in range(1, 6)])
    w = sizes / sizes.sum()
    overall = float(w @ acc)
    factors = tokens / float(w @ tokens)
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    weights = weights / weights.sum()

    def level_means(shifts: np.ndarray) -> np.ndarray:
        levels = [{"share": float(s), "tokens_factor": float(f), "logit_shift": float(x)}
                  for s, f, x in zip(sizes, factors, shifts, strict=True)]
        qm = QualityModel(qv.resolved(Curve.through(0.5 * overall, overall, 0.3, 1.0), True,
                                      {**p, "math500": levels}))
        out = np.empty(5)
        for k in range(5):
            out[k] = qm.success(np.ones_like(nodes), np.full(len(nodes), k), nodes) @ weights
        return out

    def residuals(shifts: np.ndarray) -> np.ndarray:
        return np.append(level_means(shifts) - acc, w @ shifts)  # shifts' weighted mean 0: c absorbs an offset

    start = np.array([logit(a) - logit(overall) for a in acc])
    fit = least_squares(residuals, start, xtol=1e-10, ftol=1e-12)
    return [{"share": int(s), "tokens_factor": round(float(f), 4), "logit_shift": round(float(x), 4)}
            for s, f, x in zip(sizes, factors, fit.x, strict=True)]


# ----------------------------------------------------------------------------------------------- voting


def fit_voting(p: dict[str, Any]) -> tuple[float, float]:
    """Dispersion and the top wrong answer's share so that a MATH-500-like type with pass@1 74% votes to seed 002's
    85% (16 samples) and 90% (64)."""
    target = np.array([qv.SEED_VOTING["vote@16"], qv.SEED_VOTING["vote@64"]]) / 100

    def loss(v: np.ndarray) -> float:
        q = {**p, "dispersion": math.exp(v[0]), "top_wrong_share": sigmoid(v[1])}
        sim = qv.voting(q, ns=(16, 64))
        return float(np.sum((np.array([sim["vote@16"], sim["vote@64"]]) - target) ** 2))

    start = np.array([math.log(max(p["dispersion"], 0.1)), logit(min(max(p["top_wrong_share"], 0.05), 0.95))])
    fit = minimize(loss, start, method="Nelder-Mead", options={"xatol": 2e-3, "fatol": 1e-7, "maxiter": 120,
                                                                "initial_simplex": [start, start + [0.3, 0],
                                                                                    start + [0, 0.6]]})
    return round(math.exp(fit.x[0]), 4), round(sigmoid(fit.x[1]), 4)


def fit_separation(p: dict[str, Any], targets: dict[int, float]) -> float:
    """The reward model's separation (right minus wrong score, in standard deviations) for best-of-n targets."""
    ns = tuple(sorted(targets))

    def loss(s: float) -> float:
        sim = qv.voting(p, ns=ns, separation=s)
        return sum((sim[f"best@{n}"] - targets[n] / 100) ** 2 for n in ns)

    fit = minimize_scalar(loss, bounds=(0.0, 6.0), method="bounded", options={"xatol": 1e-3})
    return round(float(fit.x), 4)


# ----------------------------------------------------------------------------------------------- curves


def fit_curve(cd: qv.CurveData, p: dict[str, Any]) -> dict[str, Any]:
    """Ceiling, mid_ratio and width (and the floor where no non-thinking score is published) minimising the squared
    error over the curve's points; every evaluation simulates the points through the model (common seeds)."""
    pub = np.array([a for _, a in cd.points])
    qm = QualityModel(qv.resolved(Curve(0.1, 0.9, 0.3, 1.0), cd.levels, p))

    def unpack(v: np.ndarray) -> Curve:
        floor = cd.floor if cd.floor is not None else float(pub[0]) * sigmoid(v[3])
        ceiling = floor + (1.0 - floor) * sigmoid(v[0])
        return Curve(floor, ceiling, math.exp(v[1]), math.exp(v[2]))

    def simulated(curve: Curve) -> np.ndarray:
        unbudgeted = qv.variant(qm)
        unbudgeted.params = replace(qm.params, curve=curve)
        base = qv.simulate(unbudgeted, cd.natural_tokens, qv.M_CURVE) if cd.kind == "mean" else None
        out = []
        for tokens, _ in cd.points:
            m = qv.variant(unbudgeted, int(tokens) if base is None else qv.budget_for_mean(base, tokens))
            out.append(qv.simulate(m, cd.natural_tokens, qv.M_CURVE).correct.mean())
        return np.array(out)

    def loss(v: np.ndarray) -> float:
        return float(np.sum((simulated(unpack(v)) - pub) ** 2))

    floor0 = cd.floor if cd.floor is not None else 0.8 * float(pub[0])
    share = (float(pub.max()) + 0.02 - floor0) / (1.0 - floor0)
    start = [logit(min(share, 0.98)), math.log(0.3), math.log(0.8)] + ([] if cd.floor is not None else [1.0])
    best = None
    for v0 in (np.array(start), np.array(start) + np.r_[0.0, 0.7, 0.3, [0.0] * (len(start) - 3)]):
        fit = minimize(loss, v0, method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-8, "maxiter": 400})
        if best is None or fit.fun < best.fun:
            best = fit
    assert best is not None
    curve = unpack(best.x)
    sim = simulated(curve)
    return {"floor": round(curve.floor, 4), "ceiling": round(curve.ceiling, 4), "mid_ratio": round(curve.mid_ratio, 4),
            "width": round(curve.width, 4), "natural_tokens": cd.natural_tokens,
            "natural_tokens_cv": qv.QUESTION_TOKENS_CV, "rmse_pts": round(qv.rmse_points(sim, pub), 2)}


# ----------------------------------------------------------------------------------------------- early exit


def fit_early_exit(rows: list[qv.DeerRow], p: dict[str, Any]) -> dict[str, float]:
    """Settle share matching the mean DEER token ratio over the model's benchmarks, then the accuracy change matching
    its mean accuracy change (both simulated per benchmark at the benchmark's vanilla accuracy and length)."""
    cr_pub = float(np.mean([r.deer_tokens / r.vanilla_tokens for r in rows]))
    da_pub = float(np.mean([r.deer_acc - r.vanilla_acc for r in rows]))

    def cr(settle: float) -> float:
        q = {**p, "settle_share": settle, "accuracy_change": 0.0}
        return float(np.mean([b / a for a, b, _, _ in (qv.deer_run(r, q) for r in rows)]))

    lo, hi = MIN_SETTLE_SHARE, 1.0
    settle = lo if cr(lo) >= cr_pub else (hi if cr(hi) <= cr_pub else brentq(lambda s: cr(s) - cr_pub, lo, hi,
                                                                              xtol=1e-4))

    def da(change: float) -> float:
        q = {**p, "settle_share": settle, "accuracy_change": change}
        return float(np.mean([d - c for _, _, c, d in (qv.deer_run(r, q) for r in rows)]))

    change = brentq(lambda x: da(x) - da_pub, -0.5, 0.5, xtol=1e-4)
    return {"settle_share": round(settle, 4), "accuracy_change": round(change, 4),
            "token_ratio": round(cr_pub, 4), "accuracy_change_published": round(da_pub, 4)}


# ----------------------------------------------------------------------------------------------- per-model table

# Query type <- benchmark (docs/quality.md, "Query types and benchmarks").
BENCHMARK_OF = {"factual": "GPQA-Diamond", "coding": "LiveCodeBench", "math_word": "MATH-500",
                "competition_math": "AIME24"}
R1_CARD = "DeepSeek-R1 model card / arXiv:2501.12948"
V3_TABLE = "DeepSeek-V3 column of the DeepSeek-R1 model card's table"
V3_REPORT = "DeepSeek-V3 report's comparison table (Llama-3.1-405B-Inst column)"
OSS_CARD = "gpt-oss model card arXiv:2508.10925, medium reasoning effort, no tools"
UNVERIFIED = " [figure recalled, not re-checked against the source]"
# (model, benchmark) -> (pass@1, source) for models whose natural length is their published setting.
PASS_AT_1: dict[tuple[str, str], tuple[float, str]] = {
    ("deepseek-r1", "GPQA-Diamond"): (0.715, R1_CARD), ("deepseek-r1", "LiveCodeBench"): (0.659, R1_CARD),
    ("deepseek-r1", "MATH-500"): (0.973, R1_CARD), ("deepseek-r1", "AIME24"): (0.798, R1_CARD),
    ("r1-distill-qwen-7b", "GPQA-Diamond"): (0.491, R1_CARD), ("r1-distill-qwen-7b", "LiveCodeBench"): (0.376, R1_CARD),
    ("r1-distill-qwen-7b", "MATH-500"): (0.928, R1_CARD), ("r1-distill-qwen-7b", "AIME24"): (0.555, R1_CARD),
    ("r1-distill-qwen-32b", "GPQA-Diamond"): (0.621, R1_CARD),
    ("r1-distill-qwen-32b", "LiveCodeBench"): (0.572, R1_CARD),
    ("r1-distill-qwen-32b", "MATH-500"): (0.943, R1_CARD), ("r1-distill-qwen-32b", "AIME24"): (0.726, R1_CARD),
    ("gpt-oss-120b", "GPQA-Diamond"): (0.731, OSS_CARD), ("gpt-oss-120b", "AIME24"): (0.804, OSS_CARD),
    ("llama-3.1-405b-fp8", "GPQA-Diamond"): (0.511, V3_REPORT), ("llama-3.1-405b-fp8", "MATH-500"): (0.738, V3_REPORT),
    ("llama-3.1-405b-fp8", "AIME24"): (0.233, V3_REPORT),
    ("llama-3.1-70b", "MATH-500"): (0.680, "Llama 3.1 Instruct model cards (Hugging Face meta-llama), MATH 0-shot CoT"),
    ("llama-3.1-8b", "MATH-500"): (0.519, "Llama 3.1 Instruct model cards (Hugging Face meta-llama), MATH 0-shot CoT"),
    ("qwen2.5-32b", "GPQA-Diamond"): (0.490, "s1 arXiv:2501.19393 Table 1, Qwen2.5-32B-Instruct" + UNVERIFIED),
    ("qwen2.5-32b", "MATH-500"): (0.840, "s1 arXiv:2501.19393 Table 1, Qwen2.5-32B-Instruct" + UNVERIFIED),
    ("qwen2.5-32b", "AIME24"): (0.267, "s1 arXiv:2501.19393 Table 1, Qwen2.5-32B-Instruct" + UNVERIFIED),
}
NO_THINKING: dict[tuple[str, str], tuple[float, str]] = {
    ("deepseek-r1", "GPQA-Diamond"): (0.591, V3_TABLE), ("deepseek-r1", "MATH-500"): (0.902, V3_TABLE),
    ("deepseek-r1", "AIME24"): (0.392, V3_TABLE),
}
REASONING = ("deepseek-r1", "r1-distill-qwen-7b", "r1-distill-qwen-32b", "qwen3-30b-a3b", "qwen3-235b-a22b",
             "gpt-oss-120b")
NON_REASONING = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b-fp8", "qwen2.5-32b")
NON_REASONING_FLOOR = 0.95  # assumed: a non-reasoning model's short chain of thought adds 5% to its accuracy


def deer_mean(rows: list[qv.DeerRow], models: tuple[str, ...], bench: str) -> float:
    return float(np.mean([r.vanilla_acc for r in rows if r.model in models and r.benchmark == bench]))


def model_table(curves: dict[str, dict[str, Any]], deer: list[qv.DeerRow]) -> dict[str, dict[str, Any]]:
    """models -> query type -> {pass_at_1, no_thinking_accuracy, source} or {curve, source}."""
    a1 = {name: float(qv.curve_of(c)(1.0)) for name, c in curves.items()}
    q3 = "qwen3-235b-a22b/"
    # Reference ratios of no-thinking to thinking accuracy, for reasoning models without a no-thinking score.
    ratio = {"GPQA-Diamond": (curves[q3 + "gpqa-diamond"]["floor"] / a1[q3 + "gpqa-diamond"],
                              "Qwen3-235B-A22B's GPQA-D non-thinking/thinking ratio"),
             "LiveCodeBench": (curves[q3 + "livecodebench-v5"]["floor"] / a1[q3 + "livecodebench-v5"],
                               "Qwen3-235B-A22B's LiveCodeBench non-thinking/thinking ratio"),
             "AIME24": (curves[q3 + "aime24"]["floor"] / a1[q3 + "aime24"],
                        "Qwen3-235B-A22B's AIME24 non-thinking/thinking ratio"),
             "MATH-500": (0.902 / 0.973, "DeepSeek-V3/DeepSeek-R1 MATH-500 ratio")}
    pass1 = dict(PASS_AT_1)
    # Qwen3: the 235B's MATH-500 and the 30B-A3B's benchmarks from DEER's nearest dense siblings (16k cap).
    pass1[("qwen3-235b-a22b", "MATH-500")] = (deer_mean(deer, ("Qwen3-32B",), "MATH-500"),
                                               "assumed: DEER's Qwen3-32B vanilla MATH-500 (nearest sibling)")
    sib = ("Qwen3-14B", "Qwen3-32B")
    for bench, deer_bench in (("GPQA-Diamond", "GPQA-D"), ("MATH-500", "MATH-500"), ("AIME24", "AIME24")):
        pass1[("qwen3-30b-a3b", bench)] = (deer_mean(deer, sib, deer_bench),
                                            "assumed: mean of DEER's Qwen3-14B and Qwen3-32B vanilla " + deer_bench)
    scale = pass1[("qwen3-30b-a3b", "AIME24")][0] / a1[q3 + "aime24"]
    pass1[("qwen3-30b-a3b", "LiveCodeBench")] = (a1[q3 + "livecodebench-v5"] * scale,
                                                  "assumed: Qwen3-235B-A22B's LiveCodeBench scaled by the 30B-A3B's "
                                                  "AIME24 ratio to it")
    # gpt-oss-120b: no MATH-500 or LiveCodeBench in its card: DeepSeek-R1's, scaled by their AIME24 ratio.
    oss = pass1[("gpt-oss-120b", "AIME24")][0] / pass1[("deepseek-r1", "AIME24")][0]
    for bench in ("MATH-500", "LiveCodeBench"):
        r1 = pass1[("deepseek-r1", bench)][0]
        pass1[("gpt-oss-120b", bench)] = (min(r1 * oss, 0.99), f"assumed: DeepSeek-R1's {bench} scaled by "
                                          "gpt-oss-120b's AIME24 ratio to it")
    # Llama 3.1 70B/8B: GPQA-D and AIME24 from the 405B by their MATH ratio (AIME by its square: harder problems
    # fall faster); LiveCodeBench for the non-reasoning models: GPT-4o-0513's 32.9 (R1 card) scaled the same way.
    for name in ("llama-3.1-70b", "llama-3.1-8b"):
        r = pass1[(name, "MATH-500")][0] / pass1[("llama-3.1-405b-fp8", "MATH-500")][0]
        pass1[(name, "GPQA-Diamond")] = (pass1[("llama-3.1-405b-fp8", "GPQA-Diamond")][0] * r,
                                         "assumed: Llama-3.1-405B's scaled by the MATH ratio")
        pass1[(name, "AIME24")] = (pass1[("llama-3.1-405b-fp8", "AIME24")][0] * r * r,
                                   "assumed: Llama-3.1-405B's scaled by the MATH ratio squared")
    for name in NON_REASONING:
        r = pass1[(name, "MATH-500")][0] / 0.746  # GPT-4o-0513's MATH-500 in the R1 card
        pass1[(name, "LiveCodeBench")] = (0.329 * r, "assumed: GPT-4o-0513's 32.9 (R1 card) scaled by the "
                                          "MATH-500 ratio")
    out: dict[str, dict[str, Any]] = {}
    for model in REASONING + NON_REASONING:
        entry: dict[str, Any] = {}
        for qt, bench in BENCHMARK_OF.items():
            if model == "qwen3-235b-a22b" and bench != "MATH-500":
                name = q3 + {"GPQA-Diamond": "gpqa-diamond", "LiveCodeBench": "livecodebench-v5",
                             "AIME24": "aime24"}[bench]
                entry[qt] = {"curve": name, "source": f"curve {name}: Qwen3 report Fig. 2 budgets, Table 12 floor"}
                continue
            p1, src = pass1[(model, bench)]
            if (model, bench) in NO_THINKING:
                floor, fsrc = NO_THINKING[(model, bench)]
            elif model in NON_REASONING:
                floor, fsrc = NON_REASONING_FLOOR * p1, f"assumed: {NON_REASONING_FLOOR} x pass@1 (non-reasoning)"
            else:
                floor, fsrc = p1 * ratio[bench][0], "assumed: pass@1 x " + ratio[bench][1]
            entry[qt] = {"pass_at_1": round(p1, 4), "no_thinking_accuracy": round(floor, 4),
                         "source": f"{bench}: pass@1 {src}; no reasoning {fsrc}"}
        entry["proof"] = _proof(entry, curves)
        entry["deepseek-r1-production"] = _production(entry, curves)
        out[model] = entry
    return out


def _point(e: dict[str, Any], curves: dict[str, dict[str, Any]]) -> tuple[float, float]:
    if "curve" in e:
        c = curves[e["curve"]]
        return float(qv.curve_of(c)(1.0)), c["floor"]
    return e["pass_at_1"], e["no_thinking_accuracy"]


def _proof(entry: dict[str, Any], curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    p1, floor = _point(entry["competition_math"], curves)
    return {"pass_at_1": round(0.5 * p1, 4), "no_thinking_accuracy": round(0.5 * floor, 4),
            "source": "assumed: half of competition_math's (no proof benchmark mapped)"}


def _production(entry: dict[str, Any], curves: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pts = [_point(entry[qt], curves) for qt in ("factual", "coding", "math_word")]
    return {"pass_at_1": round(float(np.mean([a for a, _ in pts])), 4),
            "no_thinking_accuracy": round(float(np.mean([b for _, b in pts])), 4),
            "source": "assumed: mean of factual, coding and math_word (a general mix; ServeGen has no accuracy)"}


# ----------------------------------------------------------------------------------------------- main


def fit_all(data: Path) -> dict[str, Any]:
    d = json.loads(OUT.read_text())
    p: dict[str, Any] = {**START, "num_wrong_answers": NUM_WRONG_ANSWERS, "wrong_tokens_factor": WRONG_TOKENS_FACTOR,
                         "sample_tokens_cv": SAMPLE_TOKENS_CV, "min_settle_share": MIN_SETTLE_SHARE}
    for i in range(VOTING_ITERATIONS):
        p["math500"] = fit_levels(p, data)
        p["dispersion"], p["top_wrong_share"] = fit_voting(p)
        print(f"levels and voting, pass {i + 1}: dispersion {p['dispersion']}, top wrong {p['top_wrong_share']}",
              flush=True)
    p["math500"] = fit_levels(p, data)
    p["reward_separation"] = fit_separation(p, {16: qv.SEED_VOTING["PRM@16"], 64: qv.SEED_VOTING["PRM@64"]})
    orm = fit_separation(p, {16: qv.SEED_VOTING["ORM@16"]})
    print(f"reward separation: PRM {p['reward_separation']}, ORM {orm}", flush=True)
    curves: dict[str, dict[str, Any]] = {}
    for cd in qv.curve_data(data):
        c = fit_curve(cd, p)
        floor_src = "Qwen3 report Table 12 non-thinking score" if cd.floor is not None else "fitted"
        pts = "Fig. 2 thinking budgets" if cd.kind == "budget" else "Fig. 1 budget forcing (x: mean thinking tokens)"
        paper = "Qwen3 report arXiv:2505.09388" if cd.model.startswith("Qwen3") else "s1 arXiv:2501.19393"
        curves[cd.name] = {**c, "source": f"{paper} {pts}; floor: {floor_src}; natural length: {cd.natural_source}"}
        print(f"curve {cd.name}: {c}", flush=True)
    qwen = [c for name, c in curves.items() if name.startswith("qwen3-235b-a22b/")]
    p["curve_shape"] = {"mid_ratio": round(float(np.exp(np.mean([math.log(c["mid_ratio"]) for c in qwen]))), 4),
                        "width": round(float(np.mean([c["width"] for c in qwen])), 4),
                        "source": "geometric mean mid_ratio and mean width of the four Qwen3-235B-A22B curves"}
    deer = qv.deer_rows(data)
    fits = {}
    for model in dict.fromkeys(r.model for r in deer):
        fits[model] = fit_early_exit([r for r in deer if r.model == model], p)
        print(f"early exit {model}: {fits[model]}", flush=True)
    mean_settle = round(float(np.mean([f["settle_share"] for f in fits.values()])), 4)
    mean_change = round(float(np.mean([f["accuracy_change"] for f in fits.values()])), 4)
    models = model_table(curves, deer)
    own = {"r1-distill-qwen-7b": ("R1-Distill-Qwen-7B",), "r1-distill-qwen-32b": ("R1-Distill-Qwen-32B",),
           "qwen3-235b-a22b": ("Qwen3-32B",), "qwen3-30b-a3b": ("Qwen3-14B", "Qwen3-32B")}
    for model, entry in models.items():
        names = own.get(model)
        if names is None:
            entry["_early_exit"] = {"settle_share": mean_settle, "accuracy_change": mean_change,
                                    "source": "assumed: the mean of DEER's eleven models"}
            continue
        what = "DEER fit over its seven benchmarks" if len(names) == 1 and model.startswith("r1") else \
            "assumed: DEER fit of " + " and ".join(names) + (" (nearest sibling)" if len(names) == 1 else
                                                             " (nearest siblings)")
        entry["_early_exit"] = {"settle_share": round(float(np.mean([fits[n]["settle_share"] for n in names])), 4),
                                "accuracy_change": round(float(np.mean([fits[n]["accuracy_change"] for n in names])),
                                                         4), "source": what}
    reasoning = [models[m] for m in REASONING]
    d.update({
        "_comment": "Written by bench/fit_quality.py; docs/quality.md gives every figure's source. Do not edit.",
        "voting": {"dispersion": p["dispersion"], "num_wrong_answers": NUM_WRONG_ANSWERS,
                   "top_wrong_share": p["top_wrong_share"], "reward_separation": p["reward_separation"],
                   "orm_reward_separation": orm,
                   "source": "fitted to seed 002's MATH-500 figures (pass@1 74%: vote@16 85%, vote@64 90%; PRM@16 "
                             "91%, PRM@64 94%; ORM@16 87% for orm_reward_separation); num_wrong_answers assumed"},
        "lengths": {"wrong_tokens_factor": WRONG_TOKENS_FACTOR, "sample_tokens_cv": SAMPLE_TOKENS_CV,
                    "question_tokens_cv": qv.QUESTION_TOKENS_CV,
                    "source": "assumed (direction: wrong answers are longer, arXiv:2501.18585); question_tokens_cv is "
                              "the spread of natural length between questions used by the fits"},
        "levels": {"math500": p["math500"],
                   "source": "MATH-500 level sizes; R1-Distill-Qwen-7B tokens by level (evalscope figure) and "
                             "accuracy by level (evalscope think_eval), shifts solved under the fitted dispersion"},
        "curve_shape": p["curve_shape"],
        "early_exit": {"settle_share": mean_settle, "accuracy_change": mean_change,
                       "min_settle_share": MIN_SETTLE_SHARE, "probe_every_tokens": qv.PROBE_EVERY_TOKENS,
                       "source": "mean of the DEER fits (arXiv:2504.15895 Table 5); min_settle_share from the "
                                 "42-69% of MATH-500 thinking after the first correct answer", "deer_fits": fits},
        "curves": curves,
        "query_types": {**{qt: {k: round(float(np.median([_point(e[qt], curves)[i] for e in reasoning])), 4)
                                for i, k in enumerate(("pass_at_1", "no_thinking_accuracy"))}
                           for qt in qv.QUERY_TYPE_ORDER},
                        "_other": {"pass_at_1": 0.70, "no_thinking_accuracy": 0.40},
                        "source": "median of the shipped reasoning models per query type; _other assumed"},
        "models": models,
    })
    return d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", type=Path, default=qv.DATA, help="../shared/data/reasoning-quality")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    d = fit_all(args.data)
    args.out.write_text(json.dumps(d, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
