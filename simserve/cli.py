"""`simserve ...`: the command line. The only module (with app.py) that touches files and the terminal.

Start-up is kept short (`simserve --help` in well under a second): the parser is built from argparse alone, and
each command imports what it needs (the scenario models, the engine, pandas and pyarrow for the records, scipy
for calibration) when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simserve.calibration.cli import add_commands
from simserve.output import write_results  # noqa: F401  (its old home: tests and scripts import it here)

if TYPE_CHECKING:
    from simserve.scenario import Scenario
    from simserve.sim import Results

EXIT_BAD_INPUT = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE

# Exceptions that mean bad input (exit 2 and one line, no traceback), by the module that defines them. A module
# that was never imported cannot have raised its error, so only those loaded are checked, and none is loaded to
# check (importing simserve.calibration would pull in scipy).
INPUT_ERRORS = {
    "simserve.scenario": "ScenarioError", "simserve.perf.fits": "FitError",
    "simserve.calibration.profiles": "ProfileError", "simserve.calibration.replay": "ExperimentError",
    "simserve.output": "OutputError",
}


def _input_errors() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[m], name) for m, name in INPUT_ERRORS.items() if m in sys.modules)


def _cmd_run(args: argparse.Namespace) -> int:
    from simserve.output import ResultsFolder, group_tables
    from simserve.scenario import load_scenario
    from simserve.sim import Simulation

    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.exact_steps:
        overrides.append("engine.exact_steps=true")
    scenario = load_scenario(args.scenario, overrides)
    out = Path(args.out) if args.out else Path("results") / scenario.name
    folder = ResultsFolder(out)  # checked before the run: a bad --out costs nothing
    try:
        # Records stream into the staging folder beside `out`; the finished folder replaces `out` in one rename.
        results = Simulation(scenario, scenario.base_dir, records_dir=folder.staging).run()
        tables = group_tables(results)
        doc = write_results(scenario, results, folder.staging, csv=args.csv, tables=tables)
        replaced = folder.target.exists()
        folder.commit()
    except BaseException:
        folder.discard()
        raise
    _report(args, scenario, results, tables, doc, out, replaced)
    return 0


def _report(args: argparse.Namespace, scenario: Scenario, results: Results, tables: dict[str, Any],
            doc: dict[str, Any], out: Path, replaced: bool) -> None:
    """The summary on stdout (or, with --json, summary.json and nothing else); where the files went on stderr
    with --json, on stdout otherwise."""
    from simserve.report import console, format_summary, summary_renderable

    files = ", ".join(["requests.parquet", "replicas.parquet", "scenario.yaml", "summary.json"]
                      + (["requests.csv"] if args.csv else []))
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
    from simserve.scenario import load_scenario

    scenario = load_scenario(args.scenario, list(args.set or []))
    print(f"{args.scenario}: ok ({scenario.name})")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from simserve.scenario import Scenario

    print(json.dumps(Scenario.model_json_schema(by_alias=True), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simserve", description="Simulate reasoning-model serving clusters.")
    parser.add_argument("--version", action=_Version, help="print simserve's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="simulate a scenario, print a summary and write results")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--out", help="results folder (default results/NAME)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field: workload.num_requests=500")
    p.add_argument("--exact-steps", action="store_true", help="one event per step (reference mode, slower)")
    p.add_argument("--json", action="store_true", help="print summary.json to stdout instead of the tables")
    p.add_argument("--csv", action="store_true", help="also write requests.csv (the request records)")
    p.set_defaults(func=_cmd_run)
    c = sub.add_parser("check", help="validate a scenario without running it")
    c.add_argument("scenario")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=_cmd_check)
    s = sub.add_parser("schema", help="print the scenario JSON Schema")
    s.set_defaults(func=_cmd_schema)
    add_commands(sub)
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
    except BrokenPipeError:
        # The reader went away (`simserve run ... | head`): stop quietly, as a program killed by SIGPIPE would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if not isinstance(exc, _input_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
