"""The what-if dashboard's logic (app.py holds only its widgets): the knobs a scenario offers and the `--set`
overrides they make (so every knob goes through the scenario's own validation, with its path-named errors), one
run with its records and progress, the headline figures, and A/B comparisons, sweeps and capacity searches through
sweep.py and plan.py. Every run is keyed by the hash of its resolved scenario (sweep.Task.key), and one store keeps
them: its figures are the sweep cache (shared by the single run, compare, sweep and plan), its records (for the
charts of one run) the last few runs. No Streamlit here: plain functions, tested without a browser."""

from __future__ import annotations

import concurrent.futures as cf
import io
import math
import multiprocessing
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from simserve.engine.hooks import Hooks
from simserve.hardware import GPUS
from simserve.output import group_tables
from simserve.plan import PlanResult, parse_slo, parse_vary, plan
from simserve.progress import expected_requests
from simserve.report import notices as summary_notices
from simserve.report import number, share
from simserve.request import Request
from simserve.scenario import Scenario, load_scenario, parse_scenario
from simserve.schedulers import SchedulerKind
from simserve.sim import Simulation
from simserve.sweep import (
    HEADLINE,
    Cache,
    MemoryCache,
    OnDone,
    Point,
    Task,
    cache_entry,
    compare_table,
    expand,
    make_task,
    make_tasks,
    run_tasks,
    runs_table,
    summary_table,
)

ROUTERS = ("round_robin", "random", "least_outstanding", "least_kv", "power_of_two", "prefix_affinity")
SCHEDULERS: tuple[str, ...] = SchedulerKind.__args__  # type: ignore[attr-defined]
TRACE_CACHES = ("off", "exact", "semantic", "step")
KV_METHODS = ("off", "rkv", "snapkv", "h2o")
DEFAULT_CONCEPTS = 10_000  # concepts given to a mix entry that has none when trace reuse is turned on


# ------------------------------------------------------------------------------------------ scenarios


def shipped_scenarios(root: Path) -> list[str]:
    """The scenario files under root/scenarios (not its data folder), quickstart first, as paths relative to
    root."""
    found = sorted(p.relative_to(root).as_posix() for p in (root / "scenarios").rglob("*.yaml")
                   if "data" not in p.relative_to(root / "scenarios").parts)
    return sorted(found, key=lambda p: (not p.endswith("/quickstart.yaml"), p))


def save_upload(name: str, data: bytes, folder: Path) -> Path:
    """An uploaded scenario written under its own file name in `folder` (so errors name the file the user chose);
    the name's folders are dropped."""
    path = Path(folder) / (Path(name).name or "uploaded.yaml")
    path.write_bytes(data)
    return path


def upload_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="simserve-upload-"))


# ------------------------------------------------------------------------------------------ knobs


Chosen = Mapping[str, Any]


def _yaml(value: Any) -> str:
    """A value as `--set` reads it: YAML flow style on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


@dataclass(frozen=True)
class Knob:
    """One widget: `key` names it (a dotted scenario path where it sets one field), `value` is the scenario's own
    setting. `emit(chosen)` makes its `--set` overrides from every knob's chosen value (default: key=value) and
    runs only when a key of `watch` (default: the knob's own) moved from the scenario's; `active(chosen)` says
    whether it applies at all (a classifier's accuracy only under the difficulty router)."""

    key: str
    label: str
    kind: str  # select, int, float, bool
    value: Any
    group: str
    options: tuple[Any, ...] = ()
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    help: str = ""
    emit: Callable[[Chosen], list[str]] | None = None
    watch: tuple[str, ...] = ()
    active: Callable[[Chosen], bool] | None = None

    def overrides(self, chosen: Chosen, defaults: Chosen) -> list[str]:
        if self.active is not None and not self.active(chosen):
            return []
        watched = self.watch or (self.key,)
        if all(chosen.get(k, defaults[k]) == defaults[k] for k in watched):
            return []
        if self.emit is not None:
            return self.emit(chosen)
        return [f"{self.key}={_yaml(chosen.get(self.key, self.value))}"]


def knobs(scenario: Scenario) -> list[Knob]:
    """The knobs this scenario offers, in the order the page shows them: workload, each pool, policies, answers
    (per query type), KV compression, trace reuse. A knob's value is the scenario's setting, so the untouched
    page is the scenario as written."""
    return [*_workload_knobs(scenario), *_pool_knobs(scenario), *_policy_knobs(scenario),
            *_answer_knobs(scenario), *_compression_knobs(scenario), *_reuse_knobs(scenario)]


def defaults_of(ks: Sequence[Knob]) -> dict[str, Any]:
    return {k.key: k.value for k in ks}


def overrides_for(ks: Sequence[Knob], chosen: Chosen) -> list[str]:
    """The `--set` overrides that turn the scenario into the chosen setting (none for knobs left as they are)."""
    defaults = defaults_of(ks)
    return [o for k in ks for o in k.overrides(chosen, defaults)]


def _workload_knobs(s: Scenario) -> list[Knob]:
    w, g = s.workload, "Workload"
    out = []
    if w.num_requests is not None:
        out.append(Knob("workload.num_requests", "requests", "int", w.num_requests, g, lo=1, step=100,
                        help="arrivals simulated (the run stops after this many)"))
    if w.duration_s is not None:
        out.append(Knob("workload.duration_s", "duration (s)", "float", float(w.duration_s), g, lo=1.0,
                        help="arrivals stop at this time"))
    if w.arrival is not None and w.arrival.rate_per_s is not None:
        out.append(Knob("workload.arrival.rate_per_s", "arrival rate (requests/s)", "float",
                        float(w.arrival.rate_per_s), g, lo=0.001, step=0.5))
    elif w.rate_per_user_per_s is not None:
        out.append(Knob("workload.num_users", "users (the rate is users x rate per user)", "int", w.num_users, g,
                        lo=1))
    if w.trace is not None:
        out.append(Knob("workload.trace.rate_scale", "trace speed-up (rate scale)", "float", w.trace.rate_scale, g,
                        lo=0.01, step=0.25, help="2 replays the trace twice as fast"))
    for i, q in enumerate(w.mix or []):
        out.append(Knob(f"workload.mix.{i}.weight", f"mix weight: {q.query_type}", "float", float(q.weight), g,
                        lo=0.001, step=0.5, help="relative share of arrivals"))
    return out


def _pool_knobs(s: Scenario) -> list[Knob]:
    out = []
    for i, p in enumerate(s.cluster.pools):
        g = f"Pool {p.name}" + (f" ({p.role})" if p.role != "both" else "")
        if isinstance(p.gpu, str):
            out.append(Knob(f"cluster.pools.{i}.gpu", "GPU", "select", p.gpu, g, options=tuple(GPUS)))
        out.append(Knob(f"cluster.pools.{i}.replicas", "replicas", "int", p.replicas, g, lo=1, hi=1024))
        out.append(Knob(f"cluster.pools.{i}.tensor_parallel", "tensor parallel (GPUs per replica)", "select",
                        p.tensor_parallel, g, options=tuple(sorted({1, 2, 4, 8, p.tensor_parallel}))))
        out.append(Knob(f"cluster.pools.{i}.prefix_caching", "prefix caching", "bool", p.prefix_caching, g))
    return out


def _policy_knobs(s: Scenario) -> list[Knob]:
    g = "Policies"
    router = s.router.kind
    out = [Knob("scheduler", "scheduler", "select", s.scheduler.kind, g,
                options=tuple(dict.fromkeys((s.scheduler.kind, *SCHEDULERS))),
                help="the waiting queue's order and the preemption victim (docs/policies.md)"),
           Knob("router", "router", "select", router, g, options=tuple(dict.fromkeys((router, *ROUTERS))),
                help="which replica an arriving request goes to; by_query_type and by_difficulty keep the "
                "scenario's table")]
    if router == "by_difficulty":
        acc = getattr(s.router, "classifier_accuracy", 1.0)
        out.append(Knob("router.classifier_accuracy", "difficulty routing: classifier accuracy", "float", acc, g,
                        lo=0.0, hi=1.0, step=0.05, active=lambda c: c.get("router", router) == "by_difficulty",
                        help="probability the classifier predicts a question's difficulty class"))
    return out


def _answer_knobs(s: Scenario) -> list[Knob]:
    out = []
    for i, q in enumerate(s.workload.mix or []):
        g, base = f"Answers: {q.query_type}", f"workload.mix.{i}"
        out.append(Knob(f"{base}.max_reasoning_tokens", "reasoning budget (tokens; 0: none)", "int",
                        q.max_reasoning_tokens or 0, g, lo=0, step=512, emit=partial(_budget, base)))
        probe = q.early_exit.probe_every_tokens if q.early_exit else 0
        out.append(Knob(f"{base}.early_exit.probe_every_tokens", "early exit: probe every (tokens; 0: off)", "int",
                        probe, g, lo=0, step=100, emit=partial(_early_exit, base, q.early_exit is not None)))
        n = q.parallel.n if q.parallel else 1
        aggs = ("majority", "first_finished", *(("best_of_n",) if q.parallel and q.parallel.aggregate == "best_of_n"
                                                  else ()))
        agg = q.parallel.aggregate if q.parallel else "majority"
        out.append(Knob(f"{base}.parallel.n", "samples per request (n)", "int", n, g, lo=1, hi=256,
                        watch=(f"{base}.parallel.n", f"{base}.parallel.aggregate"),
                        emit=partial(_parallel, base, q.parallel is not None)))
        out.append(Knob(f"{base}.parallel.aggregate", "aggregation of the samples", "select", agg, g,
                        options=tuple(dict.fromkeys((agg, *aggs))), emit=_nothing))
    return out


def _nothing(c: Chosen) -> list[str]:
    return []  # a knob another one's overrides carry


def _budget(base: str, c: Chosen) -> list[str]:
    return [f"{base}.max_reasoning_tokens={c[f'{base}.max_reasoning_tokens'] or 'null'}"]


def _early_exit(base: str, had: bool, c: Chosen) -> list[str]:
    every = c[f"{base}.early_exit.probe_every_tokens"]
    if not every:
        return [f"{base}.early_exit=null"]
    if had:
        return [f"{base}.early_exit.probe_every_tokens={every}"]
    return [f"{base}.early_exit={{probe_every_tokens: {every}}}"]


def _parallel(base: str, had: bool, c: Chosen) -> list[str]:
    n, agg = c[f"{base}.parallel.n"], c[f"{base}.parallel.aggregate"]
    if n <= 1:
        return [f"{base}.parallel=null"] if had else []
    if had:
        return [f"{base}.parallel.n={n}", f"{base}.parallel.aggregate={agg}"]
    return [f"{base}.parallel={{n: {n}, aggregate: {agg}}}"]


def _serving_pools(s: Scenario) -> list[int]:
    return [i for i, p in enumerate(s.cluster.pools) if p.role != "prefill" and p.name not in s.reward_pools]


def _compression_knobs(s: Scenario) -> list[Knob]:
    g = "KV compression"
    spec = s.answer_compression
    method = spec.method if spec else "off"
    share_ = spec.budget_share if spec and spec.budget_share is not None else 0.5
    pools = _serving_pools(s)

    def emit(c: Chosen) -> list[str]:
        m, b = c["kv_compression.method"], c["kv_compression.budget_share"]
        if m == method == "off":
            return []  # the share of a compression that stays off
        value = "null" if m == "off" else f"{{method: {m}, budget_share: {b}}}"
        return [f"cluster.pools.{i}.kv_compression={value}" for i in pools]

    return [Knob("kv_compression.method", "KV compression of generated tokens", "select", method, g,
                 options=KV_METHODS, watch=("kv_compression.method", "kv_compression.budget_share"), emit=emit,
                 help="every pool that decodes requests (they share one); docs/policies.md"),
            Knob("kv_compression.budget_share", "KV kept (share of generated tokens)", "float", share_, g, lo=0.05,
                 hi=1.0, step=0.05, emit=_nothing)]


def _reuse_knobs(s: Scenario) -> list[Knob]:
    w, g = s.workload, "Trace reuse"
    if w.mix is None:
        return []
    kind = w.trace_cache.kind if w.trace_cache else "off"
    minting = w.minting is not None
    bare = [i for i, q in enumerate(w.mix) if q.concepts is None]

    def concepts(c: Chosen) -> list[str]:
        on = c["workload.trace_cache"] != "off" or c["workload.minting"]
        return [f"workload.mix.{i}.concepts={{num_concepts: {DEFAULT_CONCEPTS}}}" for i in bare] if on else []

    def emit_cache(c: Chosen) -> list[str]:
        k = c["workload.trace_cache"]
        if k == "off":
            value = ["workload.trace_cache=null"]
        elif w.trace_cache is not None:
            value = [f"workload.trace_cache.kind={k}"]
        else:
            value = [f"workload.trace_cache={{kind: {k}}}"]
        off = k == "off" and not c["workload.minting"] and w.reuse_history_s is not None
        return [*value, *concepts(c), *(["workload.reuse_history_s=null"] if off else [])]

    def emit_minting(c: Chosen) -> list[str]:
        value = ["workload.minting={}" if c["workload.minting"] else "workload.minting=null"]
        # The cache knob already gave the mix its concepts, and dropped the history when both are off.
        if c["workload.trace_cache"] == kind:
            off = not c["workload.minting"] and kind == "off" and w.reuse_history_s is not None
            value += [*concepts(c), *(["workload.reuse_history_s=null"] if off else [])]
        return value

    note = (f"; query types without concepts get {DEFAULT_CONCEPTS:,} (Zipf 0.8)" if bare else "")
    return [Knob("workload.trace_cache", "trace cache", "select", kind, g, options=TRACE_CACHES, emit=emit_cache,
                 help="reuse reasoning traces of the same concept (docs/model.md, Trace reuse)" + note),
            Knob("workload.minting", "minted tokens (nightly job)", "bool", minting, g, emit=emit_minting,
                 help="frequent reasoning steps minted into short tokens (docs/model.md)" + note)]


# ------------------------------------------------------------------------------------------ runs and the store


@dataclass
class RunView:
    """One run as the page shows it: its summary and group tables, its records, its pools and its scenario."""

    key: str
    name: str
    scenario_yaml: str
    summary: dict[str, Any]
    tables: dict[str, Any]
    requests: pd.DataFrame
    replicas: pd.DataFrame
    pools: list[dict[str, Any]]
    usd_per_hour: float
    num_gpus: int


@dataclass
class RunStore:
    """Every run the page made, by the hash of its resolved scenario: the figures in `figures` (any sweep.Cache:
    compare, sweep and plan read and fill the same one, so a run made once is never made again), the records of
    the last `max_views` single runs in memory (their charts: going back to a setting shows them at once)."""

    figures: Cache = field(default_factory=MemoryCache)
    max_views: int = 16
    views: OrderedDict[str, RunView] = field(default_factory=OrderedDict)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.figures.get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.figures.put(key, value)

    def view(self, key: str) -> RunView | None:
        v = self.views.get(key)
        if v is not None:
            self.views.move_to_end(key)
        return v

    def keep(self, v: RunView) -> None:
        self.views[v.key] = v
        self.views.move_to_end(v.key)
        while len(self.views) > self.max_views:
            self.views.popitem(last=False)


Progress = Callable[[float, str], None]


class _Watch(Hooks):
    """Calls `report(fraction done, what)` at most every `every_s` seconds of wall time as requests end."""

    def __init__(self, expected: float | None, report: Progress, every_s: float = 0.2) -> None:
        self.expected, self.report, self.every_s = expected, report, every_s
        self.ended, self.last = 0, time.monotonic()

    def finished(self, req: Request) -> None:
        if req.parent is not None:
            return
        self.ended += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            frac = min(self.ended / self.expected, 1.0) if self.expected else 0.0
            of = f" of about {self.expected:,.0f}" if self.expected else ""
            self.report(frac, f"{self.ended:,} requests ended{of}")


def task_for(path: str | Path, overrides: Sequence[str], seed: int | None = None) -> Task:
    """The run of a scenario with overrides (its resolved scenario and hash); raises SweepError (naming the
    scenario file and the field) for a bad one."""
    if seed is None:
        seed = load_scenario(path, list(overrides)).seed
    return make_task(path, overrides, Point(()), seed)


def run_one(task: Task, store: RunStore, progress: Progress | None = None) -> tuple[RunView, bool]:
    """The run of `task` with its records: from the store if it holds them (True), else simulated now, with
    `progress` told as requests end, its figures put in the store's cache and its records kept."""
    hit = store.view(task.key)
    if hit is not None:
        return hit, True
    scenario = parse_scenario(yaml.safe_load(task.scenario_yaml), f"run {task.key}",
                              Path(task.base_dir) if task.base_dir else None)
    hooks = [_Watch(expected_requests(scenario), progress)] if progress else []
    results = Simulation(scenario, scenario.base_dir, hooks=hooks).run()
    view = RunView(task.key, scenario.name, task.scenario_yaml, dict(results.summary), group_tables(results),
                   results.requests, results.replicas, [dict(p) for p in results.pools], task.usd_per_hour,
                   task.num_gpus)
    store.put(task.key, cache_entry(results.summary))
    store.keep(view)
    return view, False


@contextmanager
def executor(workers: int) -> Iterator[cf.Executor | None]:
    """Local worker processes for many runs (spawned: nothing shared with the page's process), or None (the
    page's own process) for one worker."""
    if workers <= 1:
        yield None
        return
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


# ------------------------------------------------------------------------------------------ figures


def headline(view: RunView) -> list[tuple[str, str, str]]:
    """The figures a capacity planner reads first: (label, value, what it is)."""
    s = view.summary
    out = [("throughput (tok/s)", number(s["throughput_output_tokens_per_s"]),
            f"{number(s['requests_per_s'])} requests/s completed over the whole run"),
           ("goodput", share(s["goodput"]), "share of all requests within every SLO")]
    for key, label, what in (("ttft_s", "TTFT", "time to first token"),
                             ("tpot_s", "TPOT", "time per output token after the first"),
                             ("time_to_answer_s", "time to answer", "arrival to the end of reasoning")):
        out += [(f"{label} {q}", f"{number(s[f'{key}_{q}'])} s", f"{what}, {q} over completed requests")
                for q in ("p50", "p99")]
    out += [
           ("accuracy", share(s.get("accuracy")), "share of right answers (when answer quality is modelled)"),
           ("USD per hour", f"{view.usd_per_hour:,.2f}", f"list price of the cluster's {view.num_gpus} GPUs"),
           ("USD per 1k requests", number(s["cost_usd_per_1k_completed"]), "the run's cost per 1,000 completed"),
           ("USD per right answer", number(s.get("usd_per_correct_answer")), "when answer quality is modelled")]
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("time_to_answer_s", "time to answer"),
                       ("e2e_s", "e2e")):
        if s.get(f"slo_{key}") is not None:
            out.append((f"SLO {label} <= {number(s[f'slo_{key}'])} s", share(s[f"slo_attainment_{key}"]),
                        "share of completed requests within the target"))
    return out


def notices(view: RunView) -> list[str]:
    """What must be read before any figure: a run stopped at its horizon, rejected requests, saturation."""
    return summary_notices(view.summary)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


# ------------------------------------------------------------------------------------------ many runs


def compare(path: str | Path, overrides_a: Sequence[str], overrides_b: Sequence[str], seeds: Sequence[int],
            pool: cf.Executor | None, store: RunStore, on_done: OnDone | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A against B over the same seeds, paired by seed (sweep.compare_table): the runs and the table of every
    figure (A's mean, B's, B - A, its 95% interval, p, significant)."""
    tasks = (make_tasks(path, overrides_a, [Point(())], seeds, "A")
             + make_tasks(path, overrides_b, [Point(())], seeds, "B"))
    runs = runs_table(tasks, run_tasks(tasks, pool, store, on_done=on_done))
    return runs, compare_table(runs, "A", "B")


def compare_rows(table: pd.DataFrame, figures: Sequence[str] = HEADLINE) -> pd.DataFrame:
    """The comparison as the page prints it: a row per headline figure present."""
    rows = []
    by = table.set_index("figure")
    for f in figures:
        if f not in by.index:
            continue
        r = by.loc[f]
        one = r["num_pairs"] < 2
        rows.append({"figure": f, "A": number(r["a_mean"]), "B": number(r["b_mean"]),
                     "B - A": number(r["diff_mean"]),
                     "change": "-" if math.isnan(r["rel_diff"]) else f"{r['rel_diff']:+.1%}",
                     "95% CI of B - A": "-" if one else f"[{number(r['diff_ci_low'])}, {number(r['diff_ci_high'])}]",
                     "p": "-" if one else f"{r['p_value']:.3g}",
                     "significant": "n/a (1 seed)" if one else ("yes" if r["significant"] else "no")})
    return pd.DataFrame(rows)


def sweep(path: str | Path, overrides: Sequence[str], axes: Sequence[tuple[str, Sequence[str]]],
          seeds: Sequence[int], pool: cf.Executor | None, store: RunStore, on_done: OnDone | None = None
          ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every combination of the axes' values (the first varies slowest) at every seed: the runs, the summary
    (mean and 95% CI per point and figure) and the swept keys."""
    points = expand([f"{k}={','.join(v)}" for k, v in axes])
    tasks = make_tasks(path, overrides, points, seeds)
    runs = runs_table(tasks, run_tasks(tasks, pool, store, on_done=on_done))
    keys = [k for k, _ in axes]
    return runs, summary_table(runs, keys), keys


def capacity(path: str | Path, overrides: Sequence[str], slos: Sequence[str], vary: Sequence[str],
             seeds: Sequence[int], pool: cf.Executor | None, store: RunStore, *, objective: str = "usd_per_hour",
             on_done: OnDone | None = None) -> PlanResult:
    """The SLO search of `simserve plan` (plan.plan): `slos` as 'FIGURE<=X', `vary` as 'KEY=LO..HI' and
    'KEY=a,b'."""
    knob, combos = parse_vary(list(vary))
    return plan(path, overrides, [parse_slo(s) for s in slos], knob, combos, seeds, pool, store,
                objective=objective, max_seeds=2 * len(seeds), on_done=on_done)
