"""Reproduce the op-level tables of docs/calibration.md and print their markdown exactly as the page has it
(tests/test_docs.py checks that the page still says what this prints): the in-GPU held-out error of a fit of each
imported profile in calibration/profiles (what `simserve calibrate fit PROFILE` reports), and the shipped fits
predicting other GPUs' and sources' measurements (what `simserve calibrate validate` reports). About 5 s.

    python bench/fit_tables.py
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from simserve.calibration import fit_profile, load_profile, validate_fit
from simserve.hardware import GPUS, datasheet_of
from simserve.perf.fits import Fit, load_fit, shipped_fits

PROFILES = Path(__file__).resolve().parent.parent / "calibration" / "profiles"
# Profile folder -> how the page names it. aiconfigurator profiles get a row per table; Vidur ones one row.
AICONFIGURATOR = [("h100-sxm", "H100 SXM (aiconfigurator, vLLM 0.24)"),
                  ("a100-80gb", "A100 SXM 80GB (aiconfigurator, vLLM 0.14)")]
VIDUR = [("a100-80gb-vidur", "A100 (Vidur, sarathi fp16)"), ("h100-sxm-vidur", "H100 (Vidur)")]
VIDUR_TABLES = ["gemm", "elementwise/rmsnorm", "elementwise/silu_mul", "allreduce"]
OP_TABLES = ["gemm", "context_attention", "generation_attention", "allreduce"]


def _pct(x: float) -> str:
    return f"{x:.1%}"


def _row(*cells: str) -> str:
    """A markdown table row; an empty cell is written `| |`."""
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def fit_of(profile: str) -> Fit:
    """The fit `simserve calibrate fit` makes of a profile (20% held out, seed 0)."""
    return fit_profile(load_profile(PROFILES / profile))


def heldout_table() -> list[str]:
    lines = ["| GPU (source) | table | rows | held-out MAPE | p90 APE | base alone (train MAPE) |",
             "|---|---|---|---|---|---|"]
    for profile, label in AICONFIGURATOR:
        fit = fit_of(profile)
        for i, name in enumerate(OP_TABLES):
            st = fit.tables[name].stats
            lines.append(_row(label if i == 0 else "", name, f"{st['train']['n']:,}", _pct(st["heldout"]["mape"]),
                              _pct(st["heldout"]["p90_ape"]), _pct(st["base_train"]["mape"])))
        overall = fit.source["heldout_overall"]
        rows = sum(fit.tables[name].stats["train"]["n"] for name in OP_TABLES)
        lines.append(_row("", "**all op rows**", f"{rows:,}", f"**{_pct(overall['mape'])}**",
                          _pct(overall["p90_ape"]), ""))
    for profile, label in VIDUR:
        fit = fit_of(profile)
        stats = [fit.tables[name].stats for name in VIDUR_TABLES]
        lines.append(_row(label, " / ".join(name.split("/")[-1] for name in VIDUR_TABLES),
                          " / ".join(f"{st['train']['n']:,}" for st in stats),
                          " / ".join(_pct(st["heldout"]["mape"]) for st in stats),
                          " / ".join(_pct(st["heldout"]["p90_ape"]) for st in stats), ""))
    return lines


# (row label, predicted measurements, shipped fit, GPU preset it is ported to or None, profile folder)
CROSS = [("A100 fit ported to the H100 datasheet", "H100 aiconfigurator", "a100-80gb", "h100-sxm", "h100-sxm"),
         ("H100 fit ported to the A100 datasheet", "A100 aiconfigurator", "h100-sxm", "a100-80gb", "a100-80gb"),
         ("H100 fit (aiconfigurator)", "H100 Vidur", "h100-sxm", None, "h100-sxm-vidur"),
         ("A100 fit (aiconfigurator)", "A100 Vidur", "a100-80gb", None, "a100-80gb-vidur")]


def cross_table() -> list[str]:
    lines = ["| fit | predicts | gemm | context attn | generation attn | allreduce | all rows |",
             "|---|---|---|---|---|---|---|"]
    for label, predicts, fit_name, port_to, profile in CROSS:
        fit = load_fit(shipped_fits()[fit_name])
        if port_to is not None:
            fit = fit.ported_to(datasheet_of(GPUS[port_to]))
        report: dict[str, Any] = validate_fit(fit, load_profile(PROFILES / profile))
        cells = [_pct(report[t]["mape"]) if t in report else "" for t in [*OP_TABLES, "overall"]]
        lines.append(_row(label, predicts, *cells))
    return lines


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("\n".join(heldout_table()), end="\n\n", flush=True)
    print("\n".join(cross_table()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
