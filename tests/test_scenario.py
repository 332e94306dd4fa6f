"""Scenario loading: good files load, every kind of bad input is one ScenarioError naming the file and the field
path, `--set` overrides, the YAML round trip, shipped query-type defaults, and the package's public names."""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

import simserve
from simserve.hardware import GPUS, MODELS, GpuSpec, ModelSpec
from simserve.scenario import Scenario, ScenarioError, apply_overrides, load_scenario, parse_scenario
from simserve.workload import Constant, Empirical, Lognormal, lognormal_from_range

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "scenarios" / "quickstart.yaml"


def quick() -> dict[str, Any]:
    """The quickstart scenario as plain data (a fresh copy each call)."""
    return yaml.safe_load(QUICKSTART.read_text())


def write(tmp_path: Path, data: Any, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path, overrides)
    return str(info.value)


# ----------------------------------------------------------------------------------------------- good scenarios


def test_quickstart_loads():
    s = load_scenario(QUICKSTART)
    assert isinstance(s, Scenario)
    assert s.name == "quickstart" and s.seed == 1 and s.model == "llama-3.1-8b"
    pool = s.cluster.pools[0]
    assert (pool.name, pool.gpu, pool.replicas, pool.max_num_seqs) == ("main", "h100-sxm", 2, 256)
    assert s.workload.num_requests == 2000
    assert s.workload.arrival.rate_per_s == 2.0
    q = s.workload.mix[0]
    assert q.query_type == "math_word"
    assert q.prompt_tokens == Lognormal(mean=300, cv=0.5)
    assert q.answer_tokens == Constant(value=150)
    assert s.slo is not None and s.slo.ttft_s == 2.0
    assert s.base_dir == QUICKSTART.parent
    assert s.gpu_of(pool) == GPUS["h100-sxm"] and s.model_of(pool) == MODELS["llama-3.1-8b"]


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_scenarios_load(path):
    assert load_scenario(path).name == path.stem


def test_load_accepts_str_path():
    assert load_scenario(str(QUICKSTART)).name == "quickstart"


def test_inline_gpu_and_model_specs(tmp_path):
    d = quick()
    d["model"] = MODELS["llama-3.1-8b"].model_dump()
    d["cluster"]["pools"][0]["gpu"] = GPUS["h200"].model_dump()
    s = load_scenario(write(tmp_path, d))
    assert isinstance(s.model, ModelSpec) and isinstance(s.cluster.pools[0].gpu, GpuSpec)
    assert s.gpu_of(s.cluster.pools[0]).name == "h200"


def test_big_model_fits_with_tensor_parallel(tmp_path):
    # The counterpart of test_model_that_does_not_fit: two A100s hold Llama-3.1-70B with room for KV.
    d = quick()
    d["model"] = "llama-3.1-70b"
    d["cluster"]["pools"][0].update(gpu="a100-80gb", tensor_parallel=2)
    assert load_scenario(write(tmp_path, d)).cluster.pools[0].tensor_parallel == 2


# ----------------------------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("mutate", "field_path"),
    [
        (lambda d: d.update(seeed=3), "seeed"),
        (lambda d: d["cluster"]["pools"][0].update(replicaz=2), "cluster.pools.0.replicaz"),
        (lambda d: d["cluster"].update(poolz=[]), "cluster.poolz"),
        (lambda d: d["workload"]["mix"][0].update(wieght=1), "workload.mix.0.wieght"),
        (lambda d: d.setdefault("engine", {}).update(exact=True), "engine.exact"),
        (lambda d: d["slo"].update(ttft=1), "slo.ttft"),
    ],
    ids=["top", "pool", "cluster", "mix", "engine", "slo"],
)
def test_unknown_key_names_file_and_path(tmp_path, mutate, field_path):
    d = quick()
    mutate(d)
    path = write(tmp_path, d)
    msg = error_of(path)
    assert str(path) in msg
    assert f"  {field_path}: unknown key" in msg
    assert msg.count("\n") == 1  # one error line under the heading


@pytest.mark.parametrize(
    ("mutate", "where", "key"),
    [
        (lambda d: d["workload"]["arrival"].update(burst=3), "workload.arrival", "burst"),
        (lambda d: d["workload"]["mix"][0]["prompt_tokens"].update(sd=3), "workload.mix.0.prompt_tokens", "sd"),
        (lambda d: d["perf"].update(speed=2), "perf", "speed"),
    ],
    ids=["arrival", "distribution", "perf"],
)
def test_unknown_key_inside_tagged_section(tmp_path, mutate, where, key):
    d = quick()
    mutate(d)
    path = write(tmp_path, d)
    msg = error_of(path)
    assert str(path) in msg
    assert "unknown key" in msg
    line = msg.splitlines()[1].strip()
    assert line.startswith(where + ".") and line.split(":")[0].endswith("." + key)


@pytest.mark.parametrize(
    ("mutate", "field_path"),
    [
        (lambda d: d["workload"]["arrival"].update(burst=3), "workload.arrival.burst"),
        (lambda d: d["workload"]["mix"][0]["prompt_tokens"].update(sd=3), "workload.mix.0.prompt_tokens.sd"),
        (lambda d: d["perf"].update(speed=2), "perf.speed"),
    ],
    ids=["arrival", "distribution", "perf"],
)
def test_unknown_key_inside_tagged_section_names_yaml_path(tmp_path, mutate, field_path):
    d = quick()
    mutate(d)
    msg = error_of(write(tmp_path, d))
    assert f"  {field_path}: unknown key" in msg


# ----------------------------------------------------------------------------------------------- other bad input


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cluster.pools.0.replicas=two", ["cluster.pools.0.replicas", "integer"]),
        ("cluster.pools.0.replicas=0", ["cluster.pools.0.replicas", "greater than 0"]),
        ("workload.num_requests=many", ["workload.num_requests", "integer"]),
        ("workload.arrival.rate_per_s=fast", ["workload.arrival", "rate_per_s", "number"]),
        ("workload.mix.0.prompt_tokens.mean=abc", ["workload.mix.0.prompt_tokens", "mean", "number"]),
        ("workload.mix=oops", ["workload.mix", "list"]),
        ("cluster=[1, 2]", ["cluster", "dictionary"]),
        ("seed=-1", ["seed", "greater than or equal to 0"]),
        ("engine.exact_steps=maybe", ["engine.exact_steps", "bool"]),
        ("cluster.pools.0.gpu_memory_utilization=1.5", ["cluster.pools.0.gpu_memory_utilization", "1"]),
    ],
)
def test_wrong_types(override, expected):
    msg = error_of(QUICKSTART, [override])
    assert str(QUICKSTART) in msg
    for part in expected:
        assert part in msg


@pytest.mark.parametrize(
    ("delete", "field_path"),
    [
        (lambda d: d.pop("workload"), "workload"),
        (lambda d: d.pop("cluster"), "cluster"),
        (lambda d: d["workload"]["arrival"].pop("rate_per_s"), "rate_per_s"),
        (lambda d: d["workload"]["mix"][0]["prompt_tokens"].pop("cv"), "cv"),
    ],
)
def test_missing_required_fields(tmp_path, delete, field_path):
    d = quick()
    delete(d)
    path = write(tmp_path, d)
    msg = error_of(path)
    assert str(path) in msg
    assert field_path in msg and "required field is missing" in msg


@pytest.mark.parametrize("key", ["arrival", "mix"])
def test_synthetic_workload_needs_arrival_and_mix(tmp_path, key):
    d = quick()
    d["workload"].pop(key)
    msg = error_of(write(tmp_path, d))
    assert "workload: give 'arrival' and 'mix'" in msg and "'trace'" in msg


def test_missing_stop_and_lengths(tmp_path):
    d = quick()
    del d["workload"]["num_requests"]
    assert "give 'num_requests' or 'duration_s'" in error_of(write(tmp_path, d))
    d = quick()
    del d["workload"]["mix"][0]["answer_tokens"]
    msg = error_of(write(tmp_path, d))
    assert "workload.mix.0" in msg and "'answer_tokens'" in msg
    d = quick()
    d["workload"]["mix"] = [{"query_type": "not-shipped", "weight": 1}]
    assert "needs 'prompt_tokens'" in error_of(write(tmp_path, d))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("cluster.pools.0.gpu=h100", ["cluster.pools.0", "unknown gpu 'h100'", "h100-sxm"]),
        ("model=gpt-5", ["unknown model 'gpt-5'", "llama-3.1-8b"]),
        ("cluster.pools.0.model=gpt-5", ["cluster.pools.0", "unknown model 'gpt-5'", "qwen2.5-32b"]),
        ("router=fastest", ["router", "'fastest'", "round_robin", "least_outstanding", "prefix_affinity"]),
        ("scheduler=lifo", ["scheduler", "'lifo'", "fcfs"]),
        ("workload.arrival.process=weibull", ["workload.arrival", "process", "poisson", "gamma"]),
        ("workload.mix.0.prompt_tokens.dist=normal", ["workload.mix.0.prompt_tokens", "dist", "lognormal"]),
        ("perf.kind=magic", ["perf", "kind", "roofline", "linear"]),
    ],
)
def test_unknown_presets(override, expected):
    msg = error_of(QUICKSTART, [override])
    assert str(QUICKSTART) in msg
    for part in expected:
        assert part in msg


def test_bad_yaml_syntax(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(QUICKSTART.read_text().replace("model: llama-3.1-8b", "model: [llama-3.1-8b"))
    msg = error_of(path)
    assert msg.startswith(f"{path}: not valid YAML at line ")
    assert "line 6" in msg or "line 7" in msg


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_top_level_not_a_mapping(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    msg = error_of(path)
    assert msg.startswith(str(path)) and "expected a mapping" in msg
    assert "expected a mapping" in error_of(path, ["seed=2"])


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = error_of(path)
    assert msg.startswith(str(path)) and "cannot read scenario file" in msg
    assert "No such file" in msg
    assert "cannot read scenario file" in error_of(tmp_path)  # a folder


def test_parse_scenario_names_its_source():
    with pytest.raises(ScenarioError, match=r"^<scenario>: .*mapping"):
        parse_scenario([1, 2])
    d = quick()
    d["bogus"] = 1
    with pytest.raises(ScenarioError, match=r"^from-api: invalid scenario"):
        parse_scenario(d, "from-api")


def test_empirical_file_missing(tmp_path):
    d = quick()
    d["workload"]["mix"][0]["prompt_tokens"] = {"dist": "empirical", "file": "lengths.csv"}
    path = write(tmp_path, d)
    msg = error_of(path)
    assert str(path) in msg
    assert "workload.mix.0.prompt_tokens.file" in msg
    assert str(tmp_path / "lengths.csv") in msg and "not found" in msg
    # ... and with the file next to the scenario it loads.
    (tmp_path / "lengths.csv").write_text("tokens,weight\n10,1\n20,3\n")
    s = load_scenario(path)
    assert s.workload.mix[0].prompt_tokens == Empirical(file="lengths.csv")


def test_empirical_file_unreadable(tmp_path):
    d = quick()
    d["workload"]["mix"][0]["reasoning_tokens"] = {"dist": "empirical", "file": "words.csv"}
    (tmp_path / "words.csv").write_text("tokens\nlots\n")
    msg = error_of(write(tmp_path, d))
    assert "workload.mix.0.reasoning_tokens.file" in msg and "cannot read empirical file" in msg


def test_empirical_bad_inline(tmp_path):
    d = quick()
    d["workload"]["mix"][0]["prompt_tokens"] = {"dist": "empirical", "values": [1, 2], "weights": [1]}
    msg = error_of(write(tmp_path, d))
    assert "workload.mix.0.prompt_tokens" in msg and "'weights' must have as many entries" in msg


def test_batched_tokens_below_max_num_seqs():
    msg = error_of(QUICKSTART, ["cluster.pools.0.max_num_batched_tokens=100"])
    assert str(QUICKSTART) in msg
    assert "cluster.pools.0" in msg
    assert "max_num_batched_tokens (100) must be >= max_num_seqs (256)" in msg
    # Equal is allowed.
    s = load_scenario(QUICKSTART, ["cluster.pools.0.max_num_batched_tokens=256"])
    assert s.cluster.pools[0].max_num_batched_tokens == 256


def test_model_that_does_not_fit():
    msg = error_of(QUICKSTART, ["model=llama-3.1-70b", "cluster.pools.0.gpu=a100-80gb"])
    assert msg.startswith(str(QUICKSTART))
    assert "cluster.pools.0" in msg and "llama-3.1-70b" in msg and "a100-80gb" in msg
    assert "no KV memory" in msg


def test_model_that_does_not_fit_in_second_pool():
    d = quick()
    d["cluster"]["pools"].append({"name": "small", "gpu": "a100-80gb", "model": "llama-3.1-70b"})
    with pytest.raises(ScenarioError, match=r"cluster\.pools\.1: model llama-3.1-70b"):
        parse_scenario(d)


def test_duplicate_pool_and_query_type_names():
    d = quick()
    d["cluster"]["pools"].append(copy.deepcopy(d["cluster"]["pools"][0]))
    with pytest.raises(ScenarioError, match="pool names must be unique"):
        parse_scenario(d)
    d = quick()
    d["workload"]["mix"].append(copy.deepcopy(d["workload"]["mix"][0]))
    with pytest.raises(ScenarioError, match="query types in 'mix' must be unique"):
        parse_scenario(d)


# ----------------------------------------------------------------------------------------------- overrides


def test_overrides_dotted_keys_and_indices():
    s = load_scenario(QUICKSTART, [
        "cluster.pools.0.replicas=4",
        "workload.arrival.rate_per_s=3.5",
        "workload.mix.0.prompt_tokens={dist: constant, value: 7}",
        "engine.exact_steps=true",
        "engine.horizon_s=50",
        "name=renamed",
        "slo.ttft_s=1",
    ])
    assert s.cluster.pools[0].replicas == 4
    assert s.workload.arrival.rate_per_s == 3.5
    assert s.workload.mix[0].prompt_tokens == Constant(value=7)
    assert s.engine.exact_steps is True and s.engine.horizon_s == 50
    assert s.name == "renamed"
    assert s.slo is not None and s.slo.ttft_s == 1 and s.slo.tpot_s == 0.08


def test_override_replaces_list_item_and_value_with_equals():
    d = apply_overrides(quick(), ["cluster.pools.0={name: only, replicas: 3}", "description=a=b"])
    assert d["cluster"]["pools"] == [{"name": "only", "replicas": 3}]
    assert d["description"] == "a=b"
    assert parse_scenario(d).cluster.pools[0].replicas == 3


def test_later_override_wins():
    s = load_scenario(QUICKSTART, ["seed=2", "seed=9"])
    assert s.seed == 9


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seed", "expected dotted.key=value"),
        ("cluster.pools.3.replicas=1", "'3' is not an index of a list of 1"),
        ("cluster.pools.x.replicas=1", "'x' is not an index"),
        ("cluster.pools.-1.replicas=1", "not an index"),
        ("name.first=1", "cannot descend into 'name'"),
        ("cluster.pools.0.replicas.count=1", "cannot descend into 'cluster.pools.0.replicas'"),
    ],
)
def test_bad_override_paths(override, expected):
    with pytest.raises(ScenarioError, match="--set") as info:
        load_scenario(QUICKSTART, [override])
    assert expected in str(info.value)


def test_override_to_unknown_key_is_reported_with_its_path():
    msg = error_of(QUICKSTART, ["cluster.pools.0.replicaz=4"])
    assert str(QUICKSTART) in msg and "cluster.pools.0.replicaz: unknown key" in msg


# ----------------------------------------------------------------------------------------------- round trip


def rich() -> dict[str, Any]:
    return {
        "name": "rich", "description": "every kind of section", "seed": 7,
        "model": MODELS["llama-3.1-8b"].model_dump(),
        "cluster": {"pools": [
            {"name": "a", "gpu": GPUS["h200"].model_dump(), "replicas": 2, "tensor_parallel": 2, "num_kv_blocks": 999},
            {"name": "b", "gpu": "b200", "model": "qwen2.5-32b", "max_model_len_tokens": 4096},
        ]},
        "perf": {"kind": "linear", "step_overhead_s": 0.01, "per_kv_token_s": 1e-7},
        "workload": {
            "duration_s": 30.5, "num_requests": 10, "num_users": 3,
            "arrival": {"process": "gamma", "rate_per_s": 3, "cv": 1.5},
            "mix": [
                {"query_type": "coding", "weight": 2},
                {"query_type": "deepseek-r1-production"},
                {"query_type": "x", "prompt_tokens": {"dist": "empirical", "values": [1, 2, 3], "weights": [1, 0, 2]},
                 "output_tokens": {"dist": "lognormal", "mean": 100, "cv": 1, "max": 500},
                 "reasoning_share": {"dist": "uniform", "low": 0, "high": 1}},
            ],
        },
        "slo": {"ttft_s": 1}, "router": "least_outstanding",
        "engine": {"horizon_s": 100, "exact_steps": True, "check_invariants": True},
    }


@pytest.mark.parametrize("make", [quick, rich])
def test_to_yaml_round_trips(make):
    s = parse_scenario(make())
    text = s.to_yaml()
    again = parse_scenario(yaml.safe_load(text))
    assert again == s
    assert again.to_yaml() == text
    assert again != parse_scenario({**make(), "seed": 12345})  # equality is not vacuous


def test_to_yaml_fills_in_defaults():
    data = yaml.safe_load(parse_scenario(quick()).to_yaml())
    assert data["router"] == {"kind": "round_robin", "staleness_s": 0.0} and data["scheduler"] == {"kind": "fcfs"}
    assert data["perf"]["kind"] == "calibrated" and data["cluster"]["pools"][0]["expert_parallel"] is False
    assert "activation_reserve_bytes" not in data["cluster"]["pools"][0]  # None: estimated from the model
    assert data["workload"]["mix"][0]["prompt_tokens"] == {"dist": "lognormal", "mean": 300.0, "cv": 0.5}


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").rglob("*.yaml")), ids=lambda p: p.name)
def test_to_yaml_round_trips_through_a_file(tmp_path, path):
    # The resolved copy lives elsewhere (results/), so relative data paths in it are made absolute.
    s = load_scenario(path)
    (tmp_path / "again.yaml").write_text(s.to_yaml())
    again = load_scenario(tmp_path / "again.yaml")
    assert again.to_yaml() == s.to_yaml()
    if s.workload.trace is None:
        assert again.model_dump() == s.model_dump()


# ----------------------------------------------------------------------------------------------- shipped defaults


def test_query_type_defaults_filled_in():
    d = quick()
    d["workload"]["mix"] = [{"query_type": "coding", "weight": 2.0}, {"query_type": "proof", "weight": 1.0}]
    s = parse_scenario(d)
    coding, proof = s.workload.mix
    assert coding.weight == 2.0
    # Seed article 002, section 7: coding reasoning 2,000-8,000 and answer 200-500 tokens (p5..p95).
    assert coding.prompt_tokens == Lognormal(mean=800, cv=0.8)
    assert coding.reasoning_tokens == lognormal_from_range(2000, 8000)
    assert coding.answer_tokens == lognormal_from_range(200, 500)
    assert coding.output_tokens is None and coding.reasoning_share is None
    assert isinstance(proof.reasoning_tokens, Lognormal) and proof.reasoning_tokens.max == 120000


def test_deepseek_defaults_filled_in():
    d = quick()
    d["workload"]["mix"] = [{"query_type": "deepseek-r1-production", "weight": 1.0}]
    q = parse_scenario(d).workload.mix[0]
    assert q.prompt_tokens == Empirical(file="builtin:servegen-deepseek-r1/prompt_tokens_pmf.csv.gz")
    assert q.output_tokens == Empirical(file="builtin:servegen-deepseek-r1/output_tokens_pmf.csv.gz")
    assert q.reasoning_share == Empirical(file="builtin:servegen-deepseek-r1/reasoning_share_pmf.csv.gz")
    assert q.reasoning_tokens is None and q.answer_tokens is None


def test_own_fields_win_over_defaults():
    d = quick()
    d["workload"]["mix"] = [
        {"query_type": "coding", "prompt_tokens": {"dist": "constant", "value": 5}},
        {"query_type": "factual", "output_tokens": {"dist": "constant", "value": 100},
         "reasoning_share": {"dist": "constant", "value": 0.5}},
    ]
    coding, factual = parse_scenario(d).workload.mix
    assert coding.prompt_tokens == Constant(value=5)
    assert coding.reasoning_tokens == lognormal_from_range(2000, 8000)
    # Output given as output + share: the shipped reasoning/answer split is not mixed in, the prompt default is.
    assert factual.reasoning_tokens is None and factual.answer_tokens is None
    assert factual.output_tokens == Constant(value=100)
    assert factual.prompt_tokens == Lognormal(mean=120, cv=0.6)


# ----------------------------------------------------------------------------------------------- public names


def test_all_is_exactly_the_public_names():
    # As httpx does: every name in __all__ exists, and every public non-module attribute is in __all__ (the names
    # load on first use, so they are looked up before the attributes are listed).
    assert len(simserve.__all__) == len(set(simserve.__all__))
    for name in simserve.__all__:
        assert hasattr(simserve, name), name
    public = {name for name, value in vars(simserve).items()
              if not name.startswith("_") and not isinstance(value, types.ModuleType)}
    assert set(simserve.__all__) == public
    assert set(simserve.__all__) == {"Results", "Scenario", "ScenarioError", "Simulation", "engine_build",
                                     "load_scenario", "parse_scenario", "run"}
    assert simserve.__version__ == "0.1.0"
