"""Multi-turn sessions and system prompts: follow-up timing and prompts, prefix hits on the previous turn and on
a shared system prompt, common random numbers across cluster configurations, and sessions ending on rejection."""

from __future__ import annotations

import pytest
from helpers import by_id, scenario, tiny

from simserve import Simulation
from simserve.engine import Hooks
from simserve.sim import Simulation as Sim
from simserve.workload.sessions import prompt_keys

LINEAR = {"kind": "linear", "step_overhead_s": 0.01, "per_prefill_token_s": 0.001, "per_decode_seq_s": 0.002}


def const(v):
    return {"dist": "constant", "value": v}


def workload(num_requests=1, rate=0.05, turns=None, think=None, unit=16, mix=None, **lengths):
    w = {
        "num_requests": num_requests, "prefix_unit_tokens": unit,
        "arrival": {"process": "poisson", "rate_per_s": rate},
        "mix": mix or [{"query_type": "chat", "prompt_tokens": lengths.get("prompt", const(40)),
                        "reasoning_tokens": lengths.get("reasoning", const(5)),
                        "answer_tokens": lengths.get("answer", const(7))}],
    }
    if turns is not None:
        w["sessions"] = {"turns": turns, "think_time_s": think}
    return w


def run(pool=None, perf=LINEAR, **engine_and_top):
    engine = {k: engine_and_top.pop(k) for k in ("exact_steps", "check_invariants") if k in engine_and_top}
    return Simulation(scenario(tiny(pool=pool, perf=perf, **engine_and_top), check_invariants=True, **engine)).run()


class TurnLog(Hooks):
    """A lifecycle hook that remembers each finished request's session and turn (not in the results frame)."""

    def __init__(self):
        self.turns = {}

    def finished(self, req):
        s = req.session
        if s is not None:
            self.turns[req.request_id] = (s.session_id, len(s.turns))


def Recording(sc):  # noqa: N802  (reads like the class it stands for)
    log = TurnLog()
    sim = Sim(sc, hooks=[log])
    sim.turns = log.turns
    return sim


# ----------------------------------------------------------------------------------------------- turns


@pytest.mark.parametrize("exact", [False, True])
def test_turns_arrive_a_think_time_after_the_previous_finish_and_grow_the_prompt(exact):
    # One session of 3 turns: prompt 40, reasoning 5, answer 7, new messages of 40, think time 2 s.
    res = run(workload=workload(turns=const(3), think=const(2.0)), exact_steps=exact)
    df = by_id(res.requests)
    assert len(df) == 3 and (df["status"] == "completed").all()
    assert df["prompt_tokens"].tolist() == [40, 40 + 7 + 40, 87 + 7 + 40]  # reasoning is not carried
    assert df["reasoning_tokens"].tolist() == [5, 5, 5] and df["answer_tokens"].tolist() == [7, 7, 7]
    for i in (1, 2):
        assert df["arrival_s"][i] == df["finish_s"][i - 1] + 2.0
    # Each turn hits the previous prompt's full 16-token units: 40 -> 32, 87 -> 80.
    assert df["prefix_hit_tokens"].tolist() == [0, 32, 80]
    # The hit shortens the prefill: turn 2 computes 87 - 32 = 55 tokens in one step after its arrival.
    assert df["first_token_s"][1] == pytest.approx(df["arrival_s"][1] + 0.01 + 55 * 0.001, abs=1e-9)
    assert df["first_token_s"][2] == pytest.approx(df["arrival_s"][2] + 0.01 + (134 - 80) * 0.001, abs=1e-9)
    assert df["user_id"].nunique() == 1 and (df["query_type"] == "chat").all()


def test_follow_up_turns_hit_nothing_without_prefix_caching():
    res = run(pool={"prefix_caching": False}, workload=workload(turns=const(3), think=const(2.0)))
    df = by_id(res.requests)
    assert df["prefix_hit_tokens"].tolist() == [0, 0, 0]
    assert df["prompt_tokens"].tolist() == [40, 87, 134]


def test_units_of_several_blocks_and_sessions_interleaved():
    # Two sessions overlapping in time, 32-token units over 16-token blocks: each turn hits only its own session.
    res = run(workload=workload(num_requests=2, rate=5.0, turns=const(2), think=const(1.0), unit=32,
                                prompt=const(70)))
    df = res.requests
    assert len(df) == 4 and (df["status"] == "completed").all()
    first = df[df["prompt_tokens"] == 70]
    follow = df[df["prompt_tokens"] == 70 + 7 + 70]
    assert len(first) == 2 and len(follow) == 2
    assert (first["prefix_hit_tokens"] == 0).all()
    assert (follow["prefix_hit_tokens"] == 64).all()  # 70 // 32 = 2 units of the session's first prompt


def test_session_prompt_keys_share_system_units_and_nothing_else():
    a = prompt_keys(0, 0, 100, 130, 16)
    b = prompt_keys(1, 0, 100, 140, 16)
    c = prompt_keys(0, 1, 100, 130, 16)
    assert len(a) == 9 and len(b) == 9
    assert a[:6] == b[:6] and not set(a[6:]) & set(b)  # 100 // 16 = 6 system units
    assert not set(a[:6]) & set(c)  # another query type's system prompt is another prefix
    assert prompt_keys(0, 0, 100, 200, 16)[:9] == a  # a session's prompts only grow by appending


# ----------------------------------------------------------------------------------------------- system prompts


def test_system_prompt_is_shared_by_requests_of_one_query_type():
    # Two types with system prompts of 100 and 50 tokens (user messages of 20): once the first request of a type
    # is computed, the others of that type hit 96 resp. 48 tokens (whole 16-token units of the system prompt).
    mix = [{"query_type": "a", "system_prompt_tokens": 100, "prompt_tokens": const(20),
            "reasoning_tokens": const(3), "answer_tokens": const(2)},
           {"query_type": "b", "system_prompt_tokens": 50, "prompt_tokens": const(20),
            "reasoning_tokens": const(3), "answer_tokens": const(2)}]
    res = run(workload=workload(num_requests=40, rate=0.5, mix=mix))
    df = res.requests
    assert (df["status"] == "completed").all()
    assert set(df.loc[df.query_type == "a", "prompt_tokens"]) == {120}
    assert set(df.loc[df.query_type == "b", "prompt_tokens"]) == {70}
    for qt, hit in (("a", 96), ("b", 48)):
        rows = df[df.query_type == qt].sort_values("arrival_s")
        assert len(rows) >= 2
        assert rows["prefix_hit_tokens"].iloc[0] == 0
        assert (rows["prefix_hit_tokens"].iloc[1:] == hit).all()


def test_system_prompt_shorter_than_a_unit_is_not_shared():
    mix = [{"query_type": "a", "system_prompt_tokens": 15, "prompt_tokens": const(20),
            "reasoning_tokens": const(3), "answer_tokens": const(2)}]
    res = run(workload=workload(num_requests=10, rate=0.5, mix=mix))
    assert (res.requests["prefix_hit_tokens"] == 0).all()


# ----------------------------------------------------------------------------------------------- common random numbers


def random_workload(sessions):
    mix = [{"query_type": "a", "weight": 2.0, "system_prompt_tokens": 64,
            "prompt_tokens": {"dist": "uniform", "low": 1, "high": 200},
            "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 100},
            "answer_tokens": {"dist": "uniform", "low": 1, "high": 50}},
           {"query_type": "b", "system_prompt_tokens": 0,
            "prompt_tokens": {"dist": "lognormal", "mean": 300, "cv": 1.0},
            "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 30},
            "answer_tokens": {"dist": "uniform", "low": 1, "high": 80}}]
    w = workload(num_requests=60, rate=8.0, mix=mix)
    if sessions:
        w["sessions"] = {"turns": {"dist": "uniform", "low": 1, "high": 4},
                         "think_time_s": {"dist": "lognormal", "mean": 1.0, "cv": 1.0}}
    return w


def per_request(df):
    return df.set_index("request_id").sort_index()[["arrival_s", "query_type", "prompt_tokens", "reasoning_tokens",
                                       "answer_tokens"]]


def test_same_seed_same_requests_with_prefix_caching_on_or_off():
    # System prompts only: every request is a first turn, so the workload is the same request by request.
    on = run(pool={"num_kv_blocks": 400}, workload=random_workload(False), seed=7)
    off = run(pool={"num_kv_blocks": 400, "prefix_caching": False}, workload=random_workload(False), seed=7)
    assert per_request(on.requests).equals(per_request(off.requests))
    assert on.requests["prefix_hit_tokens"].sum() > 0 and off.requests["prefix_hit_tokens"].sum() == 0
    # the cluster did differ
    assert not by_id(on.requests)["first_token_s"].equals(by_id(off.requests)["first_token_s"])
    other = run(pool={"num_kv_blocks": 400}, workload=random_workload(False), seed=8)
    assert not per_request(other.requests).equals(per_request(on.requests))


def sessions_of(prefix_caching, seed=7):
    """Per session: its turns' (query type, prompt, reasoning, answer) in order, the first turn's arrival, and
    the think times between turns (arrival minus the previous turn's finish)."""
    sc = scenario(tiny(pool={"num_kv_blocks": 400, "prefix_caching": prefix_caching}, perf=LINEAR,
                       workload=random_workload(True), seed=seed), check_invariants=True)
    sim = Recording(sc)
    res = sim.run()
    df = res.requests.set_index("request_id")
    assert set(sim.turns) == set(df.index)  # every request is a turn of a session (all completed here)
    by_session = {}
    for rid, (sid, left) in sim.turns.items():
        by_session.setdefault(sid, []).append((-left, rid))
    out = {}
    for sid, turns in by_session.items():
        ids = [rid for _, rid in sorted(turns)]  # turn order: most turns left first
        rows = [df.loc[i] for i in ids]
        out[sid] = ([(r.query_type, r.prompt_tokens, r.reasoning_tokens, r.answer_tokens) for r in rows],
                    rows[0].arrival_s,
                    [round(b.arrival_s - a.finish_s, 9) for a, b in zip(rows, rows[1:], strict=False)])
    return out, res


def test_same_seed_same_sessions_with_prefix_caching_on_or_off():
    # With sessions, follow-ups arrive a think time after the previous turn finishes, which the cluster decides;
    # everything drawn (the turns, their lengths, the think times, the first turns' arrivals) is the same.
    on, on_res = sessions_of(True)
    off, off_res = sessions_of(False)
    assert on_res.summary["num_completed"] == on_res.summary["num_requests"] > 60  # follow-ups happened
    assert len(on) == 60
    assert on == off
    assert on_res.requests["prefix_hit_tokens"].sum() > 0 and off_res.requests["prefix_hit_tokens"].sum() == 0
    assert not by_id(on_res.requests)["arrival_s"].equals(by_id(off_res.requests)["arrival_s"])  # follow-ups did move
    other, _ = sessions_of(True, seed=8)
    assert other != on


# ----------------------------------------------------------------------------------------------- rejection


@pytest.mark.parametrize("exact", [False, True])
def test_a_rejected_turn_ends_its_session(exact):
    # 8 blocks of 16 = 128 tokens. Turns of prompt 40, 40 + 10 + 40 = 90, 140: the third (140 + 10 tokens) can
    # never fit and is rejected; the fourth turn never comes. Two sessions, so 6 requests in all.
    res = run(pool={"num_kv_blocks": 8}, exact_steps=exact,
              workload=workload(num_requests=2, rate=0.05, turns=const(4), think=const(1.0),
                                reasoning=const(0), answer=const(10)))
    df = res.requests.sort_values("arrival_s")
    assert len(df) == 6
    assert sorted(df["prompt_tokens"]) == [40, 40, 90, 90, 140, 140]
    assert (df.loc[df.prompt_tokens == 140, "status"] == "rejected").all()
    assert (df.loc[df.prompt_tokens < 140, "status"] == "completed").all()
    assert (df.loc[df.prompt_tokens == 140, "reason"].str.contains("150 tokens")).all()
    assert res.summary["num_rejected"] == 2 and res.summary["num_completed"] == 4
