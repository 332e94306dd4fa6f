"""Step-time models: how long one iteration of a replica takes, as a pure function of the batch's composition.

`PerfSpec` is the scenario's `perf:` block (a union on `kind`); every spec builds its model with `build(ctx)` from a
`PerfContext`. Models: `linear` and `roofline` (analytic), `calibrated` (operations fitted on measured profiles;
fits are loaded read-only, fitting lives in simserve.calibration).
"""

from simserve.perf.analytic import (
    LinearPerf,
    RooflinePerf,
    StepQuantities,
    causal_pairs,
    step_quantities,
    step_tokens,
)
from simserve.perf.base import Batch, PerfContext, PerfModel, kept_context_sums
from simserve.perf.calibrated import CalibratedPerf
from simserve.perf.fits import (
    SHIPPED_FITS_DIR,
    TABLES,
    Fit,
    FitError,
    OpFit,
    fit_for_gpu,
    load_fit,
    load_fit_cached,
    shipped_fits,
)
from simserve.perf.specs import CalibratedPerfSpec, LinearPerfSpec, PerfSpec, RooflinePerfSpec

__all__ = [
    "kept_context_sums",
    "SHIPPED_FITS_DIR",
    "TABLES",
    "Batch",
    "CalibratedPerf",
    "CalibratedPerfSpec",
    "Fit",
    "FitError",
    "LinearPerf",
    "LinearPerfSpec",
    "OpFit",
    "PerfContext",
    "PerfModel",
    "PerfSpec",
    "RooflinePerf",
    "RooflinePerfSpec",
    "StepQuantities",
    "causal_pairs",
    "fit_for_gpu",
    "load_fit",
    "load_fit_cached",
    "shipped_fits",
    "step_quantities",
    "step_tokens",
]
