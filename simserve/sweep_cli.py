"""`simserve sweep`, `simserve compare` and `simserve plan`: the many-run commands (their executors, progress,
files, charts and terminal output; the library is sweep.py and plan.py). Each writes into one folder: the Parquet
tables, a JSON record of what ran, the charts (HTML with the Vega libraries inlined: they open offline), and a
cache of finished runs (cache/, one JSON file per resolved scenario) that a repeated or extended command reuses."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import concurrent.futures as cf

    from simserve.progress import BatchProgress
    from simserve.sweep import Cache, Tally

EXIT_NOT_MET = 1  # `plan`: no combination meets every SLO


# ------------------------------------------------------------------------------------------ shared parts


def _common(p: argparse.ArgumentParser, seeds: int) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field in every run: workload.num_requests=2000")
    p.add_argument("--seeds", type=int, default=seeds, help=f"seeds per point (default {seeds})")
    p.add_argument("--first-seed", type=int, help="the first seed (default: the scenario's); seeds run from it up")
    p.add_argument("--backend", choices=("local", "dask"), default="local",
                   help="local processes (default), or a Dask cluster (needs simserve[scale])")
    p.add_argument("--address", help="with --backend dask: the scheduler, HOST:PORT (default: a LocalCluster)")
    p.add_argument("--workers", type=int, help="local processes or LocalCluster workers (default: every core)")
    p.add_argument("--out", help="folder for the tables and charts (default results/COMMAND-NAME)")
    p.add_argument("--cache", help="folder of finished runs (default OUT/cache); share it between commands")
    p.add_argument("--no-cache", action="store_true", help="keep finished runs in memory only")
    p.add_argument("--chart-format", choices=("html", "svg", "png"), default="html",
                   help="charts as HTML with the Vega libraries inlined (default), or SVG or PNG images")


@contextmanager
def executor_for(args: argparse.Namespace) -> Iterator[tuple[cf.Executor | None, str]]:
    """The executor the runs go to and a phrase naming it: a process pool (spawned workers: no state shared with
    this process), None (this process) for one worker, or a Dask client's executor on the cluster at --address or
    on a LocalCluster."""
    from simserve.sweep import SweepError

    workers = args.workers or os.cpu_count() or 1
    if workers < 1:
        raise SweepError(f"--workers {workers}: at least one")
    if args.backend == "dask":
        with _dask(args.address, workers) as found:
            yield found
    elif args.address:
        raise SweepError("--address is for --backend dask")
    elif workers == 1:
        yield None, "this process"
    else:
        with _process_pool(workers) as pool:
            yield pool, f"{workers} local processes"


@contextmanager
def _process_pool(workers: int) -> Iterator[cf.Executor]:
    import concurrent.futures as cf
    import multiprocessing

    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_sigint)
    try:
        yield pool
    except BaseException:
        # Ctrl-C (or an error): the runs in flight are dropped at once (the finished ones are in the cache); waiting
        # for them could take as long as a run. Terminated workers fail the runs still due with BrokenProcessPool
        # (cancelling them as well races with that in Python 3.11's executor, so they are not cancelled).
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False)
        raise
    pool.shutdown()


@contextmanager
def _dask(address: str | None, workers: int) -> Iterator[tuple[cf.Executor, str]]:
    from simserve.sweep import SweepError

    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise SweepError("--backend dask needs dask.distributed: pip install 'simserve[scale]'") from None
    if address:
        try:
            client = Client(address, timeout=10)
        except OSError as exc:
            raise SweepError(f"--address {address}: no Dask scheduler answered ({exc})") from None
        with client, _dropping(client.get_executor()) as executor:
            yield executor, f"the Dask cluster at {address}"
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client, _dropping(client.get_executor()) as executor:
        yield executor, f"a Dask LocalCluster of {workers} workers"


@contextmanager
def _dropping(executor: cf.Executor) -> Iterator[cf.Executor]:
    """A Dask client's executor whose runs still due are cancelled on an error or Ctrl-C."""
    try:
        yield executor
    except BaseException:
        executor.shutdown(wait=False)
        raise


def _ignore_sigint() -> None:
    """A worker's start: Ctrl-C is the command's to handle (it stops the workers), not each worker's."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _folders(args: argparse.Namespace, default: str) -> tuple[Path, Cache, str]:
    from simserve.output import CacheFolder, sweep_folder
    from simserve.sweep import MemoryCache

    out = sweep_folder(Path(args.out) if args.out else Path("results") / default)
    if args.no_cache:
        return out, MemoryCache(), "no cache"
    path = Path(args.cache) if args.cache else out / "cache"
    return out, CacheFolder(path), f"cache {path}"


def _first_seed(args: argparse.Namespace, path: str) -> tuple[int, str]:
    """The first seed and the scenario's name (the base scenario loaded once, so a bad file or --set fails here)."""
    from simserve.scenario import load_scenario

    base = load_scenario(path, args.set)
    return (base.seed if args.first_seed is None else args.first_seed), base.name


@contextmanager
def _batch(label: str, total: int, args: argparse.Namespace, cache_note: str) -> Iterator[tuple[Any, BatchProgress]]:
    """The executor and the progress of a batch; Ctrl-C ends it with a line saying what the cache kept."""
    from simserve.progress import BatchProgress

    progress = BatchProgress(label, total)
    with executor_for(args) as (executor, where):
        print(f"{label}: {total} runs on {where} ({cache_note})", file=sys.stderr, flush=True)
        with progress.watching():
            yield executor, progress


def _interrupted(label: str, progress: BatchProgress | None, cache_note: str) -> int:
    from simserve.cli import EXIT_INTERRUPTED

    n = progress.runs - progress.cached if progress else 0
    print(f"{label}: interrupted; runs finished now and kept: {n} ({cache_note}); the same command runs only the "
          "rest", file=sys.stderr)
    return EXIT_INTERRUPTED


def _record(out: Path, name: str, doc: dict[str, Any]) -> None:
    from simserve.output import json_safe

    (out / name).write_text(json.dumps(json_safe(doc), indent=2) + "\n")


def _timing(tally: Tally, t0: float, args: argparse.Namespace) -> dict[str, Any]:
    """What ran and how long, for the command's JSON record (the sweep's wall time against its runs' summed)."""
    return {"runs_made": tally.ran, "runs_cached": tally.cached, "run_wall_s_sum": tally.run_wall_s,
            "wall_s": time.perf_counter() - t0, "backend": args.backend, "address": args.address,
            "workers": args.workers or os.cpu_count() or 1}


def _ci(mean: float, low: float, high: float) -> str:
    from simserve.report import number

    if low != low:  # NaN: one seed
        return f"{number(mean)}"
    return f"{number(mean)} ± {number((high - low) / 2)}"


def _print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    from simserve.report import console

    t = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    console().print(t)


# ------------------------------------------------------------------------------------------ sweep


def _cmd_sweep(args: argparse.Namespace) -> int:
    from simserve.charts import sweep_chart
    from simserve.output import save_chart, write_table
    from simserve.sweep import Tally, expand, make_tasks, run_tasks, runs_table, seed_list, summary_table, swept_keys

    t0 = time.perf_counter()
    points = expand(args.grid, args.zip)
    first, name = _first_seed(args, args.scenario)
    seeds = seed_list(first, args.seeds)
    tasks = make_tasks(args.scenario, args.set, points, seeds)
    out, cache, note = _folders(args, f"sweep-{name}")
    tally, progress = Tally(), None
    try:
        with _batch("simserve sweep", len(tasks), args, note) as (executor, progress):
            results = run_tasks(tasks, executor, cache, on_done=progress.done, tally=tally)
    except KeyboardInterrupt:
        return _interrupted("simserve sweep", progress, note)
    keys = swept_keys(tasks)
    runs = runs_table(tasks, results)
    summary = summary_table(runs, keys)
    write_table(runs, out / "runs.parquet")
    write_table(summary, out / "summary.parquet")
    wanted = args.chart or ["ttft_s_p99", "e2e_s_p99"]
    charts = [save_chart(sweep_chart(summary, keys, f), out / f"chart-{f}.{args.chart_format}")
              for f in (wanted if keys else [])]
    _record(out, "sweep.json", {"scenario": args.scenario, "set": args.set, "grid": args.grid, "zip": args.zip,
                                "seeds": seeds, "points": len(points), "runs": len(tasks),
                                **_timing(tally, t0, args)})
    shown = [f for f in wanted if f in set(summary["figure"])]
    rows = []
    for point in points:
        sub = summary
        for k, v in point.typed().items():
            sub = sub[sub[k].astype(str) == str(v)]
        by = sub.set_index("figure")
        rows.append([_short(point), *(_ci(*by.loc[f, ["mean", "ci_low", "ci_high"]]) for f in shown)])
    _print_table(f"{args.scenario}: mean ± 95% CI half-width over {len(seeds)} seed(s)", ["point", *shown], rows)
    files = ["runs.parquet", "summary.parquet", "sweep.json", *(p.name for p in charts if p is not None)]
    print(f"\n  {tally.ran} runs made, {tally.cached} from the cache; wrote {out}/: {', '.join(files)}")
    return 0


# ------------------------------------------------------------------------------------------ compare


def _cmd_compare(args: argparse.Namespace) -> int:
    from simserve.output import write_table
    from simserve.sweep import HEADLINE, Point, SweepError, Tally, compare_table, make_tasks, run_tasks, runs_table
    from simserve.sweep import seed_list as seeds_from

    t0 = time.perf_counter()
    path_b = args.b or args.a
    if args.b is None and not (args.set_a or args.set_b):
        raise SweepError("compare: give a second scenario, or two variants of one with --set-a and --set-b")
    first, name_a = _first_seed(args, args.a)
    _, name_b = _first_seed(args, path_b)
    seeds = seeds_from(first, args.seeds)
    tasks = (make_tasks(args.a, [*args.set, *args.set_a], [Point(())], seeds, "A")
             + make_tasks(path_b, [*args.set, *args.set_b], [Point(())], seeds, "B"))
    out, cache, note = _folders(args, f"compare-{name_a}" + (f"-vs-{name_b}" if name_b != name_a else ""))
    tally, progress = Tally(), None
    try:
        with _batch("simserve compare", len(tasks), args, note) as (executor, progress):
            results = run_tasks(tasks, executor, cache, on_done=progress.done, tally=tally)
    except KeyboardInterrupt:
        return _interrupted("simserve compare", progress, note)
    runs = runs_table(tasks, results)
    table = compare_table(runs, "A", "B")
    write_table(runs, out / "runs.parquet")
    write_table(table, out / "compare.parquet")
    label_a = " ".join([args.a, *args.set_a])
    label_b = " ".join([path_b, *args.set_b])
    _record(out, "compare.json", {"a": label_a, "b": label_b, "set": args.set, "seeds": seeds,
                                  **_timing(tally, t0, args)})
    wanted = args.metric or [f for f in HEADLINE if f in set(table["figure"])]
    missing = [f for f in wanted if f not in set(table["figure"])]
    if missing:
        raise SweepError(f"--metric {missing[0]}: not a summary figure of these runs")
    rows = _compare_rows(table, wanted)
    _print_table(f"A: {label_a}\nB: {label_b}\nB - A paired by seed over {len(seeds)} seed(s) (95% CI, paired t test)",
                 ["figure", "A", "B", "B - A", "change", "95% CI of B - A", "p", "significant"], rows)
    print(f"\n  {tally.ran} runs made, {tally.cached} from the cache; wrote {out}/: runs.parquet, compare.parquet, "
          "compare.json")
    return 0


def _compare_rows(table: Any, wanted: list[str]) -> list[list[str]]:
    from simserve.report import number

    rows = []
    for f in wanted:
        r = table.set_index("figure").loc[f]
        ci = "-" if r["num_pairs"] < 2 else f"[{number(r['diff_ci_low'])}, {number(r['diff_ci_high'])}]"
        p = "-" if r["p_value"] != r["p_value"] else f"{r['p_value']:.3g}"
        rel = "-" if r["rel_diff"] != r["rel_diff"] else f"{r['rel_diff']:+.1%}"
        sig = "yes" if r["significant"] else ("n/a (1 seed)" if r["num_pairs"] < 2 else "no")
        rows.append([f, number(r["a_mean"]), number(r["b_mean"]), number(r["diff_mean"]), rel, ci, p, sig])
    return rows


# ------------------------------------------------------------------------------------------ plan


def _cmd_plan(args: argparse.Namespace) -> int:
    from simserve.charts import knob_chart, pareto_chart
    from simserve.output import save_chart, write_table
    from simserve.plan import parse_slo, parse_vary, plan
    from simserve.progress import BatchProgress
    from simserve.sweep import Tally, seed_list

    t0 = time.perf_counter()
    slos = [parse_slo(s) for s in args.slo]
    knob, combos = parse_vary(args.vary)
    first, name = _first_seed(args, args.scenario)
    seeds = seed_list(first, args.seeds)
    max_seeds = args.max_seeds if args.max_seeds is not None else 4 * len(seeds)
    out, cache, note = _folders(args, f"plan-{name}")
    per_combo = (max(knob.hi - knob.lo, 1)).bit_length() + 1  # probes of one bisection, at most
    tally, progress = Tally(), BatchProgress("simserve plan", len(combos) * per_combo * len(seeds))
    label = "simserve plan"
    try:
        with executor_for(args) as (executor, where):
            print(f"{label}: {len(combos)} combination(s) x bisection of {knob.key} over {knob.lo}..{knob.hi}, "
                  f"{len(seeds)} seeds a probe, up to {max_seeds} where undecided (about {progress.total} runs) on "
                  f"{where} ({note})", file=sys.stderr)
            with progress.watching():
                result = plan(args.scenario, args.set, slos, knob, combos, seeds, executor, cache,
                              objective=args.objective, max_seeds=max_seeds, on_done=progress.done, tally=tally)
    except KeyboardInterrupt:
        return _interrupted(label, progress, note)
    write_table(result.runs, out / "runs.parquet")
    write_table(result.probes, out / "probes.parquet")
    write_table(result.answers, out / "answers.parquet")
    charts = [save_chart(pareto_chart(result), out / f"pareto.{args.chart_format}"),
              save_chart(knob_chart(result), out / f"chart-{slos[0].figure}.{args.chart_format}")]
    _record(out, "plan.json", {"scenario": args.scenario, "set": args.set, "slo": [str(s) for s in slos],
                               "vary": args.vary, "objective": args.objective, "seeds": seeds,
                               "max_seeds": max_seeds,
                               "confidence": "one-sided 95% bound of the mean across seeds",
                               "cheapest": result.cheapest, **_timing(tally, t0, args)})
    _print_plan(result, combos, len(seeds))
    files = ["runs.parquet", "probes.parquet", "answers.parquet", "plan.json",
             *(p.name for p in charts if p is not None)]
    print(f"\n  {tally.ran} runs made, {tally.cached} from the cache; wrote {out}/: {', '.join(files)}")
    return 0 if result.cheapest is not None else EXIT_NOT_MET


def _print_plan(result: Any, combos: list[Any], num_seeds: int) -> None:
    from simserve.report import number

    knob, slos = result.knob, result.slos
    rows, binds = [], []
    for combo, (_, a) in zip(combos, result.answers.iterrows(), strict=True):
        setting = (str(int(a[knob.key])) if a["meets"] else "-" if str(a["binds"]).startswith("cannot be built")
                   else f"none <= {knob.hi}")
        figures = [f"{number(a[f'{s.figure}_mean'])} (bound {number(a[f'{s.figure}_bound'])})" for s in slos]
        rows.append([_short(combo), setting, number(a["objective"]), *figures])
        binds.append(f"  {_short(combo)}: {a['binds']}")
    _print_table(f"smallest {knob.key} meeting {', '.join(map(str, slos))} with confidence (one-sided 95% bound "
                 f"of the mean over {num_seeds} seeds)",
                 ["choice", knob.key.rsplit(".", 1)[-1], result.objective, *(s.figure for s in slos)], rows)
    print("What binds (the SLOs not met one step below the answer):", *binds, sep="\n")
    c = result.cheapest
    if c is None:
        print(f"\nNo combination meets every SLO with confidence within {knob.key} <= {knob.hi}: raise the top of "
              "the range, loosen an SLO, or add seeds if a bound straddles its target (see 'binds').")
        return
    choice = ", ".join(f"{k}={c[k]}" for k in result.choices) or "the scenario"
    print(f"\nCheapest: {choice} at {knob.key}={int(c[knob.key])}: {result.objective} {number(c['objective'])}; "
          + "; ".join(f"{s.figure} {number(c[f'{s.figure}_mean'])} (bound {number(c[f'{s.figure}_bound'])}, "
                      f"target {s.op} {s.target:g})" for s in slos))
    front = result.probes[result.probes["pareto"]].sort_values("objective")
    shown = ", ".join(f"{number(r['objective'])} -> {number(r[f'{slos[0].figure}_mean'])}" for _, r in front.iterrows())
    print(f"Pareto front ({result.objective} -> {slos[0].figure} mean): {shown}")


def _short(point: Any) -> str:
    """A point with each key's last part only: gpu=h200, router=least_kv."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.values) or "(as written)"


def add_commands(sub: Any) -> None:
    s = sub.add_parser("sweep", help="run a scenario over a grid of settings and seeds, with confidence intervals")
    s.add_argument("scenario", help="scenario YAML file")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a swept field and its values (or LO..HI); the grid is the product of every --grid")
    s.add_argument("--zip", action="append", default=[], metavar="KEY=V1,V2",
                   help="fields varied together (equally many values), one more axis of the product")
    s.add_argument("--chart", action="append", default=None, metavar="FIGURE",
                   help="chart this summary figure against the first swept key (default: ttft_s_p99 e2e_s_p99)")
    _common(s, 3)
    s.set_defaults(func=_cmd_sweep)
    c = sub.add_parser("compare", help="A/B: two scenarios (or two --set variants) paired by seed")
    c.add_argument("a", help="scenario A (YAML)")
    c.add_argument("b", nargs="?", help="scenario B (default: A, with --set-a/--set-b making the difference)")
    c.add_argument("--set-a", action="append", default=[], metavar="KEY=VALUE", help="override in A only")
    c.add_argument("--set-b", action="append", default=[], metavar="KEY=VALUE", help="override in B only")
    c.add_argument("--metric", action="append", metavar="FIGURE", help="figures to print (default: the headline)")
    _common(c, 10)
    c.set_defaults(func=_cmd_compare)
    p = sub.add_parser("plan", help="capacity search: the cheapest setting meeting every SLO with confidence")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--slo", action="append", default=[], metavar="FIGURE<=X",
                   help="a summary figure and its bound: 'ttft_s_p99<=2', 'goodput>=0.99' (repeat for more)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=LO..HI | KEY=A,B",
                   help="the knob searched (one KEY=LO..HI) and discrete choices (KEY=a,b,c)")
    p.add_argument("--max-seeds", type=int, metavar="N",
                   help="seeds a probe may grow to (doubling) while its bound straddles a target (default 4 x --seeds)")
    p.add_argument("--objective", default="usd_per_hour",
                   help="the cost to minimise: usd_per_hour (the cluster's list price, default) or a figure")
    _common(p, 5)
    p.set_defaults(func=_cmd_plan)

