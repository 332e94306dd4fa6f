"""Replay every experiment folder under a directory (the e2e-ground-truth layout) and print the markdown tables
of docs/calibration.md exactly as the page has them (tests/test_docs.py checks that it still does): real vs
simulated TTFT, TPOT and e2e at mean, p50 and p99 with relative errors, per step model, and the mean errors of the
roofline model against the calibrated one.

    python bench/validate_all.py ../shared/data/e2e-ground-truth [--perf calibrated roofline] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from simserve.calibration import validate_experiment
from simserve.perf.fits import load_fit, shipped_fits

COLUMNS = [(m, s) for m in ("ttft_s", "tpot_s", "e2e_s") for s in ("mean", "p50", "p99")]
MEAN_COLUMNS = [(m, "mean") for m in ("ttft_s", "tpot_s", "e2e_s")]
IN_SAMPLE, PORTED = "†", "‡"


def experiments(root: Path) -> list[Path]:
    return sorted(d for d in Path(root).iterdir() if (d / "experiment.json").exists())


def replay_all(root: Path, perf: str) -> dict[str, dict[str, Any]]:
    """Experiment name -> validation report (as `simserve validate` writes it), with the wall time of its replay."""
    out = {}
    for d in experiments(root):
        t0 = time.perf_counter()
        report, _, _ = validate_experiment(d, perf)
        report["wall_s"] = time.perf_counter() - t0
        out[d.name] = report
    return out


def _label(m: str, s: str) -> str:
    return f"{m.removesuffix('_s').upper().replace('E2E', 'e2e')} {s}"


def mark(report: dict[str, Any]) -> str:
    """The page's footnote marks for a calibrated replay: † when the GPU's shipped fit took a number from this very
    run (its source names it), ‡ when the GPU has no fit of its own (the nearest one, ported by datasheet)."""
    fits = shipped_fits()
    if report["gpu"] not in fits:
        return f" {PORTED}"
    source = load_fit(fits[report["gpu"]]).source
    return f" {IN_SAMPLE}" if any(report["experiment"] in str(v) for v in source.values()) else ""


def full_table(reports: dict[str, dict[str, Any]], marks: bool = False) -> list[str]:
    lines = ["| experiment | " + " | ".join(_label(m, s) for m, s in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, r in reports.items():
        cells = [f"{r[f'{m}_{s}_real']:.4g} / {r[f'{m}_{s}_sim']:.4g} ({r[f'{m}_{s}_rel_error']:.0%})"
                 for m, s in COLUMNS]
        lines.append(f"| {name}{mark(r) if marks else ''} | " + " | ".join(cells) + " |")
    return lines


def versus_table(roofline: dict[str, dict[str, Any]], calibrated: dict[str, dict[str, Any]]) -> list[str]:
    """Mean errors, roofline / calibrated; the smaller (as printed) in bold, neither when they print the same."""
    lines = ["| experiment | " + " | ".join(_label(m, s) for m, s in MEAN_COLUMNS) + " |",
             "|---|" + "---|" * len(MEAN_COLUMNS)]
    for name in calibrated:
        cells = []
        for m, s in MEAN_COLUMNS:
            a, b = (f"{r[name][f'{m}_{s}_rel_error']:.0%}" for r in (roofline, calibrated))
            if a != b:
                a, b = (f"**{a}**", b) if int(a[:-1]) < int(b[:-1]) else (a, f"**{b}**")
            cells.append(f"{a} / {b}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", help="folder of experiment folders", type=Path)
    p.add_argument("--perf", nargs="*", default=["calibrated", "roofline"])
    p.add_argument("--out", help="write all reports here as JSON")
    args = p.parse_args(argv)
    reports = {perf: replay_all(args.root, perf) for perf in args.perf}
    for perf, by_name in reports.items():
        print(f"\n### perf: {perf}\n")
        print("\n".join(full_table(by_name, marks=perf == "calibrated")))
    if {"calibrated", "roofline"} <= set(reports):
        print("\n### mean errors, roofline / calibrated (the better in bold)\n")
        print("\n".join(versus_table(reports["roofline"], reports["calibrated"])))
    if args.out:
        Path(args.out).write_text(json.dumps([r for by_name in reports.values() for r in by_name.values()],
                                             indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
