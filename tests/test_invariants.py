"""Layer (c): hypothesis invariants over random small scenarios, and fast-forward == step-by-step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import by_id, scenario
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from simserve import Simulation
from simserve.engine import Arrival, Hooks
from simserve.request import Request

QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.yaml"


@st.composite
def scenarios(draw):
    block = draw(st.sampled_from([1, 2, 4, 16]))
    max_seqs = draw(st.integers(1, 6))
    budget = draw(st.integers(max(max_seqs, 4), 64))
    pool = {
        "name": "p", "gpu": "h100-sxm", "replicas": draw(st.integers(1, 3)),
        "max_num_seqs": max_seqs, "max_num_batched_tokens": budget,
        "kv_block_tokens": block, "num_kv_blocks": draw(st.integers(60 // block + 1, 400 // block + 2)),
        "prefix_caching": draw(st.booleans()), "async_scheduling": draw(st.booleans()),
        "long_prefill_token_threshold": draw(st.sampled_from([0, 0, 3, 16])),
        "reserve_full_isl": draw(st.sampled_from([True, True, False])),
    }
    compression = draw(st.sampled_from(["off", "off", "tokens", "share"]))  # KV compression (issue 17)
    if compression == "tokens":
        pool["kv_compression"] = {"method": draw(st.sampled_from(["rkv", "snapkv", "h2o"])),
                                  "budget_tokens": draw(st.integers(1, 40)), "window_tokens": 0}
    elif compression == "share":
        pool["kv_compression"] = {"method": "rkv", "budget_share": draw(st.floats(0.05, 1.0)), "window_tokens": 0}
    if not draw(st.booleans()):  # chunked prefill off: vLLM needs max_model_len <= max_num_batched_tokens
        pool.update(chunked_prefill=False, max_model_len_tokens=budget)
    kind = draw(st.sampled_from(["linear", "roofline", "calibrated"]))
    if kind == "linear":
        perf = {"kind": "linear", "step_overhead_s": draw(st.floats(1e-3, 0.05)),
                "per_prefill_token_s": draw(st.floats(0, 1e-3)), "per_decode_seq_s": draw(st.floats(0, 1e-2)),
                "per_kv_token_s": draw(st.floats(0, 1e-4))}
    else:
        perf = {"kind": kind}
    lengths = {
        "prompt_tokens": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 40))},
        "reasoning_tokens": {"dist": "uniform", "low": 0, "high": draw(st.integers(0, 60))},
        "answer_tokens": {"dist": "uniform", "low": 1, "high": draw(st.integers(1, 10))},
        "system_prompt_tokens": draw(st.sampled_from([0, 0, 16, 32])),  # a shared prefix for the prefix cache
    }
    arrival = ({"process": "poisson", "rate_per_s": draw(st.floats(0.5, 50))} if draw(st.booleans())
               else {"process": "gamma", "rate_per_s": draw(st.floats(0.5, 50)), "cv": draw(st.floats(0.3, 4))})
    layout = draw(st.sampled_from(["one", "two", "disaggregated"]))
    pools = [pool]
    if layout == "two":
        pools = [pool, {**pool, "name": "q", "gpu": "a100-80gb", "replicas": 1}]
    elif layout == "disaggregated":
        pools = [{**pool, "role": "prefill"}, {**pool, "name": "q", "role": "decode",
                                               "replicas": draw(st.integers(1, 2))}]
    return with_scheduler({
        "name": "prop", "seed": draw(st.integers(0, 2**32 - 1)), "model": "llama-3.1-8b",
        "cluster": {"pools": pools, "kv_transfer": {"bandwidth_bytes_per_s": draw(st.sampled_from([1e9, 50e9])),
                                                    "latency_s": draw(st.sampled_from([0.0, 0.002]))}},
        "perf": perf,
        "router": draw(st.sampled_from(["round_robin", "least_outstanding", "least_kv", "power_of_two", "random"])),
        "workload": {"num_requests": draw(st.integers(1, 40)), "arrival": arrival, "prefix_unit_tokens": 16,
                     "mix": [{"query_type": "q", **lengths}]},
        "slo": {"ttft_s": 1.0},
        "engine": {"horizon_s": draw(st.sampled_from([1e6, 1e6, 0.5, 3.0]))},
        "__sched__": draw(schedulers()),
    })


@st.composite
def schedulers(draw):
    """A scheduler kind and its fields, with a second query type of another priority and several users."""
    kind = draw(st.sampled_from(["fcfs", "fcfs", "priority", "shortest_predicted_first", "fair_share",
                                 "reasoning_aware"]))
    spec: dict = {"kind": kind}
    if kind == "shortest_predicted_first":
        spec.update(log_error=draw(st.sampled_from([0.0, 0.5, 2.0])),
                    refine_after_tokens=draw(st.sampled_from([0, 3])),
                    aging_tokens_per_s=draw(st.sampled_from([0.0, 10.0])))
    elif kind == "fair_share":
        spec.update(prompt_weight=draw(st.sampled_from([0.0, 1.0])), output_weight=draw(st.sampled_from([1.0, 2.0])))
    elif kind == "reasoning_aware":
        spec.update(chunk_tokens=draw(st.integers(1, 16)), long_after_tokens=draw(st.integers(0, 20)),
                    preempt_mode=draw(st.sampled_from(["swap", "recompute"])),
                    pcie_bandwidth_bytes_per_s=draw(st.sampled_from([1e9, 25e9])),
                    host_capacity_bytes=draw(st.sampled_from([None, 2e6])))
    extra = {"scheduler": spec}
    if kind != "fcfs":
        extra["users"] = draw(st.integers(1, 3))
        extra["short"] = draw(st.booleans())
    return extra


def with_scheduler(data: dict) -> dict:
    """Apply a drawn scheduler: its spec, users, and a short second query type of priority -1."""
    data = dict(data)
    extra = data.pop("__sched__", None)
    if extra is None:
        return data
    data["scheduler"] = extra["scheduler"]
    if "users" in extra:
        data["workload"] = dict(data["workload"], num_users=extra["users"])
        if extra["short"]:
            mix = data["workload"]["mix"]
            short = {"query_type": "short", "priority": -1,
                     "prompt_tokens": {"dist": "uniform", "low": 1, "high": 8},
                     "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 2},
                     "answer_tokens": {"dist": "uniform", "low": 1, "high": 3}}
            data["workload"] = dict(data["workload"], mix=[*mix, short])
    return data


def check_invariants(sim, res, num_requests):
    req = res.requests
    # Every request of the workload is recorded exactly once, with a status, and a reason unless completed.
    assert len(req) == num_requests
    assert req["request_id"].is_unique
    assert set(req["status"]) <= {"completed", "rejected", "unfinished", "not_arrived", "cancelled"}
    assert (req.loc[req.status != "completed", "reason"].str.len() > 0).all()
    done = req[req.status == "completed"]
    assert (done["first_token_s"] >= done["arrival_s"]).all()
    assert (done["finish_s"] >= done["first_token_s"]).all()
    assert (done["generated_tokens"] == done["reasoning_tokens"] + done["answer_tokens"]).all()
    # Simulated time is monotone: each replica's segments tile its timeline without going back.
    for _, seg in res.replicas.groupby("replica"):
        start, end = seg["start_s"].to_numpy(), seg["end_s"].to_numpy()
        assert (end >= start).all()
        assert (start[1:] >= end[:-1] - 1e-12).all()
    # KV blocks are conserved (checked at every step with check_invariants) and all released once nothing runs.
    if not res.summary["stopped_at_horizon"]:
        assert all(r.kv.used_blocks == 0 for r in sim.replicas)
        assert set(req["status"]) <= {"completed", "rejected", "cancelled"}
    done = req[req.status == "completed"]
    assert (done["reasoning_end_s"] >= done["first_token_s"]).all()
    assert (done["reasoning_end_s"] <= done["finish_s"]).all()
    cancelled = req[req.status == "cancelled"]
    assert (cancelled["finish_s"] >= cancelled["arrival_s"]).all()


def _pd_case(max_num_seqs: int, max_tokens: int, prompt_high: int, cv: float) -> dict:
    """Disaggregated cases hypothesis found: a prefill replica whose blocks are held by KV transfers in flight
    (nothing runnable, or only preempting its last request would free blocks) must wait for them."""
    pool = {"gpu": "h100-sxm", "max_num_seqs": max_num_seqs, "max_num_batched_tokens": max_tokens,
            "kv_block_tokens": 1, "num_kv_blocks": 61}
    return {"name": "prop", "seed": 2535, "model": "llama-3.1-8b",
            "cluster": {"pools": [{**pool, "name": "p", "replicas": 2, "role": "prefill"},
                                  {**pool, "name": "q", "replicas": 1, "role": "decode"}],
                        "kv_transfer": {"bandwidth_bytes_per_s": 1e9, "latency_s": 0.0}},
            "perf": {"kind": "roofline"}, "router": "round_robin",
            "workload": {"num_requests": 7, "arrival": {"process": "gamma", "rate_per_s": 1.0, "cv": cv},
                         "mix": [{"query_type": "q", "prompt_tokens": {"dist": "uniform", "low": 1,
                                                                       "high": prompt_high},
                                  "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 0},
                                  "answer_tokens": {"dist": "uniform", "low": 1, "high": 2}}]},
            "slo": {"ttft_s": 1.0}}


def check_same_results(ff, ex):
    """Fast-forward and exact steps: the same requests, statuses, token counts and times (equal as floats; the
    time-weighted KV means sum the same areas in another order, so they agree to rounding)."""
    a, b = by_id(ff.requests), by_id(ex.requests)
    assert list(a["request_id"]) == list(b["request_id"])
    assert list(a["status"]) == list(b["status"])
    assert list(a["num_preemptions"]) == list(b["num_preemptions"])
    assert list(a["generated_tokens"]) == list(b["generated_tokens"])
    for col in ("first_token_s", "reasoning_end_s", "finish_s"):
        x, y = a[col].to_numpy(), b[col].to_numpy()
        assert np.array_equal(np.isnan(x), np.isnan(y))
        ok = ~np.isnan(x)
        assert np.array_equal(x[ok], y[ok]), col  # to the last bit (docs/model.md, "Ties to the last bit")
    for key in ("kv_utilization_mean", "kv_utilization_max", "output_tokens"):
        assert np.isclose(ff.summary[key], ex.summary[key], rtol=1e-9), key
    # The replica timelines cover the same steps and tokens, fast-forwarded runs merged into one segment.
    for col in ("num_steps", "decode_tokens", "prefill_tokens"):
        assert ff.replicas.groupby("replica")[col].sum().equals(ex.replicas.groupby("replica")[col].sum()), col


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
@example(_pd_case(2, 21, 32, 4.0))
@example(_pd_case(1, 22, 40, 3.0))
def test_invariants_and_fast_forward_equals_exact_steps(data):
    sim_ff = Simulation(scenario(data, check_invariants=True))
    sim_ex = Simulation(scenario(data, check_invariants=True, exact_steps=True))
    ff, ex = sim_ff.run(), sim_ex.run()
    n = data["workload"]["num_requests"]
    check_invariants(sim_ff, ff, n)
    check_invariants(sim_ex, ex, n)
    check_same_results(ff, ex)


# Parallel sampling and cancellation: some requests are forked into k samples of the same prompt (queued together
# on the replica the first was routed to, as the feature's wiring does); when m of a request's samples have
# completed the others are cancelled, and each completion also cancels a few siblings at random; a few requests
# of any kind are cancelled by a timer, from outside every replica. Every choice is a function of request ids
# (not of the order of events at one instant), so fast-forward and exact steps must agree.


def _draw(seed: int, *ids: int) -> np.random.Generator:
    return np.random.default_rng([seed, *ids])


class _Forking(Hooks):
    """First m of n finished cancels the rest; every stage after a request ended is an error."""

    def __init__(self, seed: int) -> None:
        self.sim: Simulation | None = None
        self.seed = seed
        self.families: dict[int, list] = {}  # fork_key -> [samples, m, completed]
        self.ended: dict[int, int] = {}  # request id -> finished calls
        self.late: list[tuple[str, int]] = []  # a stage that fired for a request that had ended

    def _cancel(self, r: Request) -> None:
        if not r.status and r.replica >= 0:
            assert self.sim is not None
            self.sim.replicas[r.replica].cancel(r)

    def admitted(self, req: Request, replica: object) -> None:
        if req.status:
            self.late.append(("admitted", req.request_id))

    def prompt_done(self, req: Request, replica: object) -> None:
        if req.status:
            self.late.append(("prompt_done", req.request_id))

    def finished(self, req: Request) -> None:
        self.ended[req.request_id] = self.ended.get(req.request_id, 0) + 1
        family = self.families.get(req.fork_key)
        if family is None or req.status != "completed":
            return
        family[2] += 1
        for s in family[0]:
            if s is not req and (family[2] >= family[1] or _draw(self.seed, req.request_id, s.request_id)
                                 .random() < 0.3):
                self._cancel(s)


class _WatchingReasoning(_Forking):
    """The same, watching reasoning ends too (which makes fast-forwarded runs end at each)."""

    def reasoning_done(self, req: Request, replica: object) -> None:
        if req.status:
            self.late.append(("reasoning_done", req.request_id))


class _ForkingSimulation(Simulation):
    def __init__(self, sc) -> None:
        self.forks = (_WatchingReasoning if sc.seed % 2 else _Forking)(sc.seed)
        super().__init__(sc, hooks=[self.forks])
        self.forks.sim = self
        self.num_forked = 0

    def arrive(self, req: Request) -> None:
        rng = _draw(self.forks.seed, self.num_arrived)
        k = int(rng.choice([1, 1, 2, 3, 4]))
        if k > 1:
            req.fork_key = self.num_arrived + 1
        super().arrive(req)
        samples = [req]
        for _ in range(1, k):
            s = Request(-1, req.user_id, req.query_type, req.arrival_s, req.prompt_tokens,
                        int(rng.integers(0, req.reasoning_tokens + 1)), int(rng.integers(1, req.answer_tokens + 1)))
            s.prefix_keys, s.prefix_unit_tokens = req.prefix_keys, req.prefix_unit_tokens
            s.fork_key = req.fork_key  # recorded as a request of its own (no parent: the Answers hook is not here)
            self.num_forked += 1
            if req.replica < 0:  # rejected by the front end: route it the same way
                super().arrive(s)
            else:
                s.request_id = self._next_id
                self._next_id += 1
                self.num_arrived += 1
                self.hooks.arrived(s)
                self.replicas[req.replica].enqueue(s)
            samples.append(s)
        if k > 1:
            self.forks.families[req.fork_key] = [samples, int(rng.integers(1, k + 1)), 0]
        for s in samples:
            if rng.random() < 0.15:
                Arrival(self.env, float(rng.uniform(0.0, 2.0))).callbacks.append(
                    lambda _e, s=s: self.forks._cancel(s))


def _same_instant_case() -> dict:
    """A case hypothesis found: two decode replicas end a step at the same instant, and the completion on one
    cancels a sibling sample queued on the other. Which hook cancels it (the other replica's, acting after the plans
    of the instant, or its own, acting at once) followed the order SimPy processed the two step ends in, which was
    the order they were scheduled in: a fast-forwarded run is scheduled at its start, a step at its own. Same-time
    step ends now go in replica order (events.StepEnd) in both modes."""
    pool = {"gpu": "h100-sxm", "max_num_seqs": 2, "max_num_batched_tokens": 4, "kv_block_tokens": 1,
            "num_kv_blocks": 61, "prefix_caching": True, "async_scheduling": False,
            "long_prefill_token_threshold": 0, "reserve_full_isl": True}
    return {"name": "prop", "seed": 1076, "model": "llama-3.1-8b",
            "cluster": {"pools": [{**pool, "name": "p", "replicas": 1, "role": "prefill"},
                                  {**pool, "name": "q", "replicas": 2, "role": "decode"}],
                        "kv_transfer": {"bandwidth_bytes_per_s": 1e9, "latency_s": 0.0}},
            "perf": {"kind": "roofline"}, "router": "round_robin",
            "workload": {"num_requests": 32, "arrival": {"process": "gamma", "rate_per_s": 2.0, "cv": 3.0},
                         "prefix_unit_tokens": 16,
                         "mix": [{"query_type": "q", "prompt_tokens": {"dist": "uniform", "low": 1, "high": 1},
                                  "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 5},
                                  "answer_tokens": {"dist": "uniform", "low": 1, "high": 1},
                                  "system_prompt_tokens": 32},
                                 {"query_type": "short", "priority": -1,
                                  "prompt_tokens": {"dist": "uniform", "low": 1, "high": 8},
                                  "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 2},
                                  "answer_tokens": {"dist": "uniform", "low": 1, "high": 3}}],
                         "num_users": 1},
            "slo": {"ttft_s": 1.0}, "engine": {"horizon_s": 1e6},
            "scheduler": {"kind": "shortest_predicted_first", "log_error": 2.0, "refine_after_tokens": 0,
                          "aging_tokens_per_s": 0.0}}


def _last_bit_tie_case() -> dict:
    """A case a hypothesis hunt found: two decode replicas whose step ends coincide in exact arithmetic ended one ulp
    apart in one mode, because a fast-forwarded run's step times came from the roofline's affine closed form and a
    single step's from its scalar form. Another replica's cancel then came before this replica's plan instead of
    after it, and a cancelled sample kept one more token. A run's step times now equal single steps' to the last
    bit (decode_run_stats_s; test_numerics checks every perf model)."""
    pool = {"gpu": "h100-sxm", "replicas": 2, "max_num_seqs": 2, "max_num_batched_tokens": 11, "kv_block_tokens": 16,
            "num_kv_blocks": 5, "prefix_caching": True, "async_scheduling": True, "long_prefill_token_threshold": 3,
            "reserve_full_isl": False}
    return {"name": "prop", "seed": 5282, "model": "llama-3.1-8b",
            "cluster": {"pools": [{**pool, "name": "p", "role": "prefill"}, {**pool, "name": "q", "role": "decode"}],
                        "kv_transfer": {"bandwidth_bytes_per_s": 1e9, "latency_s": 0.0}},
            "perf": {"kind": "roofline"}, "router": "power_of_two",
            "workload": {"num_requests": 30, "arrival": {"process": "poisson", "rate_per_s": 8.586086527977479},
                         "prefix_unit_tokens": 16,
                         "mix": [{"query_type": "q", "prompt_tokens": {"dist": "uniform", "low": 1, "high": 26},
                                  "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 39},
                                  "answer_tokens": {"dist": "uniform", "low": 1, "high": 7},
                                  "system_prompt_tokens": 16}],
                         "num_users": 3},
            "slo": {"ttft_s": 1.0}, "engine": {"horizon_s": 1e6},
            "scheduler": {"kind": "shortest_predicted_first", "log_error": 2.0, "refine_after_tokens": 0,
                          "aging_tokens_per_s": 10.0}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
@example(_pd_case(2, 21, 32, 4.0))
@example(_same_instant_case())
@example(_last_bit_tie_case())
def test_invariants_with_forks_and_cancels_and_fast_forward_equals_exact_steps(data):
    sim_ff = _ForkingSimulation(scenario(data, check_invariants=True))
    sim_ex = _ForkingSimulation(scenario(data, check_invariants=True, exact_steps=True))
    ff, ex = sim_ff.run(), sim_ex.run()
    for sim, res in ((sim_ff, ff), (sim_ex, ex)):
        check_invariants(sim, res, data["workload"]["num_requests"] + sim.num_forked)
        assert not sim.forks.late
        rows = res.requests.set_index("request_id")
        ended = rows.index[rows.status.isin(["completed", "rejected", "cancelled"])]
        assert sim.forks.ended == dict.fromkeys(ended.tolist(), 1)  # each ended exactly once, and told so
    check_same_results(ff, ex)


def test_same_seed_gives_byte_identical_requests_parquet(tmp_path):
    from simserve import load_scenario
    from simserve.cli import write_results
    from simserve.sim import run

    paths = []
    for k in range(2):
        sc = load_scenario(QUICKSTART, ["workload.num_requests=300"])
        out = tmp_path / f"run{k}"
        write_results(sc, run(sc), out)
        paths.append(out / "requests.parquet")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    sc = load_scenario(QUICKSTART, ["workload.num_requests=300", "seed=2"])
    write_results(sc, run(sc), tmp_path / "other")
    assert (tmp_path / "other" / "requests.parquet").read_bytes() != paths[0].read_bytes()


def test_two_simulations_in_one_process_do_not_disturb_each_other():
    from simserve import load_scenario
    from simserve.sim import Simulation as Sim

    sc = load_scenario(QUICKSTART, ["workload.num_requests=100"])
    a, b = Sim(sc), Sim(sc)
    ra = a.run()
    rb = b.run()
    assert ra.requests.equals(rb.requests)
