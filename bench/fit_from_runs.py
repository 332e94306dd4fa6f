"""Leave-one-run-out error of `simserve calibrate fit --from-run`: fit a GPU's compute and bandwidth factors on one
real run, replay another run of the same GPU with that fit, and print the markdown table of docs/calibration.md
(tests/test_calibration.py checks that the page still has it). The RTX PRO 6000 has one run: in sample only.

    python bench/fit_from_runs.py ../shared/data/e2e-ground-truth     (about 15 s)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from simserve.calibration import fit_from_run, validate_with_fit

# (fitted on, replayed): each GPU's runs against each other; a GPU with one run, against itself.
PAIRS = [("rtx4090-llama31-8b-tp1-seqs128", "rtx4090-llama31-8b-tp1-seqs256"),
         ("rtx4090-llama31-8b-tp1-seqs256", "rtx4090-llama31-8b-tp1-seqs128"),
         ("h100-llama2-7b-tp1-mixed", "h100-codellama34b-tp1-prefixheavy"),
         ("h100-codellama34b-tp1-prefixheavy", "h100-llama2-7b-tp1-mixed"),
         ("rtxpro6000-llama31-8b-tp1", "rtxpro6000-llama31-8b-tp1")]
COLUMNS = [(m, s) for m in ("ttft_s", "tpot_s", "e2e_s") for s in ("mean", "p50", "p99")]


def loro(root: Path) -> list[dict[str, Any]]:
    """One row per pair: the factors fitted on the first run and the second run's replay report."""
    fits = {name: fit_from_run(root / name).fit for name in dict.fromkeys(a for a, _ in PAIRS)}
    rows = []
    for fitted_on, replayed in PAIRS:
        fit = fits[fitted_on]
        rows.append({"fitted_on": fitted_on, "replayed": replayed, "compute_scale": fit.compute_scale,
                     "bandwidth_scale": fit.bandwidth_scale, **validate_with_fit(root / replayed, fit)})
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = " | ".join(f"{m.removesuffix('_s').upper().replace('E2E', 'e2e')} {s}" for m, s in COLUMNS)
    lines = [f"| fitted on | replayed | compute / bandwidth scale | {head} |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for r in rows:
        replayed = "same run (in sample)" if r["replayed"] == r["fitted_on"] else r["replayed"]
        cells = " | ".join(f"{r[f'{m}_{s}_rel_error']:.1%}" for m, s in COLUMNS)
        lines.append(f"| {r['fitted_on']} | {replayed} | {r['compute_scale']:.3f} / {r['bandwidth_scale']:.3f} | "
                     f"{cells} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", type=Path, help="folder of experiment folders (e2e-ground-truth)")
    args = p.parse_args(argv)
    print("\n".join(table(loro(args.root))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
