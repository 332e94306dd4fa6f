"""A GPU's step model fitted on one served run (`simserve calibrate fit --from-run RUN_DIR`): for a GPU with no
kernel profile, a requests CSV with TTFT and TPOT per request plus the server's settings (an experiment folder,
the e2e-ground-truth layout) fix the two efficiencies a datasheet port has to guess.

The step model is the calibrated one (simserve.perf.calibrated) on the GPU's own fit, or the nearest shipped fit
ported to its datasheet. Every fitted operation is `(c0 + c_flops x FLOPs/peak + c_bytes x bytes/bandwidth) x
exp(r)`, so two factors act exactly on the two resources of every operation at once: `compute_scale` divides the
peak FLOP/s and `bandwidth_scale` the memory bandwidth. They are fitted by replaying the run (its scheduler, KV
capacity, preemptions and all) until the simulated mean TPOT and mean TTFT equal the measured ones: TPOT is set
mostly by decode steps (weights and KV streamed: bandwidth), TTFT by prefill work and by the queue a busy server
builds (compute, and both through throughput). The solve is Newton's method in log space on the two log errors,
with a finite-difference Jacobian updated by Broyden's rule (a replay per iteration), and a weak pull towards the
base fit's factors so that a factor the run cannot identify (TTFT of a lightly loaded server says little about
compute) stays where the kernel profile put it.

Leave-one-run-out error: fit on one run, replay another run of the same GPU with the fit (`--validate-on`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from simserve.calibration.replay import Experiment, experiment_scenario, load_experiment, validate_experiment
from simserve.hardware import datasheet_of
from simserve.perf.fits import Fit, fit_for_gpu, load_fit_cached

SCALE_BOUNDS = (0.25, 4.0)  # neither resource runs 4x faster or slower than the port's guess
PRIOR_WEIGHT = 0.05  # pull (in log units) towards the base fit's factors; small against a run's evidence


@dataclass
class RunFit:
    """A fit made from one run: the fit itself, what it was fitted to, and how the solve went."""

    fit: Fit
    targets: dict[str, float]
    simulated: dict[str, float]
    evaluations: list[dict[str, float]] = field(default_factory=list)


def run_targets(exp: Experiment) -> dict[str, float]:
    """The measured means the fit matches: TPOT, and TTFT inside the engine (queue + prefill when the run records
    both, since a server's own TTFT then also counts API-server time the replay does not model; else TTFT)."""
    real = exp.requests
    if {"queue_s", "prefill_s"} <= set(real.columns) and real["prefill_s"].notna().all():
        ttft = (real["queue_s"] + real["prefill_s"]).to_numpy(float)
    else:
        ttft = real["ttft_s"].to_numpy(float)
    tpot = real["tpot_s"].to_numpy(float)
    return {"ttft_s": float(np.mean(ttft)), "tpot_s": float(np.nanmean(tpot))}


def base_fit(exp: Experiment, fit: str | None = None) -> Fit:
    """The fit a run's GPU starts from: `fit` (a file) when given, else the GPU's shipped fit or the nearest one
    ported to the run's datasheet."""
    pool = experiment_scenario(exp).cluster.pools[0]
    assert not isinstance(pool.gpu, str)  # a run's GPU is its datasheet block, inline
    sheet = datasheet_of(pool.gpu)
    return load_fit_cached(fit).on(sheet) if fit is not None else fit_for_gpu(sheet)


def fit_from_run(path: str | Path | Experiment, fit: str | None = None, step_overhead_s: float | None = None,
                 max_iterations: int = 8, tol: float = 2e-3) -> RunFit:
    """Fit compute_scale and bandwidth_scale of a GPU's step model on one served run (see the module's
    docstring); `fit` is the base fit (default: the GPU's own or the nearest one, ported), `step_overhead_s`
    replaces its per-step overhead. Stops when both log errors are below `tol` or after `max_iterations`."""
    exp = path if isinstance(path, Experiment) else load_experiment(path)
    base = base_fit(exp, fit)
    overhead = base.step_overhead_s if step_overhead_s is None else step_overhead_s
    targets = run_targets(exp)
    lo, hi = (math.log(b) for b in SCALE_BOUNDS)
    prior = np.log([base.compute_scale, base.bandwidth_scale])
    evaluations: list[dict[str, float]] = []

    def residual(p: np.ndarray) -> np.ndarray:
        cs, bs = (float(v) for v in np.exp(p))
        report, _, _ = validate_experiment(exp, "calibrated", overhead, fit, cs, bs)
        sim = {"ttft_s": float(report["ttft_s_mean_sim"]), "tpot_s": float(report["tpot_s_mean_sim"])}
        evaluations.append({"compute_scale": cs, "bandwidth_scale": bs, **{f"{k}_sim": v for k, v in sim.items()}})
        return np.array([math.log(sim[k] / targets[k]) for k in ("ttft_s", "tpot_s")])

    def jacobian(p: np.ndarray, r: np.ndarray, h: float = 0.05) -> np.ndarray:
        cols = []
        for i in range(2):
            q = p.copy()
            q[i] += h if q[i] + h <= hi else -h
            cols.append((residual(q) - r) / (q[i] - p[i]))
        return np.column_stack(cols)

    p = prior.copy()
    r = residual(p)
    jac = jacobian(p, r)
    for _ in range(max_iterations):
        if np.abs(r).max() < tol:
            break
        # Least squares on [J dp = -r; w (p + dp - prior) = 0]: Newton's step, pulled weakly towards the prior.
        a = np.vstack([jac, PRIOR_WEIGHT * np.eye(2)])
        b = np.concatenate([-r, -PRIOR_WEIGHT * (p - prior)])
        step = np.linalg.lstsq(a, b, rcond=None)[0]
        new_p = np.clip(p + step, lo, hi)
        new_r = residual(new_p)
        dp, dr = new_p - p, new_r - r
        if float(dp @ dp) > 0:
            jac = jac + np.outer(dr - jac @ dp, dp) / float(dp @ dp)  # Broyden's rank-one update
        p, r = new_p, new_r
    best = min(evaluations, key=lambda e: max(abs(math.log(e[f"{k}_sim"] / targets[k])) for k in targets))
    name = exp.path.name
    source = dict(base.source, run=name, compute_scale=f"mean TTFT of {name} (replayed)",
                  bandwidth_scale=f"mean TPOT of {name} (replayed)")
    fitted = replace(base, source=source, step_overhead_s=overhead, compute_scale=best["compute_scale"],
                     bandwidth_scale=best["bandwidth_scale"])
    return RunFit(fit=fitted, targets=targets,
                  simulated={k: best[f"{k}_sim"] for k in targets}, evaluations=evaluations)


def validate_with_fit(path: str | Path | Experiment, fit: Fit) -> dict[str, Any]:
    """Replay a run with a fit made from another (or the same) run: `simserve validate`'s report."""
    exp = path if isinstance(path, Experiment) else load_experiment(path)
    report, _, _ = validate_experiment(exp, "calibrated", fit.step_overhead_s, None if fit.path is None
                                       else str(fit.path), fit.compute_scale, fit.bandwidth_scale)
    report["fit_run"] = fit.source.get("run")
    return report
