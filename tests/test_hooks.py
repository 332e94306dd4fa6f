"""Lifecycle hooks: every stage fires once per request where it should, at the engine's exact times, and a hook
on reasoning_done makes fast-forwarded runs end at each reasoning end without changing any result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simserve import Simulation, load_scenario
from simserve.engine import Hooks

QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.yaml"


class Log(Hooks):
    def __init__(self):
        self.calls = {"arrived": [], "admitted": [], "prompt_done": [], "reasoning_done": [], "finished": []}

    def arrived(self, req):
        self.calls["arrived"].append(req.request_id)

    def admitted(self, req, replica):
        self.calls["admitted"].append(req.request_id)

    def prompt_done(self, req, replica):
        self.calls["prompt_done"].append(req.request_id)

    def reasoning_done(self, req, replica):
        self.calls["reasoning_done"].append((req.request_id, req.reasoning_end_s, replica.env.now))

    def finished(self, req):
        self.calls["finished"].append(req.request_id)


def run_with(log, exact=False, n=200):
    sc = load_scenario(QUICKSTART, [f"workload.num_requests={n}", f"engine.exact_steps={str(exact).lower()}"])
    sim = Simulation(sc, sc.base_dir, hooks=[log])
    return sim, sim.run()


def test_each_stage_fires_once_per_request_and_reasoning_done_at_its_step():
    log = Log()
    sim, res = run_with(log)
    ids = set(res.requests["request_id"])
    assert sorted(log.calls["arrived"]) == sorted(ids) == sorted(log.calls["finished"])
    assert set(log.calls["admitted"]) == ids and set(log.calls["prompt_done"]) == ids
    seen = [r for r, _, _ in log.calls["reasoning_done"]]
    assert sorted(seen) == sorted(ids)  # exactly once each
    # With a hook on reasoning_done, runs end there: the hook runs at the step's end, as stepping would.
    assert all(stamp == now for _, stamp, now in log.calls["reasoning_done"])
    by_id = res.requests.set_index("request_id")
    assert all(by_id.loc[r, "reasoning_end_s"] == stamp for r, stamp, _ in log.calls["reasoning_done"])


def test_a_reasoning_done_hook_changes_no_result_and_matches_exact_steps():
    _, plain = run_with(Hooks())
    log_ff, log_ex = Log(), Log()
    _, hooked = run_with(log_ff)
    _, exact = run_with(log_ex, exact=True)
    for col in ("first_token_s", "reasoning_end_s", "finish_s"):
        assert np.array_equal(plain.requests[col], hooked.requests[col]), col
        assert np.allclose(hooked.requests[col], exact.requests[col], rtol=1e-12), col
    assert hooked.summary["num_events"] > plain.summary["num_events"]  # runs split at reasoning ends
