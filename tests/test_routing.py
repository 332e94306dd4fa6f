"""Routers: each router's choice on tiny hand-made cluster states, StaleView's sample-and-hold, and routing
through the whole simulator and the scenario's `router` field."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from helpers import by_id, req, scenario, tiny

from simserve import ScenarioError, Simulation
from simserve.request import Request
from simserve.routing import (
    ROUTERS,
    ByQueryTypeRouterSpec,
    PrefixAffinityRouterSpec,
    SimpleRouterSpec,
    StaleView,
)

ALL_KINDS = ("round_robin", "random", "least_outstanding", "least_kv", "power_of_two", "prefix_affinity",
             "by_query_type", "by_difficulty")


class FakeReplica:
    """The load figures a router reads, set by hand."""

    def __init__(self, num_outstanding: int = 0, free_kv_blocks: int = 100, hit: int = 0, pool: str = "main"):
        self.pool = pool
        self.num_outstanding = num_outstanding
        self.free_kv_blocks = free_kv_blocks
        self.hit = hit
        self.asked: list[Request] = []

    def prefix_hit_tokens(self, request: Request) -> int:
        self.asked.append(request)
        return self.hit


def fakes(loads, **kw) -> list[FakeReplica]:
    return [FakeReplica(num_outstanding=n, **kw) for n in loads]


def request(query_type: str = "t", i: int = 0, arrival_s: float = 0.0) -> Request:
    return Request(i, 0, query_type, arrival_s, 10, 5, 1)


def build(kind: str, seed: int = 0, **spec):
    if kind == "prefix_affinity":
        s = PrefixAffinityRouterSpec(kind=kind, **spec)
    elif kind == "by_query_type":
        s = ByQueryTypeRouterSpec(kind=kind, **spec)
    else:
        s = SimpleRouterSpec(kind=kind, **spec)
    return ROUTERS[kind](s, np.random.default_rng(seed))


def test_routers_table_covers_every_kind():
    assert set(ROUTERS) == set(ALL_KINDS)


# ------------------------------------------------------------------------------------------------ round robin


def test_round_robin_cycles_whatever_the_load():
    router = build("round_robin")
    reps = fakes([9, 0, 5])
    assert [router.choose(request(), reps) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_one_replica():
    router = build("round_robin")
    reps = fakes([0])
    assert [router.choose(request(), reps) for _ in range(3)] == [0, 0, 0]


# ----------------------------------------------------------------------------------------------------- random


def test_random_is_uniform_ish():
    router = build("random", seed=123)
    reps = fakes([0, 100, 0, 3])
    n = 8000
    counts = Counter(router.choose(request(), reps) for _ in range(n))
    assert set(counts) == {0, 1, 2, 3}
    # Each count is Binomial(8000, 1/4): mean 2000, sd ~39; 6 sd is far beyond chance.
    for c in counts.values():
        assert abs(c - n / 4) < 240


def test_random_is_reproducible_for_a_seed():
    reps = fakes([0] * 5)
    r1, r2, r3 = build("random", seed=7), build("random", seed=7), build("random", seed=8)
    s1 = [r1.choose(request(), reps) for _ in range(200)]
    s2 = [r2.choose(request(), reps) for _ in range(200)]
    s3 = [r3.choose(request(), reps) for _ in range(200)]
    assert s1 == s2
    assert s1 != s3
    assert all(0 <= i < 5 for i in s1)


# ------------------------------------------------------------------------------------------ least outstanding


@pytest.mark.parametrize(("loads", "expected"), [
    ([3, 1, 2], 1),
    ([0, 0, 0], 0),
    ([5, 2, 2, 7], 1),
    ([4, 4, 1, 1], 2),
    ([7], 0),
])
def test_least_outstanding(loads, expected):
    assert build("least_outstanding").choose(request(), fakes(loads)) == expected


def test_least_outstanding_ignores_kv():
    reps = [FakeReplica(num_outstanding=2, free_kv_blocks=1000), FakeReplica(num_outstanding=1, free_kv_blocks=1)]
    assert build("least_outstanding").choose(request(), reps) == 1


# -------------------------------------------------------------------------------------------------- least kv


def test_least_kv_picks_most_free_blocks():
    reps = [FakeReplica(num_outstanding=0, free_kv_blocks=10), FakeReplica(num_outstanding=9, free_kv_blocks=50),
            FakeReplica(num_outstanding=0, free_kv_blocks=30)]
    assert build("least_kv").choose(request(), reps) == 1


def test_least_kv_ties_broken_by_fewer_outstanding():
    reps = [FakeReplica(num_outstanding=3, free_kv_blocks=50), FakeReplica(num_outstanding=1, free_kv_blocks=50),
            FakeReplica(num_outstanding=2, free_kv_blocks=50), FakeReplica(num_outstanding=0, free_kv_blocks=49)]
    assert build("least_kv").choose(request(), reps) == 1


def test_least_kv_full_tie_is_deterministic():
    reps = fakes([2, 2, 2], free_kv_blocks=5)
    router = build("least_kv")
    first = router.choose(request(), reps)
    assert all(router.choose(request(), reps) == first for _ in range(5))


# ------------------------------------------------------------------------------------------------ power of two


def test_power_of_two_never_picks_worse_of_its_draws():
    loads = [5, 1, 8, 3, 0, 6]
    reps = fakes(loads)
    seed = 2024
    router = build("power_of_two", seed=seed)
    shadow = np.random.default_rng(seed)
    for _ in range(2000):
        chosen = router.choose(request(), reps)
        a, b = (int(x) for x in shadow.choice(len(reps), size=2, replace=False))
        assert a != b
        assert chosen in (a, b)
        other = b if chosen == a else a
        assert loads[chosen] <= loads[other]


def test_power_of_two_never_picks_the_most_loaded():
    loads = [4, 9, 2, 7, 0]
    reps = fakes(loads)
    router = build("power_of_two", seed=5)
    chosen = Counter(router.choose(request(), reps) for _ in range(3000))
    assert loads.index(max(loads)) not in chosen
    # The least loaded wins whenever drawn (2 of 5 pairs-per-replica: 40% of draws); it is picked most often.
    assert chosen.most_common(1)[0][0] == loads.index(min(loads))
    assert abs(chosen[4] / 3000 - 0.4) < 0.05


def test_power_of_two_two_replicas_always_picks_less_loaded():
    router = build("power_of_two", seed=1)
    assert {router.choose(request(), fakes([3, 1])) for _ in range(50)} == {1}


def test_power_of_two_one_replica():
    router = build("power_of_two", seed=1)
    assert [router.choose(request(), fakes([42])) for _ in range(5)] == [0] * 5


# --------------------------------------------------------------------------------------------- prefix affinity


def test_prefix_affinity_picks_longest_hit():
    reps = [FakeReplica(1, hit=0), FakeReplica(2, hit=64), FakeReplica(1, hit=128), FakeReplica(0, hit=16)]
    r = request()
    assert build("prefix_affinity").choose(r, reps) == 2
    assert all(rep.asked == [r] for rep in reps)


def test_prefix_affinity_without_hits_falls_back_to_least_loaded():
    reps = fakes([3, 1, 2, 1], hit=0)
    assert build("prefix_affinity").choose(request(), reps) == 1


def test_prefix_affinity_skips_overloaded_replica_with_longest_hit():
    # loads 10, 0, 2, 0: mean 3, bound 1.25 x 3 + 1 = 4.75 -> replica 0 (load 10) is not eligible.
    reps = [FakeReplica(10, hit=500), FakeReplica(0, hit=0), FakeReplica(2, hit=100), FakeReplica(0, hit=50)]
    assert build("prefix_affinity").choose(request(), reps) == 2
    # A larger load factor makes it eligible again: bound 3 x 3 + 1 = 10.
    assert build("prefix_affinity", load_factor=3.0).choose(request(), reps) == 0


def test_prefix_affinity_bound_is_inclusive():
    # loads 5, 1, 0: mean 2, bound 1.0 x 2 + 1 = 3 -> replica 0 excluded; with loads 3, 1, 2 bound 3 -> included.
    excluded = [FakeReplica(5, hit=100), FakeReplica(1, hit=10), FakeReplica(0, hit=0)]
    assert build("prefix_affinity", load_factor=1.0).choose(request(), excluded) == 1
    included = [FakeReplica(3, hit=100), FakeReplica(1, hit=10), FakeReplica(2, hit=0)]
    assert build("prefix_affinity", load_factor=1.0).choose(request(), included) == 0


def test_prefix_affinity_overloaded_hit_only_falls_back_to_least_loaded():
    # The only replica with a hit is over the bound: no eligible hit -> least loaded.
    reps = [FakeReplica(20, hit=256), FakeReplica(2, hit=0), FakeReplica(1, hit=0)]
    assert build("prefix_affinity").choose(request(), reps) == 2


def test_prefix_affinity_ties_between_equal_hits_broken_by_load():
    reps = [FakeReplica(3, hit=64), FakeReplica(2, hit=32), FakeReplica(1, hit=64), FakeReplica(0, hit=0),
            FakeReplica(2, hit=64)]
    assert build("prefix_affinity").choose(request(), reps) == 2


def test_prefix_affinity_one_replica():
    assert build("prefix_affinity").choose(request(), [FakeReplica(50, hit=0)]) == 0


# ---------------------------------------------------------------------------------------------- by query type


def pooled() -> list[FakeReplica]:
    return [FakeReplica(3, pool="a"), FakeReplica(1, pool="a"), FakeReplica(0, pool="b"), FakeReplica(2, pool="b"),
            FakeReplica(5, pool="c"), FakeReplica(4, pool="c")]


def test_by_query_type_sends_each_type_to_its_pool_least_loaded():
    router = build("by_query_type", table={"chat": "a", "code": "b", "math": "c"})
    reps = pooled()
    assert router.choose(request("chat"), reps) == 1
    assert router.choose(request("code"), reps) == 2
    assert router.choose(request("math"), reps) == 5


def test_by_query_type_unknown_type_goes_to_default_pool():
    router = build("by_query_type", table={"chat": "a"}, default="c")
    assert router.choose(request("other"), pooled()) == 5


def test_by_query_type_unknown_type_without_default_goes_to_least_loaded_overall():
    router = build("by_query_type", table={"chat": "a", "math": "c"})
    assert router.choose(request("other"), pooled()) == 2


def test_by_query_type_ignores_load_outside_the_pool():
    router = build("by_query_type", table={"math": "c"})
    reps = pooled()
    reps[4].num_outstanding = 100
    assert router.choose(request("math"), reps) == 5
    assert reps[5].num_outstanding > min(r.num_outstanding for r in reps)


# ------------------------------------------------------------------------------------------------- stale view


def test_stale_view_samples_and_holds():
    rep = FakeReplica(num_outstanding=2, free_kv_blocks=40)
    view = StaleView(rep, staleness_s=0.5)
    view.refresh(0.0)
    assert (view.num_outstanding, view.free_kv_blocks) == (2, 40)
    rep.num_outstanding, rep.free_kv_blocks = 7, 11
    view.refresh(0.2)
    assert (view.num_outstanding, view.free_kv_blocks) == (2, 40)
    view.refresh(0.4999)
    assert (view.num_outstanding, view.free_kv_blocks) == (2, 40)
    view.refresh(0.5)
    assert (view.num_outstanding, view.free_kv_blocks) == (7, 11)
    # The hold restarts from the new sample (0.5), not from 0.
    rep.num_outstanding, rep.free_kv_blocks = 1, 99
    view.refresh(0.9)
    assert (view.num_outstanding, view.free_kv_blocks) == (7, 11)
    view.refresh(1.2)
    assert (view.num_outstanding, view.free_kv_blocks) == (1, 99)


def test_stale_view_first_refresh_samples_at_any_time():
    rep = FakeReplica(num_outstanding=4, free_kv_blocks=8)
    view = StaleView(rep, staleness_s=100.0)
    view.refresh(3.0)
    assert (view.num_outstanding, view.free_kv_blocks) == (4, 8)


def test_stale_view_prefix_hits_and_pool_pass_through():
    rep = FakeReplica(num_outstanding=1, hit=32, pool="gpu-a")
    view = StaleView(rep, staleness_s=10.0)
    view.refresh(0.0)
    r = request()
    assert view.prefix_hit_tokens(r) == 32
    rep.hit = 96  # not sampled: always the replica's current figure
    assert view.prefix_hit_tokens(r) == 96
    assert rep.asked == [r, r]
    assert view.pool == "gpu-a"


def test_router_on_stale_views_acts_on_old_figures():
    reps = fakes([0, 3])
    views = [StaleView(r, 1.0) for r in reps]
    router = build("least_outstanding")
    for v in views:
        v.refresh(0.0)
    assert router.choose(request(), views) == 0
    reps[0].num_outstanding = 10
    for v in views:
        v.refresh(0.5)
    assert router.choose(request(), views) == 0  # still sees 0 vs 3
    for v in views:
        v.refresh(1.0)
    assert router.choose(request(), views) == 1


# --------------------------------------------------------------------------------------------- whole simulator


def two_replicas(router, **top):
    return scenario(tiny(pool={"replicas": 2}, router=router, **top))


def two_pools(router, **top):
    data = tiny(router=router, **top)
    base = data["cluster"]["pools"][0]
    data["cluster"]["pools"] = [{**base, "name": "a", "replicas": 1}, {**base, "name": "b", "replicas": 2}]
    return scenario(data)


def replica_of(results) -> dict[int, int]:
    return {int(r.request_id): int(r.replica) for r in results.requests.itertuples()}


def test_sim_least_outstanding_spreads_simultaneous_requests():
    res = Simulation(two_replicas("least_outstanding")).run([req(0, 0.0, 100, 50, 1), req(1, 0.0, 100, 50, 1)])
    assert set(res.requests["status"]) == {"completed"}
    assert sorted(replica_of(res).values()) == [0, 1]


def test_sim_least_outstanding_stale_view_piles_up():
    # With load figures held for 1 s, both arrivals at t=0 see two idle replicas and go to the first.
    sc = two_replicas({"kind": "least_outstanding", "staleness_s": 1.0})
    res = Simulation(sc).run([req(0, 0.0, 100, 50, 1), req(1, 0.0, 100, 50, 1)])
    assert replica_of(res) == {0: 0, 1: 0}


def test_sim_least_outstanding_sends_to_idle_replica():
    # R0 (long) goes to replica 0, R1 (short) to replica 1; by t=1 R1 is done and R0 still runs, so R2 goes to
    # the idle replica 1.
    reqs = [req(0, 0.0, 100, 500, 1), req(1, 0.0, 10, 1, 1), req(2, 1.0, 10, 1, 1)]
    res = Simulation(two_replicas("least_outstanding")).run(reqs)
    assert replica_of(res) == {0: 0, 1: 1, 2: 1}


def test_sim_round_robin_alternates():
    reqs = [req(i, 0.0, 100, 50, 1) for i in range(4)] + [req(4, 5.0, 10, 1, 1)]
    res = Simulation(two_replicas("round_robin")).run(reqs)
    assert replica_of(res) == {0: 0, 1: 1, 2: 0, 3: 1, 4: 0}


def test_sim_round_robin_ignores_load():
    # Least outstanding would send R2 to the idle replica 1; round robin sends it to the busy replica 0.
    reqs = [req(0, 0.0, 100, 500, 1), req(1, 0.0, 10, 1, 1), req(2, 1.0, 10, 1, 1)]
    res = Simulation(two_replicas("round_robin")).run(reqs)
    assert replica_of(res) == {0: 0, 1: 1, 2: 0}


def test_sim_by_query_type_routes_by_table():
    sc = two_pools({"kind": "by_query_type", "table": {"chat": "a", "code": "b"}})
    reqs = [Request(0, 0, "chat", 0.0, 10, 5, 1), Request(1, 0, "code", 0.0, 10, 5, 1),
            Request(2, 0, "code", 0.0, 10, 5, 1), Request(3, 0, "chat", 0.0, 10, 5, 1),
            Request(4, 0, "other", 0.0, 10, 5, 1)]
    res = Simulation(sc).run(reqs)
    df = by_id(res.requests).set_index("request_id")
    assert list(df["pool"]) == ["a", "b", "b", "a", "b"]
    # Pool b holds replicas 1 and 2: the two code requests spread over them; `other` (no default) goes to the
    # least loaded replica of the whole cluster: replica 0 has 2, replicas 1 and 2 have 1 each -> replica 1.
    assert list(df["replica"]) == [0, 1, 2, 0, 1]
    assert set(df["query_type"]) == {"chat", "code", "other"}
    assert set(df["status"]) == {"completed"}


def test_sim_by_query_type_default_pool():
    sc = two_pools({"kind": "by_query_type", "table": {"code": "b"}, "default": "a"})
    reqs = [Request(i, 0, qt, 0.0, 10, 5, 1) for i, qt in enumerate(["chat", "code", "other", "code"])]
    res = Simulation(sc).run(reqs)
    assert list(by_id(res.requests)["pool"]) == ["a", "b", "a", "b"]


@pytest.mark.parametrize("kind", ALL_KINDS[:6])
def test_sim_router_kind_runs_and_is_reproducible(kind):
    reqs = [req(i, 0.01 * i, 50, 10, 1) for i in range(12)]
    res = Simulation(scenario(tiny(pool={"replicas": 3}, router=kind))).run(reqs)
    assert set(res.requests["status"]) == {"completed"}
    assert set(res.requests["replica"]) <= {0, 1, 2}
    again = Simulation(scenario(tiny(pool={"replicas": 3}, router=kind))).run(reqs_copy(reqs))
    assert replica_of(again) == replica_of(res)


def reqs_copy(reqs):
    return [Request(r.request_id, r.user_id, r.query_type, r.arrival_s, r.prompt_tokens, r.reasoning_tokens,
                    r.answer_tokens) for r in reqs]


# ------------------------------------------------------------------------------------------- scenario's field


def test_router_defaults_to_round_robin():
    sc = scenario(tiny())
    assert sc.router.kind == "round_robin"
    assert sc.router.staleness_s == 0.0


def test_router_as_plain_string():
    sc = scenario(tiny(router="least_kv"))
    assert isinstance(sc.router, SimpleRouterSpec)
    assert sc.router.kind == "least_kv"
    assert sc.router.staleness_s == 0.0


def test_router_as_mapping():
    sc = scenario(tiny(router={"kind": "power_of_two", "staleness_s": 0.5}))
    assert isinstance(sc.router, SimpleRouterSpec)
    assert sc.router.kind == "power_of_two"
    assert sc.router.staleness_s == 0.5


def test_router_prefix_affinity_string_gets_default_load_factor():
    sc = scenario(tiny(router="prefix_affinity"))
    assert isinstance(sc.router, PrefixAffinityRouterSpec)
    assert sc.router.load_factor == 1.25


def test_router_round_trips_through_yaml():
    import yaml

    from simserve import parse_scenario

    sc = two_pools({"kind": "by_query_type", "table": {"chat": "a"}, "default": "b", "staleness_s": 0.25})
    again = parse_scenario(yaml.safe_load(sc.to_yaml()))
    assert again.router == sc.router


@pytest.mark.parametrize("router", [
    {"kind": "by_query_type", "table": {"chat": "a", "code": "nowhere"}},
    {"kind": "by_query_type", "table": {"chat": "a"}, "default": "nowhere"},
])
def test_by_query_type_unknown_pool_is_an_error(router):
    with pytest.raises(ScenarioError, match="nowhere") as err:
        two_pools(router)
    assert "pool" in str(err.value)


@pytest.mark.parametrize("router", ["bogus", {"kind": "bogus"}])
def test_unknown_router_kind_lists_valid_kinds(router):
    with pytest.raises(ScenarioError) as err:
        scenario(tiny(router=router))
    msg = str(err.value)
    assert "router" in msg
    assert "bogus" in msg
    for kind in ALL_KINDS:
        assert kind in msg


@pytest.mark.parametrize("router", [
    {"kind": "least_kv", "staleness_s": -1.0},
    {"kind": "prefix_affinity", "load_factor": 0.5},
    {"kind": "round_robin", "table": {"x": "main"}},
    {"kind": "by_query_type"},
])
def test_invalid_router_fields(router):
    with pytest.raises(ScenarioError, match="router"):
        scenario(tiny(router=router))
