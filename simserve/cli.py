"""`simserve ...`: the command line. The only module (with app.py) that touches files and the terminal."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

from simserve.calibration.cli import ERRORS as CALIBRATION_ERRORS
from simserve.calibration.cli import add_commands, json_safe
from simserve.preflight import check_workload, describe
from simserve.scenario import Scenario, ScenarioError, load_scenario
from simserve.sim import Results, Simulation
from simserve.workload import TraceError

EXIT_BAD_INPUT = 2


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def format_summary(scenario: Scenario, results: Results) -> str:
    """A readable table of one run's summary."""
    s = results.summary
    lines = [f"simserve: {scenario.name}  (seed {scenario.seed})"]
    for p in results.pools:
        lines.append(f"  pool {p['pool']}: {p['replicas']} x {p['model']} on {p['tensor_parallel']} x {p['gpu']}, "
                     f"{p['kv_capacity_blocks']:,} KV blocks per replica")
    arrived = s["num_requests"] - s["num_not_arrived"]
    lines.append(f"  requests  {arrived:,} arrived, {s['num_completed']:,} completed, "
                 f"{s['num_rejected']:,} rejected, {s['num_unfinished']:,} unfinished"
                 + (f", {s['num_not_arrived']:,} not arrived" if s["num_not_arrived"] else ""))
    if s.get("num_rejected_too_long"):
        lines.append(f"  REJECTED: {s['num_rejected_too_long']:,} requests can never fit a replica (prompt + output "
                     "over its KV capacity or max_model_len_tokens); requests.parquet gives each one's reason")
    lines.append(f"  simulated {s['makespan_s']:,.1f} s in {s['wall_time_s']:.2f} s wall, "
                 f"{s['num_events']:,} events ({s['events_per_request']:.1f} per request)")
    lines.append("")
    lines.append(f"  {'metric':<17}{'mean':>12}{'p50':>12}{'p90':>12}{'p99':>12}")
    for m in ("ttft_s", "time_to_answer_s", "tpot_s", "e2e_s"):
        lines.append(f"  {m:<17}" + "".join(f"{_fmt(s[f'{m}_{k}']):>12}" for k in ("mean", "p50", "p90", "p99")))
    lines.append("")
    rows = [
        ("output tokens/s", s["throughput_output_tokens_per_s"]), ("requests/s", s["requests_per_s"]),
        ("goodput (share in SLO)", s["goodput"]), ("KV utilisation mean", s["kv_utilization_mean"]),
        ("KV utilisation max", s["kv_utilization_max"]), ("preemptions", s["num_preemptions"]),
        ("prefix cache hit ratio", s["prefix_cache_hit_ratio"]),
        ("mean batch size", s["batch_size_mean"]), ("mean queue length", s["queue_len_mean"]),
        ("GPU-hours", s["gpu_hours"]), ("cost USD", s["cost_usd"]),
    ]
    if len(results.pools) > 1:
        rows.extend((f"  pool {p['pool']} cost USD", p["cost_usd"]) for p in results.pools)
    lines.extend(f"  {name:<24}{_fmt(v):>14}" for name, v in rows)
    if s["stopped_at_horizon"]:
        lines.append("")
        lines.append(f"  STOPPED AT THE HORIZON ({s['horizon_s']:,.0f} s, engine.horizon_s): {s['num_unfinished']:,} "
                     f"requests still waiting or running, {s['num_not_arrived']:,} not arrived.")
    if s["saturated"] and s["queue_growth_requests_per_s"] > 0:
        if not s["stopped_at_horizon"]:
            lines.append("")
        lines.append(f"  SATURATED: the waiting queue grew by {s['queue_growth_requests_per_s']:,.3g} requests/s over "
                     "the second half of the arrivals; the cluster cannot keep up with this load.")
    return "\n".join(lines)


def write_results(scenario: Scenario, results: Results, out: Path) -> None:
    """scenario.yaml and summary.json into `out`, and the run's two Parquet files of records, copied there unless
    the run already streamed them there (Simulation's records_dir)."""
    out.mkdir(parents=True, exist_ok=True)
    for src in (results.requests_path, results.replicas_path):
        dst = out / src.name
        if not (dst.exists() and dst.samefile(src)):
            shutil.copyfile(src, dst)
    (out / "scenario.yaml").write_text(scenario.to_yaml())
    (out / "summary.json").write_text(json.dumps(json_safe(results.summary), indent=2) + "\n")


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.exact_steps:
        overrides.append("engine.exact_steps=true")
    scenario = load_scenario(args.scenario, overrides)
    if scenario.workload.trace is not None:
        check_workload(scenario, args.scenario)  # every row read first: a bad one stops the run before it starts
    out = Path(args.out) if args.out else Path("results") / scenario.name
    results = Simulation(scenario, scenario.base_dir, records_dir=out).run()  # records stream straight to `out`
    write_results(scenario, results, out)
    print(format_summary(scenario, results))
    print(f"\n  wrote {out}/requests.parquet, replicas.parquet, scenario.yaml, summary.json")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario, list(args.set or []))
    report = check_workload(scenario, args.scenario)
    print("\n".join([f"{args.scenario}: ok ({scenario.name})", *describe(report, scenario)]))
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Scenario.model_json_schema(by_alias=True), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="simserve", description="Simulate reasoning-model serving clusters.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="simulate a scenario, print a summary and write results")
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--out", help="results folder (default results/NAME)")
    p.add_argument("--seed", type=int, help="override the scenario's seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field: workload.num_requests=500")
    p.add_argument("--exact-steps", action="store_true", help="one event per step (reference mode, slower)")
    p.set_defaults(func=_cmd_run)
    c = sub.add_parser("check", help="validate a scenario without running it")
    c.add_argument("scenario")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=_cmd_check)
    s = sub.add_parser("schema", help="print the scenario JSON Schema")
    s.set_defaults(func=_cmd_schema)
    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ScenarioError, TraceError, *CALIBRATION_ERRORS) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
