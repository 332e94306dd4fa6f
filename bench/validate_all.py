"""Replay every experiment folder under a directory (the e2e-ground-truth layout) and print the markdown tables
of docs/calibration.md: real vs simulated TTFT, TPOT and e2e at mean, p50 and p99, with relative errors.

    python bench/validate_all.py ../shared/data/e2e-ground-truth [--perf calibrated roofline] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from simserve.calibration import validate_experiment

COLUMNS = [(m, s) for m in ("ttft_s", "tpot_s", "e2e_s") for s in ("mean", "p50", "p99")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", help="folder of experiment folders")
    p.add_argument("--perf", nargs="*", default=["calibrated", "roofline"])
    p.add_argument("--out", help="write all reports here as JSON")
    args = p.parse_args(argv)
    folders = sorted(d for d in Path(args.root).iterdir() if (d / "experiment.json").exists())
    reports = []
    for perf in args.perf:
        print(f"\n### perf: {perf}\n")
        print("| experiment | " + " | ".join(f"{m.removesuffix('_s').upper()} {s}" for m, s in COLUMNS) + " |")
        print("|---|" + "---|" * len(COLUMNS))
        for d in folders:
            t0 = time.perf_counter()
            report, _, _ = validate_experiment(d, perf)
            report["wall_s"] = time.perf_counter() - t0
            reports.append(report)
            cells = [f"{report[f'{m}_{s}_real']:.4g} / {report[f'{m}_{s}_sim']:.4g} "
                     f"({report[f'{m}_{s}_rel_error']:.0%})" for m, s in COLUMNS]
            print(f"| {d.name} | " + " | ".join(cells) + " |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
