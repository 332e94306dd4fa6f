"""Capacity search: for each combination of discrete choices (GPU, router, ...), the smallest setting of one
monotone knob (replicas) that meets every SLO with confidence, found by bisection with every probe run over the
same seeds; then the cheapest combination and the Pareto front of cost against the SLO figure.

"Meets with confidence": for an SLO `FIGURE<=TARGET`, the one-sided 95% upper confidence bound of the figure's
mean across seeds (mean + t(0.95, n-1) s / sqrt(n), Student t over the per-seed values of the run's figure) is
within the target; for `FIGURE>=TARGET`, the lower bound. A probe whose interval straddles the target does not
meet it. The knob is assumed monotone (more replicas never make an SLO worse): bisection trusts that, and the
probes table shows every setting tried, so a violation is visible there."""

from __future__ import annotations

import concurrent.futures as cf
import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from simserve.sweep import (
    Cache,
    OnDone,
    Point,
    SweepError,
    Tally,
    Task,
    make_task,
    make_tasks,
    mean_ci,
    parse_axis,
    run_tasks,
    runs_table,
)

ONE_SIDED = 0.95  # the bound's confidence; the two-sided interval with these ends has confidence 0.90


@dataclass(frozen=True)
class Slo:
    """`figure op target`: a summary figure of a run (ttft_s_p99, goodput...) held to a bound."""

    figure: str
    op: str  # "<=" or ">="
    target: float

    def __str__(self) -> str:
        return f"{self.figure}{self.op}{self.target:g}"

    def bound(self, low: float, high: float) -> float:
        """The confidence bound that must be within the target: the upper one for <=, the lower one for >=."""
        return high if self.op == "<=" else low

    def met(self, low: float, high: float) -> bool:
        b = self.bound(low, high)
        return math.isfinite(b) and (b <= self.target if self.op == "<=" else b >= self.target)


def parse_slo(text: str) -> Slo:
    m = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=)\s*([-+0-9.eE]+)\s*", text)
    target = _number(m.group(3)) if m else None
    if m is None or target is None:
        raise SweepError(f"--slo {text!r}: expected FIGURE<=NUMBER or FIGURE>=NUMBER, a summary figure of a run "
                         "held to a bound (e.g. 'ttft_s_p99<=2' or 'goodput>=0.99')")
    return Slo(m.group(1), m.group(2), target)


def _number(text: str) -> float | None:
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class Knob:
    """The monotone knob: an integer setting searched from `lo` to `hi`."""

    key: str
    lo: int
    hi: int


def parse_vary(items: Sequence[str]) -> tuple[Knob, list[Point]]:
    """The --vary options: exactly one `KEY=LO..HI` (the knob searched) and any number of `KEY=a,b,c` (the
    discrete choices, every combination of them searched)."""
    knob: Knob | None = None
    axes: list[tuple[str, list[str]]] = []
    for item in items:
        key, values = parse_axis(item, "--vary")
        m = re.fullmatch(r"[^=]*=\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", item)
        if m:
            if knob is not None:
                raise SweepError(f"--vary {key}: only one knob is searched (already {knob.key}); give the others "
                                 "as a list of values, KEY=a,b,c")
            knob = Knob(key, int(m.group(1)), int(m.group(2)))
            if knob.lo < 1:
                raise SweepError(f"--vary {item}: the knob's range starts at 1 or more")
        elif any(k == key for k, _ in axes):
            raise SweepError(f"--vary {key}: given twice")
        else:
            axes.append((key, values))
    if knob is None:
        raise SweepError("--vary: give the knob to search as KEY=LO..HI (e.g. cluster.pools.0.replicas=1..64)")
    if any(k == knob.key for k, _ in axes):
        raise SweepError(f"--vary {knob.key}: given twice")
    combos: list[Point] = [Point(())]
    for key, values in axes:
        combos = [Point((*c.values, (key, v))) for c in combos for v in values]
    return knob, combos


@dataclass
class Bisection:
    """The smallest setting in lo..hi that meets the SLOs, assuming meeting them is monotone in the setting:
    `hi` first (if it fails, none does), then halving the gap between the largest failing and smallest meeting."""

    lo: int
    hi: int
    known: dict[int, bool] = field(default_factory=dict)

    def next(self) -> int | None:
        if self.hi not in self.known:
            return self.hi
        ok = self.answer()
        if ok is None:
            return None
        bad = max((v for v, m in self.known.items() if not m and v < ok), default=self.lo - 1)
        return None if ok - bad <= 1 else (bad + ok) // 2

    def answer(self) -> int | None:
        meeting = [v for v, m in self.known.items() if m]
        return min(meeting) if meeting else None


@dataclass
class PlanResult:
    knob: Knob
    slos: list[Slo]
    objective: str
    choices: list[str]  # the discrete choices' keys
    runs: pd.DataFrame  # a row per run, every probe of every combination
    probes: pd.DataFrame  # a row per (combination, setting): the SLO figures' means and bounds, the objective
    answers: pd.DataFrame  # a row per combination: the smallest setting, its cost and SLO figures, what binds
    cheapest: dict[str, Any] | None


def _check_figures(slos: Sequence[Slo], objective: str, figures: dict[str, Any]) -> None:
    for name, option in [*((s.figure, f"--slo {s}") for s in slos), (objective, f"--objective {objective}")]:
        if name not in figures and name not in ("usd_per_hour", "num_gpus"):
            near = difflib.get_close_matches(name, [*figures, "usd_per_hour", "num_gpus"], n=3)
            hint = f"; did you mean {' or '.join(near)}?" if near else ""
            raise SweepError(f"{option}: {name!r} is not a summary figure of this scenario's runs{hint}")


def probe_row(combo: Point, knob: Knob, value: int, slos: Sequence[Slo], objective: str,
              runs: pd.DataFrame) -> dict[str, Any]:
    """One probe (a combination at a setting) from its runs: each SLO figure's mean and bound, met or not."""
    row: dict[str, Any] = {**combo.typed(), knob.key: value, "num_seeds": len(runs)}
    row["objective"] = float(runs[objective].astype(float).mean())
    # Seeds whose run could not keep up (its queue grew: metrics' saturation test): past the cliff, every SLO fails.
    row["saturated_seeds"] = int(runs["saturated"].astype(bool).sum()) if "saturated" in runs else 0
    failing, undecided = [], True
    for s in slos:
        mean, low, high, _ = mean_ci(runs[s.figure].astype(float), 2 * ONE_SIDED - 1)
        row[f"{s.figure}_mean"] = mean
        row[f"{s.figure}_bound"] = s.bound(low, high)
        if not s.met(low, high):
            failing.append(str(s))
            undecided = undecided and s.met(mean, mean)  # the mean is within the target, the bound is not
    row["meets"] = not failing
    row["undecided"] = bool(failing) and undecided
    row["failing"] = ", ".join(failing)
    return row


def plan(path: str | Path, overrides: Sequence[str], slos: Sequence[Slo], knob: Knob, combos: Sequence[Point],
         seeds: Sequence[int], executor: cf.Executor | None, cache: Cache, *, objective: str = "usd_per_hour",
         max_seeds: int | None = None, on_done: OnDone | None = None, tally: Tally | None = None) -> PlanResult:
    """Search every combination at once, a round of probes at a time (each round's runs go to the executor
    together, so they fill its workers). A probe that is undecided (every SLO it fails is met by the mean but not
    by the bound) is run again with twice the seeds, up to `max_seeds`, before it counts as failing: more seeds
    narrow the bound. Every setting runs the same seeds (common random numbers), extended on from the last given."""
    if len(seeds) < 2:
        raise SweepError("--seeds: a capacity search needs at least 2 seeds (one says nothing about the spread)")
    if not slos:
        raise SweepError("--slo: give at least one SLO, e.g. --slo 'ttft_s_p99<=2'")
    most = max(max_seeds or len(seeds), len(seeds))
    searches = [Bisection(knob.lo, knob.hi) for _ in combos]
    broken = _unbuildable(path, overrides, knob, combos, seeds[0])
    for i in broken:
        searches[i].known[knob.hi] = False  # nothing to search: reported as it is
    num_seeds: dict[tuple[int, int], int] = {}
    done: dict[tuple[int, int], tuple[list[Task], list[dict[str, Any]], dict[str, Any]]] = {}
    while due := [(i, v) for i, b in enumerate(searches) if (v := b.next()) is not None]:
        sized = [(i, v, _first(seeds, num_seeds.get((i, v), len(seeds)))) for i, v in due]
        tasks = [make_tasks(path, overrides, [Point((*combos[i].values, (knob.key, str(v))))], s) for i, v, s in sized]
        flat = run_tasks([t for ts in tasks for t in ts], executor, cache, on_done=on_done, tally=tally)
        if not done:
            _check_figures(slos, objective, flat[0]["figures"])
        at = 0
        for (i, v, s), ts in zip(sized, tasks, strict=True):
            results, at = flat[at:at + len(ts)], at + len(ts)
            row = probe_row(combos[i], knob, v, slos, objective, runs_table(ts, results))
            if not row["meets"] and row["undecided"] and len(s) < most:
                num_seeds[(i, v)] = min(2 * len(s), most)  # the same setting again next round, with more seeds
                continue
            searches[i].known[v] = row["meets"]
            done[(i, v)] = (ts, results, row)
    probe_df = pd.DataFrame([row for _, _, row in done.values()])
    probe_df["pareto"] = pareto_front(probe_df["objective"], probe_df[f"{slos[0].figure}_mean"], slos[0].op)
    answers = _answers(combos, searches, knob, probe_df, broken)
    feasible = answers[answers["meets"]]
    cheapest = None if feasible.empty else feasible.sort_values("objective", kind="stable").iloc[0].to_dict()
    runs = runs_table([t for ts, _, _ in done.values() for t in ts], [r for _, rs, _ in done.values() for r in rs])
    return PlanResult(knob, list(slos), objective, list(dict.fromkeys(k for c in combos for k, _ in c.values)),
                      runs, probe_df, answers, cheapest)


def _first(seeds: Sequence[int], n: int) -> list[int]:
    """The first n seeds: those given, then on from the last of them."""
    return [*seeds[:n], *range(seeds[-1] + 1, seeds[-1] + 1 + n - len(seeds))]


def _unbuildable(path: str | Path, overrides: Sequence[str], knob: Knob, combos: Sequence[Point],
                 seed: int) -> dict[int, str]:
    """The combinations whose scenario is refused at the top of the knob's range (a model too big for a GPU type):
    why, by index. Every one refused is an error (nothing would be searched)."""
    broken = {}
    for i, combo in enumerate(combos):
        try:
            make_task(path, overrides, Point((*combo.values, (knob.key, str(knob.hi)))), seed)
        except SweepError as exc:
            broken[i] = str(exc).replace("\n", " ")
    if len(broken) == len(combos):
        raise SweepError(next(iter(broken.values())) if len(combos) == 1 else "no combination can be built:\n"
                         + "\n".join(broken.values()))
    return broken


def _answers(combos: Sequence[Point], searches: Sequence[Bisection], knob: Knob, probes: pd.DataFrame,
             broken: dict[int, str]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for i, (combo, search) in enumerate(zip(combos, searches, strict=True)):
        if i in broken:
            rows.append({**combo.typed(), knob.key: None, "objective": math.nan, "meets": False,
                         "binds": f"cannot be built: {broken[i]}"})
            continue
        mine = probes
        for k, v in combo.typed().items():
            mine = mine[mine[k] == v]
        best = search.answer()
        at = mine[mine[knob.key] == (best if best is not None else knob.hi)].iloc[0].to_dict()
        if best is None:
            binds = f"{at['failing']} (even at {knob.hi}, the top of the range{_saturated(at)})"
        elif best == knob.lo:
            binds = f"none (met at {knob.lo}, the bottom of the range)"
        else:
            below = mine[mine[knob.key] == best - 1].iloc[0].to_dict()
            binds = f"{below['failing']} (not met at {best - 1}{_saturated(below)})"
        rows.append({**at, knob.key: best, "meets": best is not None, "binds": binds})
    return pd.DataFrame(rows).drop(columns=["failing"], errors="ignore")


def _saturated(probe: dict[str, Any]) -> str:
    k = probe["saturated_seeds"]
    return f"; saturated in {k} of {probe['num_seeds']} seeds" if k else ""


def pareto_front(cost: Sequence[float], figure: Sequence[float], op: str = "<=") -> list[bool]:
    """Which points no other point beats on both cost (lower is better) and the figure (lower is better for a
    `<=` SLO, higher for `>=`): at least as good on both and better on one."""
    sign = 1.0 if op == "<=" else -1.0
    pts = [(float(c), sign * float(f)) for c, f in zip(cost, figure, strict=True)]
    return [not any(c2 <= c and f2 <= f and (c2 < c or f2 < f) for c2, f2 in pts) for c, f in pts]
