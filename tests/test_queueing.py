"""Layer (b): analytic checks against queueing theory over seeded replications.

One replica with max_num_seqs 1 and a linear model with only a per-step overhead d is a single server whose
service time is (output tokens) x d: one prefill step makes the first token, each decode step one more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import by_id, scenario, tiny

from simserve import Simulation

D_S = 0.01  # seconds per step


def single_server(rate_per_s: float, output_dist: dict, num_requests: int, seed: int) -> dict:
    data = tiny(pool={"max_num_seqs": 1}, perf={"kind": "linear", "step_overhead_s": D_S}, seed=seed)
    data["workload"] = {
        "num_requests": num_requests, "arrival": {"process": "poisson", "rate_per_s": rate_per_s},
        "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 1},
                 "output_tokens": output_dist, "reasoning_share": {"dist": "constant", "value": 0.0}}],
    }
    return data


def replicate_mean_w(data: dict, reps: int, warmup: int) -> tuple[float, float]:
    """Mean time in system over replications (first `warmup` requests dropped), and its standard error."""
    means = []
    for k in range(reps):
        d = dict(data, seed=1000 + k)
        res = Simulation(scenario(d)).run()
        e2e = by_id(res.requests)["e2e_s"].to_numpy()[warmup:]
        assert not np.isnan(e2e).any()
        means.append(e2e.mean())
    m = np.asarray(means)
    return float(m.mean()), float(m.std(ddof=1) / math.sqrt(reps))


def test_md1_mean_time_in_system():
    n_tokens = 50
    s = n_tokens * D_S  # deterministic service, 0.5 s
    rho = 0.7
    lam = rho / s
    w_theory = s + rho * s / (2 * (1 - rho))  # Pollaczek-Khinchine with zero service variance
    w, se = replicate_mean_w(single_server(lam, {"dist": "constant", "value": n_tokens}, 3000, 0), 16, 200)
    assert abs(w - w_theory) < 4 * se + 0.01 * w_theory, (w, w_theory, se)


def test_mm1_mean_time_in_system():
    # Geometric number of steps with mean 50: service is exponential up to the step granularity.
    p = 1 / 50
    k = np.arange(1, 2001)
    pmf = p * (1 - p) ** (k - 1)
    dist = {"dist": "empirical", "values": k.tolist(), "weights": pmf.tolist()}
    mean_k = float((k * pmf).sum() / pmf.sum())
    second_k = float((k * k * pmf).sum() / pmf.sum())
    es, es2 = mean_k * D_S, second_k * D_S**2
    rho = 0.6
    lam = rho / es
    w_pk = es + lam * es2 / (2 * (1 - rho))  # exact for this M/G/1
    w_mm1 = 1 / (1 / es - lam)  # the M/M/1 formula: within 1% of P-K at 50 steps per request
    w, se = replicate_mean_w(single_server(lam, dist, 3000, 0), 16, 200)
    assert abs(w - w_pk) < 4 * se + 0.01 * w_pk, (w, w_pk, se)
    assert abs(w - w_mm1) < 4 * se + 0.02 * w_mm1, (w, w_mm1, se)


def test_littles_law_holds_exactly_over_a_drained_run():
    # The time integral of the number in system equals the sum of times in system, when the run drains.
    data = tiny(pool={"max_num_seqs": 4, "replicas": 2}, router="least_outstanding")
    data["workload"]["num_requests"] = 400
    data["workload"]["arrival"] = {"process": "gamma", "rate_per_s": 12.0, "cv": 2.0}
    res = Simulation(scenario(data)).run()
    s = res.summary
    assert s["num_completed"] == 400
    area = (s["queue_len_mean"] + s["batch_size_mean"] * 2) * s["makespan_s"]
    assert area == pytest.approx(res.requests["e2e_s"].sum(), rel=1e-9)
    lam = s["num_requests"] / s["makespan_s"]
    assert s["queue_len_mean"] + 2 * s["batch_size_mean"] == pytest.approx(lam * res.requests["e2e_s"].mean())
