"""`simserve ...`: the command line. The only module (with app.py) that touches files and the terminal.

Start-up is kept short (`simserve --help` in well under a second): the parser is built from argparse alone, and
each command imports what it needs (the scenario models, the engine, pandas and pyarrow for the records, scipy
for calibration) when it runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simserve.calibration.cli import add_commands
from simserve.output import write_results  # its old home: tests and scripts import it from here
from simserve.sweep_cli import add_commands as add_sweep_commands

if TYPE_CHECKING:
    from simserve.output import ResultsFolder
    from simserve.progress import RunMonitor
    from simserve.scenario import Scenario
    from simserve.sim import Results

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a program stopped by Ctrl-C
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# Exceptions that mean bad input (exit 2 and one line, no traceback), by the module that defines them. A module
# that was never imported cannot have raised its error, so only those loaded are checked, and none is loaded to
# check (importing simserve.calibration would pull in scipy).
INPUT_ERRORS = {
    "simserve.scenario": "ScenarioError", "simserve.perf.fits": "FitError",
    "simserve.calibration.profiles": "ProfileError", "simserve.calibration.replay": "ExperimentError",
    "simserve.output": "OutputError", "simserve.workload.traces": "TraceError", "simserve.sweep": "SweepError",
}


def _input_errors() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in INPUT_ERRORS.items() if m in sys.modules)


def _cmd_run(args: argparse.Namespace) -> int:
    """Load, size-check, check --out, simulate with progress and Ctrl-C, write the folder, print the summary."""
    from simserve.output import ResultsFolder
    from simserve.progress import RunMonitor

    scenario, trace_requests = _load_for_run(args)
    expected = _size_check(args, scenario, trace_requests)
    if expected == -1:
        return EXIT_BAD_INPUT
    out = Path(args.out) if args.out else Path("results") / scenario.name
    folder = ResultsFolder(out)  # checked before the run: a bad --out costs nothing
    monitor = RunMonitor(expected, math.inf)
    results = _simulate(scenario, folder, monitor)
    if results is None:
        return EXIT_INTERRUPTED
    stopped = _where_stopped(results.summary)
    if monitor.stop_requested and not args.partial:
        folder.discard()
        print(f"simserve: {stopped}; nothing written (--partial keeps what finished)", file=sys.stderr)
        return EXIT_INTERRUPTED
    doc, tables, replaced, extra = _write(scenario, results, folder, args.csv, args.report)
    _report(args, scenario, results, tables, doc, out, replaced, extra)
    if monitor.stop_requested:
        print(f"simserve: {stopped}; wrote what finished to {out}/ (summary.json: \"partial\": "
              f"{str(results.summary['partial']).lower()})", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _load_for_run(args: argparse.Namespace) -> tuple[Scenario, int | None]:
    """The scenario, and for a trace workload its number of requests: every row is read first (preflight), so a
    bad one stops the run, with its file and line, before it starts."""
    from simserve.scenario import load_scenario

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.exact_steps:
        overrides.append("engine.exact_steps=true")
    scenario = load_scenario(args.scenario, overrides)
    if scenario.workload.trace is None:
        return scenario, None
    from simserve.preflight import check_workload

    return scenario, check_workload(scenario, args.scenario).num_requests


def _size_check(args: argparse.Namespace, scenario: Scenario, known: int | None) -> float | None:
    """The expected number of requests (`known`: a trace's, counted; None if unknown); -1 after refusing a run
    estimated over an hour."""
    from simserve.progress import ANNOUNCE_ABOVE_S, CONFIRM_ABOVE_S, estimate

    size = estimate(scenario, known)
    if size is None:
        return None
    if size.wall_s > CONFIRM_ABOVE_S and not args.yes:
        print(f"error: {args.scenario}: {size.describe()}. Pass --yes to run it anyway, or lower "
              "workload.num_requests or workload.duration_s.", file=sys.stderr)
        return -1
    if size.wall_s > ANNOUNCE_ABOVE_S:
        print(f"simserve: {size.describe()}", file=sys.stderr)
    return size.requests


def _simulate(scenario: Scenario, folder: ResultsFolder, monitor: RunMonitor) -> Results | None:
    """Run with progress and Ctrl-C, the records streaming into the staging folder; None (and the staging folder
    gone) if a second Ctrl-C stopped it at once."""
    from simserve.progress import Snapshot
    from simserve.sim import Simulation

    sim: Simulation | None = None
    try:
        sim = Simulation(scenario, scenario.base_dir, hooks=[monitor], records_dir=folder.staging)
        monitor.horizon_s = sim.horizon_s()
        with monitor.watching(sim):
            return sim.run()
    except KeyboardInterrupt:  # a second Ctrl-C (or one before the run started): at once, nothing kept
        folder.discard()
        where = f" at {Snapshot.of(sim, monitor.ended).where()}" if sim is not None else ""
        print(f"simserve: stopped at once{where}; nothing written", file=sys.stderr)
        return None
    except BaseException:
        folder.discard()
        raise


def _where_stopped(s: dict[str, Any]) -> str:
    from simserve.report import count, number

    if not s["partial"]:
        return "interrupted after the simulation finished"
    return (f"interrupted at {number(s['makespan_s'])} s simulated, {count(s['num_completed'])} requests "
            f"completed, {count(s['num_unfinished'])} in flight")


def _write(scenario: Scenario, results: Results, folder: ResultsFolder, csv: bool,
           report: bool = False) -> tuple[dict[str, Any], dict[str, Any], bool, list[str]]:
    """The files into the staging folder (with `report`, report.html and the charts as PNG too), then the folder
    into place (Ctrl-C held back for that one step)."""
    from simserve.output import group_tables

    try:
        tables = group_tables(results)
        doc = write_results(scenario, results, folder.staging, csv=csv, tables=tables)
        extra = _write_report(scenario, results, tables, folder.staging) if report else []
        replaced = folder.target.exists()
        with _sigint_held():
            folder.commit()
    except BaseException:
        folder.discard()
        raise
    return doc, tables, replaced, extra


def _write_report(scenario: Scenario, results: Results, tables: dict[str, Any], out: Path) -> list[str]:
    """report.html (the summary and the run's charts, self-contained) and the charts as PNG."""
    from simserve.charts import run_charts
    from simserve.output import write_report
    from simserve.report import format_summary

    text = format_summary(scenario.name, scenario.seed, results.summary, results.pools, tables["by_query_type"],
                          tables["by_pool"])
    charts = run_charts(results.requests, results.replicas, results.summary, results.pools)
    return write_report(out, f"simserve: {scenario.name} (seed {scenario.seed})", text, charts)


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Ctrl-C waits until the block is done (a folder half swapped helps nobody), then takes effect."""
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _report(args: argparse.Namespace, scenario: Scenario, results: Results, tables: dict[str, Any],
            doc: dict[str, Any], out: Path, replaced: bool, extra: list[str] | None = None) -> None:
    """The summary on stdout (or, with --json, summary.json and nothing else); where the files went on stderr
    with --json, on stdout otherwise."""
    from simserve.report import console, format_summary, summary_renderable

    files = ", ".join(["requests.parquet", "replicas.parquet", "scenario.yaml", "summary.json"]
                      + (["requests.csv"] if args.csv else []) + (extra or []))
    wrote = f"  wrote {out}/: {files}" + (" (the previous results there replaced)" if replaced else "")
    if args.json:
        print(json.dumps(doc, indent=2))
        print(wrote.strip(), file=sys.stderr)
        return
    c = console()
    if c.is_terminal:
        c.print(summary_renderable(scenario.name, scenario.seed, results.summary, results.pools,
                                   tables["by_query_type"], tables["by_pool"], plain=False))
    else:
        print(format_summary(scenario.name, scenario.seed, results.summary, results.pools, tables["by_query_type"],
                             tables["by_pool"]))
    print(f"\n{wrote}")


def _cmd_check(args: argparse.Namespace) -> int:
    from simserve.preflight import check_workload, describe
    from simserve.scenario import load_scenario

    scenario = load_scenario(args.scenario, list(args.set or []))
    report = check_workload(scenario, args.scenario)
    print("\n".join([f"{args.scenario}: ok ({scenario.name})", *describe(report, scenario)]))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from simserve.scenario import Scenario

    print(json.dumps(Scenario.model_json_schema(by_alias=True), indent=2))
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    """The shipped answer-quality defaults: accuracy per (model, query type) with its source, and the named curves."""
    from rich.table import Table

    from simserve.quality import defaults
    from simserve.report import console

    d = defaults()
    if args.model is not None and args.model not in d["models"]:
        print(f"simserve quality: --model: no shipped defaults for {args.model!r}; models: {sorted(d['models'])} "
              "(others get the generic defaults of their query type, docs/quality.md)", file=sys.stderr)
        return 2
    out = console()
    models = d["models"] if args.model is None else {args.model: d["models"][args.model]}
    t = Table(title="accuracy by model and query type (quality: {} uses these; docs/quality.md)", title_justify="left")
    for col in ("model", "query type", "pass@1", "no thinking", "source"):
        t.add_column(col, justify="right" if col in ("pass@1", "no thinking") else "left")
    for model, entries in models.items():
        for qt, e in entries.items():
            if qt.startswith("_"):
                continue
            curve = d["curves"].get(e.get("curve", ""))
            p1 = e.get("pass_at_1", curve and curve.get("pass_at_1"))
            floor = e.get("no_thinking_accuracy", curve and curve.get("floor"))
            t.add_row(model, qt, f"{p1:.1%}" if p1 is not None else "-", f"{floor:.1%}" if floor is not None else "-",
                      e.get("source", e.get("curve", "")))
    out.print(t)
    c = Table(title="named curves (quality: {curve: NAME})", title_justify="left")
    for col in ("curve", "floor", "ceiling", "mid_ratio", "width", "source"):
        c.add_column(col, justify="left" if col in ("curve", "source") else "right")
    for name, e in d["curves"].items():
        c.add_row(name, f"{e['floor']:.3f}", f"{e['ceiling']:.3f}", f"{e['mid_ratio']:.3f}", f"{e['width']:.3f}",
                  str(e.get("source", "")))
    out.print(c)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simserve", description="Simulate reasoning-model serving clusters.")
    parser.add_argument("--version", action=_Version, help="print simserve's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="simulate a scenario, print a summary and write results")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--out", help="results folder (default results/NAME), replaced whole when the run ends")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field: workload.num_requests=500")
    p.add_argument("--exact-steps", action="store_true", help="one event per step (reference mode, slower)")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout instead of the tables")
    p.add_argument("--csv", action="store_true", help="also write requests.csv (the request records)")
    p.add_argument("--report", action="store_true",
                   help="also write report.html (summary and charts, self-contained: opens offline) and the charts "
                   "as PNG")
    p.add_argument("--partial", action="store_true",
                   help="on Ctrl-C, write what finished so far (summary.json marked \"partial\": true)")
    p.add_argument("--yes", action="store_true",
                   help="run even if it would take over an hour by the estimate printed (see README)")
    p.set_defaults(func=_cmd_run)
    c = sub.add_parser("check", help="validate a scenario without running it")
    c.add_argument("scenario")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=_cmd_check)
    s = sub.add_parser("schema", help="print the scenario JSON Schema")
    s.set_defaults(func=_cmd_schema)
    q = sub.add_parser("quality", help="list the shipped answer-quality defaults and curves")
    q.add_argument("--model", help="only this model preset")
    q.set_defaults(func=_cmd_quality)
    add_commands(sub)
    add_sweep_commands(sub)
    return parser


class _Version(argparse.Action):
    """--version, looked up only when asked for (importlib.metadata costs start-up time)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"simserve {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version (the package's own when run from a source tree)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("simserve")
    except importlib.metadata.PackageNotFoundError:
        from simserve import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("simserve: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`simserve run ... | head`): stop quietly, as a program killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if not isinstance(exc, _input_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry() -> None:
    """The `simserve` command: main(), then exit. Before exiting, the objects still alive (imported modules and
    classes, the finished run's) move to the collector's permanent generation (gc.freeze): the interpreter's last
    collections at exit would otherwise traverse them all, some 50-70 ms of a 0.4 s process. Only the command
    does this, as the process ends; `main(argv)` called from Python leaves the collector alone."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
