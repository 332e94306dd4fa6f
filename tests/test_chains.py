"""Fast-forwarded runs across preempting plans (issue 21): a saturated FCFS replica whose decodes eat the free
blocks preempts its newest decode and goes on, many times between two events. The run is predicted whole at its
start and its plans are made at their instants, so it must equal stepping one iteration at a time: the same
requests, times, preemptions, KV over time and steps, with routers that look at the replicas mid-run (`least_kv`,
`least_outstanding`, `power_of_two`, `prefix_affinity`), a shared prefix (prefix hits held by running requests),
cancels and forked samples, and horizons that cut runs."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_equal_figures, scenario
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_invariants import _ForkingSimulation, check_invariants, check_same_results

from simserve import Simulation, load_scenario, run

ROOT = Path(__file__).resolve().parent.parent


def _chains_scenario(*, seed: int, replicas: int, max_num_seqs: int, max_num_batched_tokens: int,
                     kv_block_tokens: int, num_kv_blocks: int, prefix_caching: bool,
                     long_prefill_token_threshold: int, perf: dict, router: str, num_requests: int,
                     rate_per_s: float, prompt_high: int, reasoning_high: int, answer_high: int,
                     system_prompt_tokens: int, horizon_s: float = 1e6) -> dict:
    """A saturated single-pool FCFS scenario of the shape `saturated()` draws (and its hunted examples take)."""
    return {
        "name": "chains", "seed": seed, "model": "llama-3.1-8b",
        "cluster": {"pools": [{
            "name": "p", "gpu": "h100-sxm", "replicas": replicas, "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens, "kv_block_tokens": kv_block_tokens,
            "num_kv_blocks": num_kv_blocks, "prefix_caching": prefix_caching,
            "long_prefill_token_threshold": long_prefill_token_threshold, "chunked_prefill": True}]},
        "perf": perf, "scheduler": {"kind": "fcfs"}, "router": router,
        "workload": {"num_requests": num_requests, "prefix_unit_tokens": 16,
                     "arrival": {"process": "poisson", "rate_per_s": rate_per_s},
                     "mix": [{"query_type": "q",
                              "prompt_tokens": {"dist": "uniform", "low": 1, "high": prompt_high},
                              "reasoning_tokens": {"dist": "uniform", "low": 10, "high": reasoning_high},
                              "answer_tokens": {"dist": "uniform", "low": 1, "high": answer_high},
                              "system_prompt_tokens": system_prompt_tokens}]},
        "slo": {"ttft_s": 1.0},
        "engine": {"horizon_s": horizon_s},
    }


@st.composite
def saturated(draw):
    block = draw(st.sampled_from([1, 2, 4, 16]))
    max_seqs = draw(st.integers(2, 12))
    budget = draw(st.integers(max(max_seqs, 16), 96))
    replicas = draw(st.integers(1, 3))
    num_kv_blocks = draw(st.integers(120 // block + 1, 500 // block + 2))
    prefix_caching = draw(st.booleans())
    threshold = draw(st.sampled_from([0, 0, 8]))
    kind = draw(st.sampled_from(["linear", "roofline", "calibrated"]))
    perf = ({"kind": "linear", "step_overhead_s": draw(st.floats(1e-3, 0.05)),
             "per_prefill_token_s": draw(st.floats(0, 1e-3)), "per_decode_seq_s": draw(st.floats(0, 1e-2)),
             "per_kv_token_s": draw(st.floats(0, 1e-4))} if kind == "linear" else {"kind": kind})
    return _chains_scenario(
        seed=draw(st.integers(0, 2**32 - 1)), replicas=replicas, max_num_seqs=max_seqs, max_num_batched_tokens=budget,
        kv_block_tokens=block, num_kv_blocks=num_kv_blocks, prefix_caching=prefix_caching,
        long_prefill_token_threshold=threshold, perf=perf,
        router=draw(st.sampled_from(["round_robin", "least_kv", "least_outstanding", "power_of_two",
                                     "prefix_affinity"])),
        num_requests=draw(st.integers(8, 40)), rate_per_s=draw(st.floats(2, 200)),
        prompt_high=draw(st.integers(1, 60)), reasoning_high=draw(st.integers(10, 240)),
        answer_high=draw(st.integers(1, 10)), system_prompt_tokens=draw(st.sampled_from([0, 16, 32])),
        horizon_s=draw(st.sampled_from([1e6, 1e6, 1e6, 0.7, 4.0])))


def _chained_run_end_case() -> dict:
    """A draw of `saturated()` (with forks) that a strict-equality hunt found: a chained run that began at 1.842 s ended
    at 6.493300224171502 s instead of its last step end, ...503, which no SimPy delay reaches from 1.842 s (now + d
    jumps from ...502 to ...504). Later first-token and finish times moved by an ulp. A run's end is now scheduled
    at its absolute time (a StepEnd's at_s, simserve/engine/events.py)."""
    return _chains_scenario(
        seed=228, replicas=1, max_num_seqs=6, max_num_batched_tokens=68, kv_block_tokens=16, num_kv_blocks=22,
        prefix_caching=True, long_prefill_token_threshold=0,
        perf={"kind": "linear", "step_overhead_s": 0.02219824709462799, "per_prefill_token_s": 3.360085547104853e-05,
              "per_decode_seq_s": 9.076990886985745e-05, "per_kv_token_s": 9.076990886985745e-05},
        router="round_robin", num_requests=38, rate_per_s=92.99181138924803, prompt_high=42, reasoning_high=228,
        answer_high=1, system_prompt_tokens=16)


def _first_step_reasoning_end_case() -> dict:
    """A draw of `saturated()` (with forks) that CI's hypothesis run found: a request sampled its last reasoning token
    in a chained run's first step (stamped when the run ends), was preempted by one of the run's plans, and was
    cancelled while it waited, when another sample of its prompt completed. Its row was recorded then, without the
    reasoning end the run would stamp later. The first step's reasoning ends are now stamped at the run's first
    preempting plan, before any victim leaves."""
    return _chains_scenario(
        seed=272, replicas=3, max_num_seqs=6, max_num_batched_tokens=43, kv_block_tokens=16, num_kv_blocks=9,
        prefix_caching=False, long_prefill_token_threshold=8, perf={"kind": "roofline"}, router="least_outstanding",
        num_requests=33, rate_per_s=123.0, prompt_high=30, reasoning_high=95, answer_high=8, system_prompt_tokens=0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(saturated(), st.booleans())
@example(_chained_run_end_case(), True)
@example(_first_step_reasoning_end_case(), True)
def test_runs_across_preemptions_equal_exact_steps(data, forks):
    make = _ForkingSimulation if forks else Simulation
    sim_ff, sim_ex = make(scenario(data, check_invariants=True)), make(scenario(data, check_invariants=True,
                                                                                  exact_steps=True))
    ff, ex = sim_ff.run(), sim_ex.run()
    n = data["workload"]["num_requests"] + (sim_ff.num_forked if forks else 0)
    check_invariants(sim_ff, ff, n)
    check_invariants(sim_ex, ex, n)
    check_same_results(ff, ex)
    assert ff.summary["num_preemptions"] == ex.summary["num_preemptions"]


SATURATED = {"name": "sat", "seed": 7, "model": "llama-3.1-8b",
             "cluster": {"pools": [{"name": "p", "gpu": "h100-sxm", "replicas": 2, "max_num_seqs": 16,
                                    "max_num_batched_tokens": 256, "kv_block_tokens": 16, "num_kv_blocks": 120,
                                    "prefix_caching": True}]},
             "perf": {"kind": "roofline"}, "scheduler": {"kind": "fcfs"}, "router": "round_robin",
             "workload": {"num_requests": 120, "prefix_unit_tokens": 16,
                          "arrival": {"process": "poisson", "rate_per_s": 4.0},
                          "mix": [{"query_type": "q", "prompt_tokens": {"dist": "uniform", "low": 50, "high": 200},
                                   "reasoning_tokens": {"dist": "uniform", "low": 200, "high": 900},
                                   "answer_tokens": {"dist": "uniform", "low": 5, "high": 30},
                                   "system_prompt_tokens": 32}]},
             "slo": {"ttft_s": 1.0}}


def test_a_saturated_replica_preempts_inside_runs_with_the_same_results():
    sim_ff = Simulation(scenario(SATURATED, check_invariants=True))
    sim_ex = Simulation(scenario(SATURATED, check_invariants=True, exact_steps=True))
    ff, ex = sim_ff.run(), sim_ex.run()
    check_same_results(ff, ex)
    chained = sum(r.num_chained_plans for r in sim_ff.replicas)
    assert ff.summary["num_preemptions"] > 100
    assert chained > 0.5 * ff.summary["num_preemptions"]  # most preempting plans made inside runs
    assert sum(r.num_chained_plans for r in sim_ex.replicas) == 0
    # Turned off (another scheduler, here FCFS's twin with the newest as victim), runs stop at each preemption:
    off = copy.deepcopy(SATURATED)
    off["scheduler"] = {"kind": "fair_share"}
    sim_off = Simulation(scenario(off))
    sim_off.run()
    assert sum(r.num_chained_plans for r in sim_off.replicas) == 0


def test_the_blis_speed_workload_spans_its_preemptions():
    sc = load_scenario(ROOT / "bench" / "blis" / "blis-speed.yaml", ["workload.num_requests=3000"])
    s = run(sc).summary
    assert s["num_preemptions"] > 6000  # about two per request
    assert s["events_per_request"] < 5.5  # 5.09; 9.4 with a plan and an event per preemption


def test_the_waiting_count_inside_a_run_counts_the_victims_of_its_plans_made_before_now():
    # Replica.num_waiting (the backlog samples read it at arrivals) must be len(waiting) after the run in flight is
    # brought up to now, without bringing it: the queue plus the victims of the preempting plans made before now.
    from simserve.engine import Hooks

    seen = {"samples": 0, "ahead": 0}

    class Compare(Hooks):
        def arrived(self, req):
            for r in sim.replicas:
                counted, queued = r.num_waiting, len(r.planner.waiting)
                assert counted == len(r.waiting), (counted, queued)  # r.waiting syncs the run
                seen["samples"] += 1
                seen["ahead"] += counted > queued

    sim = Simulation(scenario(SATURATED), hooks=[Compare()])
    sim.run()
    assert sim.replicas[0].num_chained_plans > 0 and seen["samples"] > 100
    assert seen["ahead"] > 0  # some samples counted victims not yet in the queue


class _ArrayTimes:
    """A perf model whose runs' step times always come as arrays: the engine's path for long runs and for runs with
    preempting plans, taken here by the short runs too (the roofline gives a short run's times as a list)."""

    def __init__(self, perf) -> None:
        self._perf = perf
        self.overhead_s = perf.overhead_s
        self.reads_longest_context = getattr(perf, "reads_longest_context", True)

    def step_time_s(self, batch):
        return self._perf.step_time_s(batch)

    def decode_run_times_s(self, contexts, num_steps, caps=None):
        return np.asarray(self._perf.decode_run_times_s(contexts, num_steps, caps), dtype=float)

    def decode_run_stats_s(self, n, context_sum, context_max, num_steps):
        return np.asarray(self._perf.decode_run_stats_s(n, context_sum, context_max, num_steps), dtype=float)


@pytest.mark.parametrize("horizon_s", [1e6, 15.0, 21.3])
@pytest.mark.parametrize("rate_per_s", [4.0, 40.0])
def test_a_short_runs_step_times_as_a_list_give_what_arrays_give(horizon_s, rate_per_s):
    """The roofline gives a short run's step times as a list (perf.base.StepTimes), which the engine keeps as a list:
    its step ends summed with floats, searched with bisect when an arrival cuts the run or the replica is looked at
    mid-run, its KV over time from the list. Everything must be what the arrays give, to the last bit: the requests,
    the replicas' segments (their KV means too), the summary; with arrivals that cut runs and horizons that stop
    them in flight."""
    data = copy.deepcopy(SATURATED)
    data["workload"]["arrival"]["rate_per_s"] = rate_per_s
    data["engine"] = {"horizon_s": horizon_s}
    data["router"] = "least_kv"  # looks at the replicas mid-run
    sims = [Simulation(scenario(data, check_invariants=True)) for _ in range(2)]
    lists, arrays = sims
    assert isinstance(lists.replicas[0].perf.decode_run_stats_s(8, 800, 0, 5), list)
    for r in arrays.replicas:
        r.perf = _ArrayTimes(r.perf)
    a, b = lists.run(), arrays.run()
    assert a.requests.equals(b.requests)
    assert a.replicas.equals(b.replicas)
    assert_equal_figures({k: v for k, v in a.summary.items() if k != "wall_time_s"},
                         {k: v for k, v in b.summary.items() if k != "wall_time_s"})
    assert (a.replicas.num_steps > 1).sum() > 20  # fast-forwarded runs, most of them short
