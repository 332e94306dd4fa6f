"""The schedulers beside FCFS: starvation of short requests behind long reasoning, SJF against M/G/1 theory,
fair share across users, and the spec and queue mechanics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import by_id, req, scenario, tiny

from simserve import Simulation
from simserve.engine import Hooks
from simserve.metrics import jain_index
from simserve.schedulers import (
    FairShare,
    FairShareSchedulerSpec,
    Priority,
    ShortestPredictedFirst,
    ShortestPredictedFirstSchedulerSpec,
)

D_S = 0.01  # seconds per step


def _long_and_short(scheduler: dict | str, num_requests: int = 40) -> dict:
    """Two decode slots, one in four requests reasons 800 tokens, the rest answer in 5: a burst that queues."""
    data = tiny(pool={"max_num_seqs": 2}, perf={"kind": "linear", "step_overhead_s": D_S}, seed=3,
                scheduler=scheduler)
    const = lambda v: {"dist": "constant", "value": v}  # noqa: E731
    data["workload"] = {
        "num_requests": num_requests, "arrival": {"process": "poisson", "rate_per_s": 20.0},
        "mix": [{"query_type": "long", "weight": 1, "prompt_tokens": const(10), "reasoning_tokens": const(800),
                 "answer_tokens": const(5)},
                {"query_type": "short", "weight": 3, "prompt_tokens": const(10), "reasoning_tokens": const(0),
                 "answer_tokens": const(5)}],
    }
    return data


def _short_max_wait(data: dict, exact: bool = False) -> float:
    res = Simulation(scenario(data, exact_steps=exact)).run()
    r = res.requests
    assert (r.status == "completed").all()
    short = r[r.query_type == "short"]
    return float((short.first_token_s - short.arrival_s).max())


@pytest.mark.parametrize("other", [
    {"kind": "reasoning_aware", "chunk_tokens": 64, "long_after_tokens": 64, "preempt_mode": "recompute"},
    {"kind": "reasoning_aware", "chunk_tokens": 64, "long_after_tokens": 64, "preempt_mode": "swap"},
    {"kind": "shortest_predicted_first", "log_error": 0.0},
])
def test_long_reasoning_starves_short_requests_under_fcfs_only(other):
    fcfs = _short_max_wait(_long_and_short("fcfs"))
    better = _short_max_wait(_long_and_short(other))
    assert fcfs > 8.0  # short requests waited behind whole 800-token reasonings (8 s each)
    assert better < fcfs / 4, (better, fcfs)


def test_reasoning_aware_swap_counts_bytes_and_fast_forward_is_exact():
    data = _long_and_short({"kind": "reasoning_aware", "chunk_tokens": 64, "long_after_tokens": 64,
                            "preempt_mode": "swap", "pcie_bandwidth_bytes_per_s": 1e9})
    ff = Simulation(scenario(data, check_invariants=True)).run()
    ex = Simulation(scenario(data, check_invariants=True, exact_steps=True)).run()
    assert ff.summary["swap_bytes"] > 0
    assert ff.summary["swap_bytes"] == ex.summary["swap_bytes"]
    assert ff.summary["num_preemptions"] > 0
    a, b = by_id(ff.requests), by_id(ex.requests)
    assert np.allclose(a.finish_s, b.finish_s, rtol=1e-9, atol=0)
    # Swapped KV is restored, not recomputed: no prefill beyond the prompts and one token per readmission.
    prefill = ff.replicas.prefill_tokens.sum()
    assert prefill == (ff.requests.prompt_tokens.sum() + ff.summary["num_preemptions"])


def _mg1_sjf_mean_w(lam: float, sizes: np.ndarray, pmf: np.ndarray) -> float:
    """Mean time in system of M/G/1 non-preemptive shortest job first (Phipps 1956; Kleinrock vol. 2, 3.7),
    sizes discrete: a job of size x waits W0 / ((1 - rho(x-)) (1 - rho(x))), with W0 = lam E[S^2] / 2 and
    rho(x) the load of jobs of size at most x."""
    w0 = lam * float((pmf * sizes**2).sum()) / 2
    rho = np.cumsum(lam * pmf * sizes)
    before = np.concatenate(([0.0], rho[:-1]))
    wq = w0 / ((1 - before) * (1 - rho))
    return float((pmf * (wq + sizes)).sum())


def test_sjf_with_a_perfect_predictor_matches_mg1_sjf():
    p = 1 / 20  # geometric output tokens, mean ~20, one step each
    k = np.arange(1, 301)
    pmf = p * (1 - p) ** (k - 1)
    pmf /= pmf.sum()
    sizes = k * D_S
    rho = 0.8
    lam = rho / float((pmf * sizes).sum())
    w_theory = _mg1_sjf_mean_w(lam, sizes, pmf)
    es, es2 = float((pmf * sizes).sum()), float((pmf * sizes**2).sum())
    w_fcfs = es + lam * es2 / (2 * (1 - rho))
    assert w_theory < 0.8 * w_fcfs  # the check can tell SJF from FCFS
    data = tiny(pool={"max_num_seqs": 1}, perf={"kind": "linear", "step_overhead_s": D_S},
                scheduler={"kind": "shortest_predicted_first", "log_error": 0.0})
    data["workload"] = {
        "num_requests": 4000, "arrival": {"process": "poisson", "rate_per_s": lam},
        "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 1},
                 "output_tokens": {"dist": "empirical", "values": k.tolist(), "weights": pmf.tolist()},
                 "reasoning_share": {"dist": "constant", "value": 0.0}}],
    }
    means = []
    for rep in range(10):
        res = Simulation(scenario(dict(data, seed=500 + rep))).run()
        means.append(by_id(res.requests)["e2e_s"].to_numpy()[300:].mean())
    w, se = float(np.mean(means)), float(np.std(means, ddof=1) / math.sqrt(len(means)))
    assert abs(w - w_theory) < 4 * se + 0.03 * w_theory, (w, w_theory, se, w_fcfs)


class _TwoUsers(Hooks):
    """Four requests in five belong to user 0 (heavy), the fifth to user 1."""

    def arrived(self, req):
        req.user_id = 1 if req.request_id % 5 == 4 else 0


def _heavy_share(scheduler: str) -> float:
    data = tiny(pool={"max_num_seqs": 1}, perf={"kind": "linear", "step_overhead_s": D_S}, scheduler=scheduler)
    data["workload"] = {  # 40 tokens (0.4 s) each, arriving 10x faster than served: both users backlogged
        "num_requests": 300, "arrival": {"process": "poisson", "rate_per_s": 25.0},
        "mix": [{"query_type": "q", "prompt_tokens": {"dist": "constant", "value": 10},
                 "reasoning_tokens": {"dist": "constant", "value": 35},
                 "answer_tokens": {"dist": "constant", "value": 5}}],
    }
    res = Simulation(scenario(data), hooks=[_TwoUsers()]).run()
    r = res.requests.sort_values("first_token_s")
    served = r.iloc[:100]  # the first 100 served: both users still have requests waiting
    return float((served.user_id == 0).mean())


def test_fair_share_equalises_service_across_users():
    assert _heavy_share("fcfs") > 0.7  # FCFS serves in proportion to arrivals (80 %)
    assert 0.4 < _heavy_share("fair_share") < 0.6


def test_vtc_lifts_a_returning_user_and_orders_by_counter():
    fs = FairShare(FairShareSchedulerSpec(kind="fair_share", prompt_weight=1.0, output_weight=0.0))
    a0, a1, b0 = req(0, 0.0, 100, 0, 1, user=0), req(1, 0.1, 100, 0, 1, user=0), req(2, 0.2, 10, 0, 1, user=1)
    fs.push(a0)
    fs.push(a1)
    fs.charge({})
    assert fs.pop() is a0  # user 0 charged 100
    fs.push(b0)
    fs.charge({})  # user 1 lifted to the min of the waiting users' counters: user 0's 100
    assert fs.counters[1] == 100
    assert fs.pop() is a1  # tie on counters: the older request first
    assert fs.pop() is b0


def test_priority_orders_by_class_then_arrival_and_picks_the_least_urgent_victim():
    q = Priority()
    r = [req(i, 0.1 * i, 5, 0, 1) for i in range(4)]
    r[0].priority, r[1].priority, r[2].priority, r[3].priority = 1, 0, 1, 0
    for x in r:
        q.push(x)
    assert [q.pop() for _ in range(4)] == [r[1], r[3], r[0], r[2]]
    assert max(r, key=q.victim_key) is r[2]  # largest priority value, newest


def test_shortest_predicted_first_aging_and_error():
    spec = ShortestPredictedFirstSchedulerSpec(kind="shortest_predicted_first", aging_tokens_per_s=10.0)
    q = ShortestPredictedFirst(spec, np.random.default_rng(0))
    old_long, new_short = req(0, 0.0, 5, 100, 1), req(1, 5.0, 5, 40, 1)  # 101 vs 41 + 10 x 5 = 91: short first
    q.push(old_long)
    q.push(new_short)
    assert q.pop() is new_short
    late_short = req(2, 10.0, 5, 40, 1)  # 41 + 100 = 141 > 101: aged long request first
    q.push(late_short)
    assert q.pop() is old_long
    noisy = ShortestPredictedFirst(ShortestPredictedFirstSchedulerSpec(kind="shortest_predicted_first",
                                                                       log_error=1.0),
                                   np.random.default_rng(1))
    preds = np.array([noisy.predicted_remaining(req(i, 0.0, 5, 999, 1)) for i in range(4000)])
    assert abs(np.log(preds / 1000).std() - 1.0) < 0.05  # lognormal error of sigma log_error


def test_jain_index():
    assert jain_index(np.array([5.0, 5.0, 5.0])) == pytest.approx(1.0)
    assert jain_index(np.array([9.0, 0.0, 0.0])) == pytest.approx(1 / 3)


def test_service_summary_by_slices_of_users_equals_the_whole_table(tmp_path, monkeypatch):
    # Many users, few requests each (10M users at 1M requests): the users' totals are summed a slice at a time,
    # bounding memory, and must give the index of the whole table's per-user totals bit for bit.
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from simserve import metrics

    rng = np.random.default_rng(5)
    n = 20_000
    arrival = rng.random(n) * 100
    first = np.where(rng.random(n) < 0.1, np.nan, arrival + rng.random(n))
    df = pd.DataFrame({"user_id": rng.integers(0, 30_000, n), "arrival_s": arrival, "first_token_s": first,
                       "generated_tokens": rng.integers(0, 5000, n)})
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "r.parquet", row_group_size=3000)
    served = df.groupby("user_id")["generated_tokens"].sum().to_numpy()
    want = {"max_wait_s": float(np.nanmax(first - arrival)), "jain_fairness_users": jain_index(served)}
    assert metrics.service_summary(df) == want
    monkeypatch.setattr(metrics, "SERVICE_SLICE_ROWS", 1500)  # 14 slices
    assert metrics.service_summary(tmp_path / "r.parquet") == want
    assert metrics.service_summary(df) == want


def test_fair_share_says_when_a_decode_run_may_reorder_its_users():
    """Users 0 (counter 100, 3 decodes running) and 1 (130, none, its request the older) wait: each decode-only step
    adds 2 x 3 to user 0's counter, so from the plan 5 steps on (130 - 100 = 30 = 6 x 5) user 1 comes first (a tie
    goes to the older request); a user that grows as fast never overtakes. Charging the steps confirms the bound is
    tight."""
    spec = FairShareSchedulerSpec(kind="fair_share", prompt_weight=1.0, output_weight=2.0)
    fs = FairShare(spec)
    b, a = req(1, 0.0, 130, 0, 1, user=1), req(0, 0.1, 100, 0, 1, user=0)
    fs.push(b)
    fs.push(a)
    fs.counters = {0: 100.0, 1: 130.0}
    assert fs.num_users_waiting == 2 and fs.peek() is a
    assert fs.steps_until_reorder({0: 3}) == 5
    assert fs.steps_until_reorder({0: 3, 1: 3}) == -1  # the same rate: the order holds
    assert fs.steps_until_reorder({1: 3}) == -1  # the head is not the one growing: it stays first
    fs.counters[0] += 2.0 * 3 * 4
    assert fs.peek() is a  # after 4 steps: 124 < 130
    fs.counters[0] += 2.0 * 3
    assert fs.peek() is b  # after 5: 130 = 130, and user 1's request is the older
