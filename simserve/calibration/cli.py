"""`simserve calibrate import|fit|validate` and `simserve validate`: the calibration commands (their file I/O and
terminal output; refuses to write into the installed package)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from simserve.output import CHART_SUFFIXES, OutputError, json_safe, save_chart

if TYPE_CHECKING:
    from simserve.calibration.profiles import Profile
    from simserve.perf.fits import Fit

# The heavy modules (pandas, scipy through fitting, the replay's simulation) are imported inside the commands
# that use them, not here: `simserve --help` builds this parser and must start in well under a second.

IMPORTER_NAMES = ("aiconfigurator", "vidur")  # the keys of calibration.importers.IMPORTERS (a test checks)


def outside_package(path: Path, option: str) -> Path:
    """`path`, unless it lies in the installed package's data folder: fits and profiles a user makes are never
    written into simserve (its shipped fits are read-only data, replaced by every reinstall)."""
    from simserve.perf.fits import SHIPPED_FITS_DIR

    data = SHIPPED_FITS_DIR.parent
    if path.resolve().is_relative_to(data):
        raise OutputError(f"{option} {path}: inside simserve's installed data folder ({data}); write your own fits "
                          "elsewhere (fits/my-gpu.yaml) and point a scenario at them: perf: {kind: calibrated, "
                          "fits_dir: fits} or perf: {kind: calibrated, fit: fits/my-gpu.yaml}")
    return path


def _error_table(report: dict[str, Any]) -> str:
    lines = [f"  {'table':<22}{'n':>8}{'MAPE':>9}{'p90 APE':>9}"]
    for name, r in report.items():
        if isinstance(r, dict) and "mape" in r:
            lines.append(f"  {name:<22}{r['n']:>8,}{r['mape']:>9.1%}{r['p90_ape']:>9.1%}")
    return "\n".join(lines)


def _cmd_import(args: argparse.Namespace) -> int:
    from simserve.calibration.importers import IMPORTERS
    from simserve.calibration.profiles import write_profile

    folder = outside_package(Path(args.out), "--out")
    meta, tables = IMPORTERS[args.format](args.src, args.gpu)
    out = write_profile(folder, meta, tables, compress=not args.no_compress)
    counts = ", ".join(f"{k} {len(v):,}" for k, v in tables.items())
    print(f"imported {args.format} {args.src} -> {out}: {counts} rows")
    return 0


def fit_chart(fit: Fit, profile: Profile) -> Any:
    """Predicted vs measured latency per row (up to 1,500 rows per table), an Altair chart; None without altair."""
    try:
        import altair as alt
    except ImportError:
        return None
    import numpy as np
    import pandas as pd

    from simserve.calibration.fitting import columns_of, split_tables

    frames = []
    rng = np.random.default_rng(0)
    for name, df in split_tables(profile).items():
        if name not in fit.tables:
            continue
        sub = df.iloc[rng.permutation(len(df))[:1500]].reset_index(drop=True)
        pred = fit.tables[name].predict_s(columns_of(sub), fit.gpu)
        frames.append(pd.DataFrame({"table": name, "measured_s": sub.latency_s, "predicted_s": pred}))
    data = pd.concat(frames, ignore_index=True)
    return alt.Chart(data).mark_circle(size=10, opacity=0.5).encode(
        x=alt.X("measured_s:Q", scale=alt.Scale(type="log")), y=alt.Y("predicted_s:Q", scale=alt.Scale(type="log")),
        color="table:N", tooltip=["table", "measured_s", "predicted_s"]).properties(
        width=420, height=420, title=f"predicted vs measured ({fit.gpu.name}; up to 1,500 rows per table)")


def _cmd_fit_from_run(args: argparse.Namespace) -> int:
    from simserve.calibration.replay import METRICS
    from simserve.calibration.runfit import fit_from_run, validate_with_fit

    out = outside_package(Path(args.out), "--out")
    rf = fit_from_run(args.from_run, args.base_fit, args.step_overhead_s)
    fit = rf.fit
    fit.save(out)
    base = fit.source.get("ported_from") or fit.gpu.name
    print(f"fitted {fit.gpu.name} on {args.from_run} -> {out}  (from the {base} fit: compute scale "
          f"{fit.compute_scale:.3f}, bandwidth scale {fit.bandwidth_scale:.3f}, step overhead "
          f"{fit.step_overhead_s * 1e3:.3f} ms; {len(rf.evaluations)} replays)")
    print(f"  mean TTFT {rf.targets['ttft_s']:.4g} s measured, {rf.simulated['ttft_s']:.4g} s simulated; "
          f"mean TPOT {rf.targets['tpot_s']:.4g} / {rf.simulated['tpot_s']:.4g} s")
    print(f"  {'run':<40}" + "".join(f"{m.removesuffix('_s') + ' ' + st:>12}" for m in METRICS
                                      for st in ("mean", "p50", "p99")))
    for run_dir in [args.from_run, *(args.validate_on or [])]:
        report = validate_with_fit(run_dir, fit)
        label = Path(run_dir).name + (" (fitted on)" if run_dir == args.from_run else " (held out)")
        print(f"  {label:<40}" + "".join(f"{report[f'{m}_{st}_rel_error']:>12.1%}" for m in METRICS
                                         for st in ("mean", "p50", "p99")))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    if args.from_run:
        if args.profile:
            raise OutputError("give a profile folder or --from-run RUN_DIR, not both")
        return _cmd_fit_from_run(args)
    if not args.profile:
        raise OutputError("calibrate fit: give a profile folder (kernel measurements) or --from-run RUN_DIR (one "
                          "served run of the GPU)")
    from simserve.calibration.fitting import fit_profile
    from simserve.calibration.profiles import load_profile
    from simserve.calibration.replay import fit_compute_scale, fit_step_overhead

    out = outside_package(Path(args.out), "--out")
    plot = outside_package(Path(args.plot) if args.plot else out.with_suffix(".html"), "--plot")
    if plot.suffix.lower() not in CHART_SUFFIXES:
        raise OutputError(f"--plot {plot}: a chart is written as {', '.join(CHART_SUFFIXES)}; name the file so")
    profile = load_profile(args.profile)
    fit = fit_profile(profile, heldout_fraction=args.heldout, seed=args.seed, residual=not args.no_residual)
    if args.step_overhead_s is not None:
        fit.step_overhead_s = args.step_overhead_s
        fit.source["step_overhead"] = "given on the command line"
    if args.overhead_from:
        # Two numbers kernel profiles cannot see, from one real run: the FLOPs factor from its in-engine prefill
        # times, then the per-step overhead from its mean TPOT (then the factor once more with that overhead).
        # The replays read the fit's tables from the file; both numbers are passed as overrides.
        fit.save(out)
        name = Path(args.overhead_from).name
        for _ in range(2):
            scale = fit_compute_scale(args.overhead_from, str(out), fit.step_overhead_s)
            if scale is not None:
                fit.compute_scale = scale
                fit.source["compute_scale"] = f"median in-engine prefill time of {name}"
            fit.step_overhead_s = fit_step_overhead(args.overhead_from, str(out), compute_scale=fit.compute_scale)
            fit.source["step_overhead"] = f"mean TPOT of {name}"
    if args.compute_scale is not None:
        fit.compute_scale = args.compute_scale
        fit.source["compute_scale"] = "given on the command line"
    fit.save(out)
    print(f"fitted {args.profile} -> {out}  (step overhead {fit.step_overhead_s * 1e3:.3f} ms, "
          f"compute scale {fit.compute_scale:.3f})")
    held = {k: v.stats["heldout"] for k, v in fit.tables.items() if v.stats["heldout"].get("n")}
    if "heldout_overall" in fit.source:
        held["overall (op tables)"] = fit.source["heldout_overall"]
    print(f"held-out error ({args.heldout:.0%} of rows, fit on the rest):")
    print(_error_table(held))
    written = save_chart(fit_chart(fit, profile), plot)
    if written:
        print(f"  plot: {written}")
    return 0


def _cmd_validate_fit(args: argparse.Namespace) -> int:
    from simserve.calibration.fitting import validate_fit
    from simserve.calibration.profiles import load_profile
    from simserve.hardware import GPUS, datasheet_of
    from simserve.perf.fits import FitError, load_fit_cached

    fit = load_fit_cached(args.fit)
    if args.gpu:
        if args.gpu not in GPUS:
            raise FitError(f"--gpu: unknown GPU preset {args.gpu!r}; presets: {', '.join(GPUS)}")
        fit = fit.ported_to(datasheet_of(GPUS[args.gpu]))
    profile = load_profile(args.profiles)
    report = validate_fit(fit, profile)
    report = {"fit": str(args.fit), "gpu": fit.gpu.name, "profiles": str(args.profiles), **report}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(json_safe(report), indent=2) + "\n")
    print(f"{args.fit} on {args.profiles} (as {fit.gpu.name}):")
    print(_error_table(report))
    print(f"  wrote {out}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from simserve.calibration.replay import METRICS, STATS, comparison_chart, validate_experiment

    report, table, results = validate_experiment(args.experiment, args.perf, args.step_overhead_s, args.fit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation.json").write_text(json.dumps(json_safe(report), indent=2) + "\n")
    table.to_csv(out / "per_request.csv", index=False)
    chart = save_chart(comparison_chart(table, f"{report['experiment']}: simulated vs measured ({args.perf})"),
                       out / "chart.html")
    print(f"{report['experiment']} ({args.perf}): {report['num_requests_real']} requests replayed, "
          f"{report['num_completed_sim']} completed in simulation")
    print(f"  {'metric':<8}{'stat':<6}{'real':>11}{'sim':>11}{'error':>8}")
    for m in METRICS:
        for st in STATS:
            print(f"  {m:<8}{st:<6}{report[f'{m}_{st}_real']:>11.4g}{report[f'{m}_{st}_sim']:>11.4g}"
                  f"{report[f'{m}_{st}_rel_error']:>8.1%}")
    print(f"  wrote {out}/validation.json, per_request.csv" + (", chart.html" if chart is not None else ""))
    return 0


def add_commands(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="import profiles, fit step-time models, validate fits")
    csub = cal.add_subparsers(dest="calibrate_command", required=True)
    imp = csub.add_parser("import", help="convert published op-level measurements to a profile folder")
    imp.add_argument("src", help="source folder (aiconfigurator system folder, or a Vidur compute folder)")
    imp.add_argument("--format", required=True, choices=IMPORTER_NAMES)
    imp.add_argument("--out", required=True, help="profile folder to write")
    imp.add_argument("--gpu", help="GPU preset the data was measured on (guessed from the path)")
    imp.add_argument("--no-compress", action="store_true", help="write .csv instead of .csv.gz")
    imp.set_defaults(func=_cmd_import)
    f = csub.add_parser("fit", help="fit a profile folder (NNLS on roofline terms + measured corrections), or a "
                        "GPU's compute and bandwidth factors on one served run (--from-run)")
    f.add_argument("profile", nargs="?", help="profile folder")
    f.add_argument("--from-run", metavar="RUN_DIR", help="fit the GPU's step model on one served run (experiment "
                   "folder: experiment.json + requests.csv) instead of a profile: its compute and bandwidth "
                   "factors, by replaying the run until mean TTFT and TPOT match")
    f.add_argument("--base-fit", metavar="FIT", help="with --from-run: the fit to start from (default: the GPU's "
                   "shipped fit, or the nearest one ported to the run's datasheet)")
    f.add_argument("--validate-on", nargs="*", metavar="RUN_DIR", help="with --from-run: replay these runs of the "
                   "same GPU with the fit and report their errors (leave-one-run-out)")
    f.add_argument("--out", required=True, help="fit file to write (YAML), e.g. fits/<gpu preset>.yaml for a "
                   "scenario's perf.fits_dir; never inside the installed package")
    f.add_argument("--heldout", type=float, default=0.2, help="share of rows held out to measure error")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-residual", action="store_true", help="roofline terms only, no correction grid")
    f.add_argument("--step-overhead-s", type=float, help="per-step host overhead to store in the fit")
    f.add_argument("--overhead-from", metavar="EXPERIMENT_DIR",
                   help="fit the per-step overhead (mean TPOT) and the sustained FLOPs factor (in-engine prefill "
                   "times) on one real run (e2e-ground-truth layout)")
    f.add_argument("--compute-scale", type=float, help="sustained-load factor on FLOPs terms to store in the fit")
    f.add_argument("--plot", help="predicted-vs-measured chart (.html, self-contained, or .png / .svg; default next to "
                   "--out)")
    f.set_defaults(func=_cmd_fit)
    v = csub.add_parser("validate", help="predict every row of a profile folder with a fit")
    v.add_argument("fit", help="fit file")
    v.add_argument("--profiles", required=True, help="profile folder with measurements the fit did not see")
    v.add_argument("--gpu", help="port the fit to this GPU preset's datasheet first")
    v.add_argument("--out", required=True, help="report JSON")
    v.set_defaults(func=_cmd_validate_fit)
    e = sub.add_parser("validate", help="replay a real serving run and compare TTFT, TPOT and e2e")
    e.add_argument("experiment", help="experiment folder (experiment.json + requests.csv)")
    e.add_argument("--perf", choices=["calibrated", "roofline"], default="calibrated")
    e.add_argument("--fit", help="fit file (default: the GPU's shipped fit, or the nearest one ported)")
    e.add_argument("--step-overhead-s", type=float, help="override the per-step overhead")
    e.add_argument("--out", required=True, help="output folder")
    e.set_defaults(func=_cmd_validate)
