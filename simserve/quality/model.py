"""Answer quality: accuracy against reasoning tokens, per-question success rates, wrong answers and voting.

The model (docs/quality.md has the derivation, the defaults and their sources):

- A query type has a mean accuracy curve over the reasoning a sample spends relative to its natural length,
  `A(x) = floor + (ceiling - floor) * sigmoid((ln x - ln mid_ratio) / width)`: A(0) is the non-thinking accuracy,
  A(1) the single-sample accuracy at natural length (pass@1).
- A question has a difficulty level d (its share, a length factor and a log-odds shift) and a latent z ~ N(0, 1).
  Its success rate at x is `p(x) = sigmoid(logit A(x) + c(A(x)) + shift_d + dispersion * z)`, with c chosen so that
  the mean over questions is A(x): questions differ, so votes over samples of one question are correlated (voting
  with one success rate for every question overstates its gains).
- A sample draws a uniform u; it is right iff u < p(x) at the tokens it spends (one u for all budgets: cutting a
  sample can only turn it wrong). A wrong sample's reasoning runs `wrong_tokens_factor` longer (underthinking);
  lengths are renormalised so the question's mean is kept. Wrong samples spread over `num_wrong_answers` answers,
  `top_wrong_share` of them on the most common one.
- A budget cuts reasoning at `max_reasoning_tokens` (x = budget / natural). Early exit stops at the first probe
  after the answer has settled (a share of the natural length, DEER's default per model) with the sample's
  natural-length success rate plus DEER's accuracy change.

All draws are vectorised over a batch of questions and come from the run's `quality` stream.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from simserve.quality.compression import KvCompressionSpec
from simserve.quality.spec import DifficultyLevel, EarlyExitSpec, ParallelSpec, QualitySpec


@lru_cache(maxsize=1)
def _gauss_hermite() -> tuple[np.ndarray, np.ndarray]:
    """48 Gauss-Hermite nodes and weights (summing to 1) for E[f(z)], z ~ N(0, 1); made on first use, so that
    importing simserve does not import numpy.polynomial."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(48)
    return nodes, weights / weights.sum()


_EPS = 1e-9


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, float)))


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, float), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


@lru_cache(maxsize=1)
def defaults() -> dict[str, Any]:
    """The shipped defaults (simserve/data/quality/defaults.json, written by bench/fit_quality.py)."""
    text = resources.files("simserve").joinpath("data/quality/defaults.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True)
class Curve:
    """Mean single-sample accuracy against x, the reasoning spent over the sample's natural length."""

    floor: float
    ceiling: float
    mid_ratio: float
    width: float

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, float)
        with np.errstate(divide="ignore"):
            s = sigmoid((np.log(np.maximum(x, 0.0)) - math.log(self.mid_ratio)) / self.width)
        return self.floor + (self.ceiling - self.floor) * s

    @classmethod
    def through(cls, floor: float, pass_at_1: float, mid_ratio: float, width: float) -> Curve:
        """The curve with this floor and shape whose value at natural length is pass_at_1 (if its ceiling would pass
        1, the ceiling is 1 and the midpoint moves instead)."""
        if not floor < pass_at_1 < 1.0:
            raise ValueError(f"pass_at_1 ({pass_at_1}) must lie between no_thinking_accuracy ({floor}) and 1")
        s1 = float(sigmoid(-math.log(mid_ratio) / width))
        ceiling = floor + (pass_at_1 - floor) / s1
        if ceiling <= 1.0:
            return cls(floor, ceiling, mid_ratio, width)
        share = (pass_at_1 - floor) / (1.0 - floor)
        return cls(floor, 1.0, math.exp(-width * float(logit(share))), width)


class Shift:
    """c(A): the log-odds offset that makes the mean over questions (levels and z) of the per-question success rate
    equal A. Solved once on a grid of A (bisection, vectorised) and interpolated."""

    def __init__(self, shares: np.ndarray, shifts: np.ndarray, dispersion: float) -> None:
        self.grid = np.linspace(-12.0, 12.0, 1201)  # logit A
        target = sigmoid(self.grid)
        gh_nodes, gh_weights = _gauss_hermite()
        w = (shares[:, None] * gh_weights[None, :]).ravel()
        offs = (shifts[:, None] + dispersion * gh_nodes[None, :]).ravel()
        lo = np.full_like(self.grid, -40.0)
        hi = np.full_like(self.grid, 40.0)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            mean = sigmoid((self.grid + mid)[:, None] + offs[None, :]) @ w
            high = mean > target
            hi = np.where(high, mid, hi)
            lo = np.where(high, lo, mid)
        self.offset = 0.5 * (lo + hi)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        la = logit(a)
        return la + np.interp(la, self.grid, self.offset)


@dataclass
class Draws:
    """One batch of questions (rows) x samples (columns)."""

    difficulty: np.ndarray  # (m,) level index from 1 (0: no levels)
    natural_tokens: np.ndarray  # (m, n) reasoning each sample would spend unhindered
    reasoning_tokens: np.ndarray  # (m, n) reasoning spent (after the budget and early exit), probes excluded
    probe_tokens: np.ndarray  # (m, n) tokens the early-exit probes generated
    p_correct: np.ndarray  # (m, n) success probability at the tokens spent
    correct: np.ndarray  # (m, n) bool
    answer_id: np.ndarray  # (m, n) 0: the right answer; k > 0: wrong answer k
    score: np.ndarray  # (m, n) the reward model's score (best_of_n)
    tiebreak: np.ndarray  # (m, n) uniform keys: plurality ties go to the answer with the smallest key
    exited: np.ndarray  # (m, n) bool: stopped by early exit
    cut: np.ndarray  # (m, n) bool: stopped by the budget

    def answer(self, row: int, model: QualityModel) -> Answer:
        """Row `row` as one request's answer state."""
        return Answer(self, row, model)


@dataclass(frozen=True)
class Resolved:
    """Every parameter of a query type's quality model, defaults filled in, with where each came from."""

    curve: Curve
    dispersion: float
    num_wrong_answers: int
    top_wrong_share: float
    wrong_tokens_factor: float
    sample_tokens_cv: float
    reward_separation: float
    levels: tuple[DifficultyLevel, ...]
    settle_share: float
    settle_spread: float
    accuracy_change: float
    min_settle_share: float
    source: str


def resolve(spec: QualitySpec | None, model: str, query_type: str,
            early_exit: EarlyExitSpec | None = None) -> Resolved:
    """Fill a query type's quality spec with the shipped defaults of its (model, query type)."""
    spec = spec or QualitySpec()
    d = defaults()
    model_entry = d["models"].get(model, {})
    qt = model_entry.get(query_type)
    if qt is not None:
        source = f"{model}/{query_type}: {qt.get('source', 'shipped')}"
    else:
        source = f"{model}/{query_type}: assumed: generic default for the query type (no entry for the model)"
        qt = d["query_types"].get(query_type, d["query_types"]["_other"])
    shape = d["curve_shape"]
    curve: Curve
    if spec.curve is not None:
        c = d["curves"].get(spec.curve)
        if c is None:
            raise ValueError(f"unknown curve {spec.curve!r}; shipped: {sorted(d['curves'])}")
        curve = Curve(c["floor"], c["ceiling"], c["mid_ratio"], c["width"])
        source = f"curve {spec.curve}: {c.get('source', 'shipped')}"
    elif "curve" in qt:
        c = d["curves"][qt["curve"]]
        curve = Curve(c["floor"], c["ceiling"], c["mid_ratio"], c["width"])
    else:
        curve = Curve.through(qt["no_thinking_accuracy"], qt["pass_at_1"], shape["mid_ratio"], shape["width"])
    if spec.pass_at_1 is not None or spec.no_thinking_accuracy is not None:
        p1 = spec.pass_at_1 if spec.pass_at_1 is not None else float(curve(1.0))
        floor = spec.no_thinking_accuracy if spec.no_thinking_accuracy is not None else min(curve.floor, 0.5 * p1)
        curve = Curve.through(floor, p1, curve.mid_ratio, curve.width)
        source = "given"
    v, lengths, ee = d["voting"], d["lengths"], d["early_exit"]
    ee_model = model_entry.get("_early_exit", {})
    if spec.difficulty is None:
        levels_name = "math500" if query_type in d["math_query_types"] else "none"
    else:
        levels_name = spec.difficulty if isinstance(spec.difficulty, str) else ""
    if levels_name == "none":
        levels: tuple[DifficultyLevel, ...] = ()
    elif levels_name:
        levels = tuple(DifficultyLevel(**lv) for lv in d["levels"][levels_name])
    else:
        assert isinstance(spec.difficulty, list)
        levels = tuple(spec.difficulty)

    def pick(given: Any, fallback: Any) -> Any:
        return fallback if given is None else given

    return Resolved(
        curve=curve,
        dispersion=pick(spec.dispersion, v["dispersion"]),
        num_wrong_answers=pick(spec.num_wrong_answers, v["num_wrong_answers"]),
        top_wrong_share=pick(spec.top_wrong_share, v["top_wrong_share"]),
        wrong_tokens_factor=pick(spec.wrong_tokens_factor, lengths["wrong_tokens_factor"]),
        sample_tokens_cv=pick(spec.sample_tokens_cv, lengths["sample_tokens_cv"]),
        reward_separation=pick(spec.reward_separation, v["reward_separation"]),
        levels=levels,
        settle_share=pick(early_exit.settle_share if early_exit else None,
                          ee_model.get("settle_share", ee["settle_share"])),
        settle_spread=early_exit.settle_spread if early_exit else 0.2,
        accuracy_change=pick(early_exit.accuracy_change if early_exit else None,
                             ee_model.get("accuracy_change", ee["accuracy_change"])),
        min_settle_share=ee["min_settle_share"],
        source=source,
    )


class QualityModel:
    """Draws questions, samples, lengths and answers for one query type."""

    def __init__(self, params: Resolved, budget_tokens: int | None = None,
                 early_exit: EarlyExitSpec | None = None, parallel: ParallelSpec | None = None,
                 compression: KvCompressionSpec | None = None) -> None:
        self.params = params
        self.compression = compression
        self.budget_tokens = budget_tokens
        self.early_exit = early_exit
        self.parallel = parallel
        self.n = parallel.n if parallel else 1
        if params.levels:
            shares = np.array([lv.share for lv in params.levels], float)
            self.shares = shares / shares.sum()
            factors = np.array([lv.tokens_factor for lv in params.levels], float)
            self.token_factors = factors / float(self.shares @ factors)
            self.shifts = np.array([lv.logit_shift for lv in params.levels], float)
        else:
            self.shares, self.token_factors, self.shifts = np.ones(1), np.ones(1), np.zeros(1)
        self.shift = Shift(self.shares, self.shifts, params.dispersion)

    @classmethod
    def build(cls, spec: QualitySpec | None, model: str, query_type: str, budget_tokens: int | None = None,
              early_exit: EarlyExitSpec | None = None, parallel: ParallelSpec | None = None,
              compression: KvCompressionSpec | None = None) -> QualityModel:
        return cls(resolve(spec, model, query_type, early_exit), budget_tokens, early_exit, parallel, compression)

    def success(self, x: np.ndarray, level: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Per-question success rate at reasoning share x (arrays broadcast)."""
        a = self.params.curve(x)
        return sigmoid(self.shift(a) + self.shifts[level] + self.params.dispersion * z)

    def draw(self, rng: np.random.Generator, natural_tokens: np.ndarray) -> Draws:
        """A batch of questions, one per entry of `natural_tokens` (the workload's reasoning length draws)."""
        p = self.params
        m, n = len(natural_tokens), self.n
        level = rng.choice(len(self.shares), size=m, p=self.shares)
        z = rng.standard_normal(m)
        u = rng.random((m, n))
        spread = rng.standard_normal((m, n))
        wrong_pick = rng.random((m, n))
        score_noise = rng.standard_normal((m, n))
        tiebreak = rng.random((m, n))
        settle = rng.random((m, n))
        p_nat = self.success(np.ones(m), level, z)[:, None]  # (m, 1) at natural length
        correct_nat = u < p_nat
        sd = math.sqrt(math.log1p(p.sample_tokens_cv**2))
        noise = np.exp(sd * spread - 0.5 * sd * sd)
        w = p.wrong_tokens_factor
        length_factor = np.where(correct_nat, 1.0, w) / (p_nat + (1.0 - p_nat) * w)
        base = np.asarray(natural_tokens, float)[:, None] * self.token_factors[level][:, None]
        natural = np.maximum(np.rint(base * noise * length_factor), 0).astype(np.int64)
        spent = natural.copy()
        cut = np.zeros((m, n), bool)
        if self.budget_tokens is not None:
            cut = natural > self.budget_tokens
            spent = np.minimum(spent, self.budget_tokens)
        x = np.where(natural > 0, spent / np.maximum(natural, 1), 1.0)
        prob = np.broadcast_to(self.success(x, level[:, None], z[:, None]), (m, n)).copy()
        exited = np.zeros((m, n), bool)
        probes = np.zeros((m, n), np.int64)
        ee = self.early_exit
        if ee is not None:
            every = ee.probe_every_tokens
            lo = max(p.min_settle_share, p.settle_share - p.settle_spread)
            hi = min(1.0, max(lo, p.settle_share + p.settle_spread))
            share = lo + (hi - lo) * settle
            exit_at = np.ceil(share * natural / every).astype(np.int64) * every
            exited = (exit_at < spent) & (exit_at > 0)
            spent = np.where(exited, exit_at, spent)
            cut &= ~exited
            prob = np.where(exited, np.clip(p_nat + p.accuracy_change, 0.0, 1.0), prob)
            probes = (spent // every) * ee.probe_tokens
        comp = self.compression
        if comp is not None:  # KV compression: no RNG call (the same questions and u as without it)
            kept = comp.kept_share(natural)
            prob = prob * comp.retention(kept)
            spent = np.rint(spent * comp.lengthening(kept)).astype(np.int64)
        correct = u < prob
        k = p.num_wrong_answers
        if k == 1:
            wrong_id = np.ones((m, n), np.int64)
        else:
            top = p.top_wrong_share
            rest = np.minimum(((wrong_pick - top) / max(1.0 - top, _EPS) * (k - 1)).astype(np.int64), k - 2)
            wrong_id = np.where(wrong_pick < top, 1, 2 + np.maximum(rest, 0))
        answer = np.where(correct, 0, wrong_id)
        score = score_noise + p.reward_separation * correct
        return Draws(level + (1 if p.levels else 0), natural, spent, probes, prob, correct, answer, score,
                     tiebreak, exited, cut)


def plurality(answers: np.ndarray, tiebreak: np.ndarray) -> int:
    """The answer most samples gave; a tie goes to the tied answer holding the smallest tiebreak key (uniform keys:
    a uniformly random pick among the tied answers)."""
    values, counts = np.unique(answers, return_counts=True)
    top = values[counts == counts.max()]
    if len(top) == 1:
        return int(top[0])
    best = {int(a): float(tiebreak[answers == a].min()) for a in top}
    return min(best, key=best.__getitem__)


def majority_accuracy(p: float, n: int) -> float:
    """Probability that a plurality vote of n independent samples, each right with probability p and otherwise
    giving the one wrong answer, is right (ties split evenly): the binomial majority formula."""
    total = 0.0
    for k in range(n + 1):
        term = math.comb(n, k) * p**k * (1.0 - p) ** (n - k)
        if 2 * k > n:
            total += term
        elif 2 * k == n:
            total += 0.5 * term
    return total


class Answer:
    """One request's question and samples (a row of a batch's Draws), and, once decided, its answer.

    The engine runs `engine_reasoning_tokens` of reasoning per sample: the reasoning spent plus the early-exit
    probes' tokens (a probe's trial answer is generated in the sequence, on the GPU). The aggregation decides from
    the samples that completed: `majority` (a plurality vote over all of them), `best_of_n` (the highest reward
    score), `first_finished` (a plurality over the first m to complete)."""

    __slots__ = ("difficulty", "reasoning", "probes", "p", "correct_samples", "answer_id", "score", "tiebreak",
                 "exited", "cut", "n", "aggregate", "m", "reward_pool", "completed", "resolved", "decided_s",
                 "correct", "tokens", "spent_tokens", "probe_spent", "recorded", "variants", "route_class",
                 "reference_correct")

    def __init__(self, draws: Draws, row: int, model: QualityModel) -> None:
        self.difficulty = int(draws.difficulty[row])
        self.reasoning = draws.reasoning_tokens[row]
        self.probes = draws.probe_tokens[row]
        self.p = draws.p_correct[row]
        self.correct_samples = draws.correct[row]
        self.answer_id = draws.answer_id[row]
        self.score = draws.score[row]
        self.tiebreak = draws.tiebreak[row]
        self.exited = draws.exited[row]
        self.cut = draws.cut[row]
        par = model.parallel
        self.n = model.n
        self.aggregate = par.aggregate if par else "majority"
        self.m = par.m if par else 1
        self.reward_pool = par.reward_pool if par else None
        self.completed: list[int] = []  # samples that completed, in completion order
        self.resolved = 0  # samples that ended (completed, rejected, cancelled)
        self.decided_s = math.nan
        self.correct: bool | None = None  # None: no answer (no sample completed)
        self.tokens = 0  # output tokens generated by all samples (probes included)
        self.spent_tokens = 0  # reasoning tokens spent by all samples (probes excluded)
        self.probe_spent = 0  # tokens generated by their early-exit probes
        self.recorded = False
        # Difficulty routing: the same question drawn for each (model, budget) a pool could answer it with (the
        # same random numbers: only the model's curve and the budget differ); the class the router predicted; and
        # whether the reference pool's answer would have been right (the counterfactual of accuracy_lost).
        self.variants: dict[tuple[str, int | None], Answer] | None = None
        self.route_class = ""
        self.reference_correct: bool | None = None

    def sample_reasoning_tokens(self, j: int) -> int:
        """Reasoning tokens the engine runs for sample j: reasoning spent plus probe tokens."""
        return int(self.reasoning[j] + self.probes[j])

    @property
    def engine_reasoning_tokens(self) -> int:
        """The request's reasoning in the engine: its one sample's, or the longest sample's (for length checks)."""
        return max(self.sample_reasoning_tokens(j) for j in range(self.n))

    @property
    def p_correct(self) -> float:
        """Mean success probability of the request's samples at the tokens they spend (the question's pass@1)."""
        return float(np.mean(self.p))

    def sample_ended(self, j: int, generated_tokens: int) -> None:
        """Sample j ended having generated `generated_tokens` (all of them if it completed): count its tokens. Its
        reasoning tokens come first, probes spread evenly among them."""
        self.tokens += generated_tokens
        reasoning, probes = int(self.reasoning[j]), int(self.probes[j])
        ran = min(generated_tokens, reasoning + probes)
        probe = probes * ran // (reasoning + probes) if reasoning + probes else 0
        self.probe_spent += probe
        self.spent_tokens += ran - probe

    def _right(self, idx: np.ndarray) -> bool:
        """Whether aggregating the samples `idx` gives the right answer."""
        if self.aggregate == "best_of_n":
            return bool(self.correct_samples[idx[int(np.argmax(self.score[idx]))]])
        return plurality(self.answer_id[idx], self.tiebreak[idx]) == 0

    def aggregate_all(self) -> bool:
        """Whether aggregating every sample gives the right answer (no serving: for counterfactuals)."""
        return self._right(np.arange(self.n))

    def decide(self, now_s: float, chosen: list[int] | None = None) -> None:
        """Aggregate the samples in `chosen` (default: every completed sample) and fix the answer."""
        pick = self.completed if chosen is None else chosen
        self.decided_s = now_s
        self.correct = self._right(np.asarray(pick)) if pick else None
