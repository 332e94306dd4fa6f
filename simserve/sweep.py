"""Many runs of a scenario: a grid of `--set` overrides times seeds, through a concurrent.futures Executor (local
processes, or a Dask cluster's executor), cached by the hash of each resolved scenario; the tables they make (a row
per run; the mean and a 95% Student-t confidence interval across seeds per grid point) and paired comparisons of
two variants over the same seeds (common random numbers: both draw the same workload from the same seed).

No files and no terminal here: the cache is any object with `get` and `put` (the command line's is a folder,
output.CacheFolder), progress is a callback."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import yaml
from scipy.special import stdtr, stdtrit

from simserve.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from simserve.sim import Simulation

CONFIDENCE = 0.95
# Summary figures left out of the run table: the wall time differs run to run (a table must be the same bytes on
# every backend; it is kept in the cache and summed in the sweep's record instead), dicts are not scalars.
NOT_FIGURES = frozenset({"wall_time_s"})
# The figures `compare` prints (all numeric figures go into its table).
HEADLINE = ("ttft_s_p50", "ttft_s_p99", "time_to_answer_s_p99", "tpot_s_mean", "e2e_s_mean", "e2e_s_p99",
            "goodput", "throughput_output_tokens_per_s", "num_preemptions", "gpu_busy_share",
            "cost_usd_per_1k_completed", "accuracy", "usd_per_correct_answer")


class SweepError(Exception):
    """A sweep, comparison or capacity search that cannot be set up (bad grid, SLO or range syntax); the message
    is meant for the user as it is."""


# ------------------------------------------------------------------------------------------ the grid


def split_values(raw: str) -> list[str]:
    """'1,2,4' -> ['1', '2', '4']; commas inside [], {} or quotes do not split ('[1,2],[3]' is two values);
    'LO..HI' (integers) is every integer from LO to HI."""
    m = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", raw)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        if hi < lo:
            raise SweepError(f"{raw!r}: an empty range (LO..HI needs LO <= HI)")
        return [str(v) for v in range(lo, hi + 1)]
    out, depth, quote, cur = [], 0, "", ""
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    if any(v == "" for v in out):
        raise SweepError(f"{raw!r}: an empty value (expected v1,v2,... or LO..HI)")
    return out


def parse_axis(item: str, option: str) -> tuple[str, list[str]]:
    """'KEY=v1,v2' -> ('KEY', ['v1', 'v2'])."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
        raise SweepError(f"{option} {item!r}: expected dotted.key=v1,v2,... (or dotted.key=LO..HI)")
    try:
        return key, split_values(raw)
    except SweepError as exc:
        raise SweepError(f"{option} {key}: {exc}") from None


@dataclass(frozen=True)
class Point:
    """One grid point: the swept keys' values as written (YAML text), in the grid's key order."""

    values: tuple[tuple[str, str], ...]

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values]

    def typed(self) -> dict[str, Any]:
        """The values as the scenario reads them (YAML: '4' -> 4, 'h100-sxm' -> 'h100-sxm'); a list or mapping
        stays the text written, so a table column holds scalars."""
        out = {}
        for k, v in self.values:
            value = yaml.safe_load(v)
            out[k] = v if isinstance(value, list | dict) else value
        return out

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.values) or "(the scenario as written)"


def expand(grid: Sequence[str] = (), zips: Sequence[str] = ()) -> list[Point]:
    """The points of a sweep: the product of every --grid axis and of the --zip group (whose keys vary together,
    so they need equally many values), in order: the first axis varies slowest, as itertools.product does; the
    zip group is one axis after the grid axes. No axes: one point, the scenario as written."""
    axes: list[list[tuple[tuple[str, str], ...]]] = []
    seen: set[str] = set()

    def once(key: str, option: str) -> None:
        if key == "seed":
            raise SweepError(f"{option} seed: seeds are not a grid axis; give --seeds N (and --first-seed)")
        if key in seen:
            raise SweepError(f"{option} {key}: the key is swept twice")
        seen.add(key)

    for item in grid:
        key, values = parse_axis(item, "--grid")
        once(key, "--grid")
        axes.append([((key, v),) for v in values])
    if zips:
        parsed = [parse_axis(item, "--zip") for item in zips]
        for key, _ in parsed:
            once(key, "--zip")
        lengths = {len(v) for _, v in parsed}
        if len(lengths) > 1:
            shown = ", ".join(f"{k} has {len(v)}" for k, v in parsed)
            raise SweepError(f"--zip: the zipped keys vary together and need equally many values ({shown})")
        axes.append([tuple((k, v[i]) for k, v in parsed) for i in range(lengths.pop())])
    return [Point(tuple(itertools.chain.from_iterable(combo))) for combo in itertools.product(*axes)]


def seed_list(first: int, num_seeds: int) -> list[int]:
    if num_seeds < 1:
        raise SweepError(f"--seeds {num_seeds}: at least one seed")
    return list(range(first, first + num_seeds))


# ------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class Task:
    """One run: a grid point of a variant at a seed, its resolved scenario (YAML, relative files made absolute)
    and that text's hash, the cache key."""

    variant: str
    point: Point
    seed: int
    scenario_yaml: str
    base_dir: str | None
    usd_per_hour: float
    num_gpus: int

    @property
    def key(self) -> str:
        return hashlib.sha256(self.scenario_yaml.encode()).hexdigest()[:24]


def cluster_price(scenario: Scenario) -> tuple[float, int]:
    """The cluster's list price in USD per hour (every GPU of every pool, busy or not) and its number of GPUs."""
    gpus = [(p.replicas * p.tensor_parallel, scenario.gpu_of(p).usd_per_hour) for p in scenario.cluster.pools]
    return float(sum(n * usd for n, usd in gpus)), int(sum(n for n, _ in gpus))


def make_task(path: str | Path, overrides: Sequence[str], point: Point, seed: int, variant: str = "") -> Task:
    """Resolve a run's scenario; an unknown key or bad value is a SweepError naming the point."""
    try:
        scenario = load_scenario(path, [*overrides, *point.overrides, f"seed={seed}"])
    except ScenarioError as exc:
        where = f"{variant}: " if variant else ""
        raise SweepError(f"{where}{point.label()}: {exc}") from None
    usd, gpus = cluster_price(scenario)
    base = str(scenario.base_dir) if scenario.base_dir is not None else None
    return Task(variant, point, seed, scenario.to_yaml(), base, usd, gpus)


def make_tasks(path: str | Path, overrides: Sequence[str], points: Sequence[Point], seeds: Sequence[int],
               variant: str = "") -> list[Task]:
    """Every point at every seed, seeds innermost."""
    return [make_task(path, overrides, p, s, variant) for p in points for s in seeds]


def run_task(task: Task) -> dict[str, Any]:
    """Simulate one task (in a worker process): its scalar summary figures as plain Python numbers, and the run's
    wall time."""
    scenario = parse_scenario(yaml.safe_load(task.scenario_yaml), f"run {task.key}",
                              Path(task.base_dir) if task.base_dir else None)
    results = Simulation(scenario, scenario.base_dir).run()
    return cache_entry(results.summary)


def cache_entry(summary: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a run: its scalar summary figures as plain Python numbers (None as NaN), and the
    run's wall time."""
    figures: dict[str, Any] = {}
    for k, v in summary.items():
        if isinstance(v, np.generic):
            v = v.item()
        if k in NOT_FIGURES or not isinstance(v, int | float | bool) and v is not None:
            continue
        figures[k] = math.nan if v is None else v
    return {"figures": figures, "wall_s": float(summary["wall_time_s"])}


class Cache(Protocol):
    """Finished runs by task key."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


@dataclass
class MemoryCache:
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.runs.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.runs[key] = value


@dataclass
class Tally:
    """What a batch of runs did: ran, found in the cache, and the simulated work of both."""

    ran: int = 0
    cached: int = 0
    run_wall_s: float = 0.0  # summed wall time of the runs made now (not of cached ones)


OnDone = Callable[[Task, dict[str, Any], bool], None]


def run_tasks(tasks: Sequence[Task], executor: cf.Executor | None, cache: Cache, *,
              on_done: OnDone | None = None, tally: Tally | None = None) -> list[dict[str, Any]]:
    """Every task's result, in the order of `tasks`: from the cache when its key is there, else run on `executor`
    (in this process when None) and put in the cache as soon as it finishes, so an interrupted batch keeps what
    finished. Tasks with the same key run once. `on_done(task, result, cached)` is called as each one is known."""
    tally = tally if tally is not None else Tally()
    results: dict[str, dict[str, Any]] = {}
    todo: dict[str, Task] = {}
    for t in tasks:
        if t.key in results or t.key in todo:
            continue
        hit = cache.get(t.key)
        if hit is not None:
            results[t.key] = hit
            tally.cached += 1
            if on_done:
                on_done(t, hit, True)
        else:
            todo[t.key] = t

    def finish(t: Task, result: dict[str, Any]) -> None:
        cache.put(t.key, result)
        results[t.key] = result
        tally.ran += 1
        tally.run_wall_s += result["wall_s"]
        if on_done:
            on_done(t, result, False)

    if executor is None:
        for t in todo.values():
            finish(t, run_task(t))
    else:
        # On an error or Ctrl-C the runs still due are the executor owner's to drop (shutting it down).
        futures = {executor.submit(run_task, t): t for t in todo.values()}
        for fut in cf.as_completed(futures):
            finish(futures[fut], fut.result())
    return [results[t.key] for t in tasks]


# ------------------------------------------------------------------------------------------ tables


def runs_table(tasks: Sequence[Task], results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """A row per run, in task order: the variant (when named), every swept key, the seed, the scenario hash, the
    cluster's price and GPUs, then every scalar summary figure (NaN where a run has none)."""
    rows = []
    for t, r in zip(tasks, results, strict=True):
        head: dict[str, Any] = {"variant": t.variant} if t.variant else {}
        rows.append({**head, **t.point.typed(), "seed": t.seed, "scenario_hash": t.key,
                     "usd_per_hour": t.usd_per_hour, "num_gpus": t.num_gpus, **r["figures"]})
    df = pd.DataFrame(rows)
    for col in swept_keys(tasks):  # a key swept over values of mixed kinds (4 and 'auto') is a column of text
        if df[col].map(type).nunique() > 1:
            df[col] = df[col].map(str)
    return df


def swept_keys(tasks: Sequence[Task]) -> list[str]:
    return list(dict.fromkeys(k for t in tasks for k, _ in t.point.values))


def figure_columns(runs: pd.DataFrame, keys: Sequence[str] = ()) -> list[str]:
    """The numeric figures of a run table (not the swept keys, the variant, the seed or the hash)."""
    skip = {"variant", "seed", "scenario_hash", *keys}
    return [c for c in runs.columns if c not in skip and pd.api.types.is_numeric_dtype(runs[c])]


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """Mean and the two ends of its Student-t confidence interval over the finite values, and their number; NaN
    ends with fewer than two values (one seed says nothing about the spread)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan, n
    half = float(stdtrit(n - 1, 0.5 + confidence / 2) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


def summary_table(runs: pd.DataFrame, keys: Sequence[str], confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Per grid point (and variant) and figure: the number of seeds with a value, the mean, the standard deviation
    and the ends of the confidence interval of the mean (Student t, `confidence` two-sided), one row each."""
    group = [c for c in ("variant", *keys) if c in runs.columns]
    rows = []
    grouped = runs.groupby(group, sort=False, dropna=False) if group else [((), runs)]
    for values, sub in grouped:
        values = values if isinstance(values, tuple) else (values,)
        for col in figure_columns(runs, keys):
            x = sub[col].astype(float).to_numpy()
            mean, low, high, n = mean_ci(x, confidence)
            sd = float(np.nanstd(x, ddof=1)) if n > 1 else math.nan
            rows.append({**dict(zip(group, values, strict=True)), "figure": col, "num_seeds": n, "mean": mean,
                         "std": sd, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ paired comparison


def paired(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> dict[str, float]:
    """B - A paired by seed: the mean difference, its Student-t confidence interval and the two-sided p-value of
    a paired t test (NaN with fewer than two pairs). Identical pairs (every difference 0) give p = 1."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    d = d[np.isfinite(d)]
    mean, low, high, n = mean_ci(d, confidence)
    if n < 2:
        p = math.nan
    else:
        sd = float(d.std(ddof=1))
        if sd == 0.0:
            p = 1.0 if mean == 0.0 else 0.0
        else:
            p = float(2 * stdtr(n - 1, -abs(mean) / (sd / math.sqrt(n))))
    return {"diff_mean": mean, "diff_ci_low": low, "diff_ci_high": high, "p_value": p, "num_pairs": n}


def compare_table(runs: pd.DataFrame, a: str, b: str, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """Every figure of variants `a` and `b` side by side, paired by seed: the two means, B - A with its interval,
    the relative change, the p-value, and whether the difference is significant (the interval excludes 0)."""
    ra = runs[runs["variant"] == a].set_index("seed")
    rb = runs[runs["variant"] == b].set_index("seed")
    seeds = [s for s in ra.index if s in rb.index]
    rows = []
    for col in figure_columns(runs):
        xa, xb = ra.loc[seeds, col].astype(float), rb.loc[seeds, col].astype(float)
        if xa.isna().all() and xb.isna().all():
            continue
        d = paired(xa.to_numpy(), xb.to_numpy(), confidence)
        ma, mb = float(xa.mean()), float(xb.mean())
        significant = bool(d["num_pairs"] >= 2 and (d["diff_ci_low"] > 0 or d["diff_ci_high"] < 0
                                                    or (d["p_value"] == 0.0)))
        rows.append({"figure": col, "a_mean": ma, "b_mean": mb, **d,
                     "rel_diff": (mb - ma) / abs(ma) if ma else math.nan, "significant": significant})
    return pd.DataFrame(rows)
