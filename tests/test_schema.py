"""The exported JSON Schema (`simserve schema`) says what the loader accepts: every shipped scenario and every form
the README documents validate against it, the shorthands included, and every field carries a description."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from simserve import parse_scenario
from simserve.cli import main
from simserve.routing import ROUTERS, RouterKind, RouterSpec
from simserve.schedulers import SCHEDULERS, SchedulerKind, SchedulerSpec

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").rglob("*.yaml"))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["schema"]) == 0
    schema = json.loads(out.getvalue())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, data: Any) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(data)]


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_validates_against_the_schema(validator, path):
    assert errors(validator, yaml.safe_load(path.read_text())) == []


def readme_block(section: str) -> str:
    """The first YAML block of a README section."""
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(section) + r".*?```yaml\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


def readme_scenario() -> dict[str, Any]:
    return yaml.safe_load(readme_block("## A scenario\n"))


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def readme_forms() -> list[tuple[str, dict[str, Any]]]:
    """The README's scenario and each option it documents, written as the README writes them."""
    base = readme_scenario()
    forms: list[tuple[str, dict[str, Any]]] = [("readme", base)]
    forms += [(f"router: {kind}", with_(base, router=kind)) for kind in get_args(RouterKind)]
    forms += [
        ("router mapping", with_(base, router={"kind": "least_kv", "staleness_s": 0.5})),
        ("prefix_affinity", with_(base, router={"kind": "prefix_affinity", "load_factor": 1.5})),
        ("by_query_type", with_(base, router={"kind": "by_query_type", "table": {"math_word": "main"},
                                              "default": "main"})),
        ("scheduler: fcfs", with_(base, scheduler="fcfs")),
        ("scheduler mapping", with_(base, scheduler={"kind": "fcfs"})),
        *[(f"scheduler: {kind}", with_(base, scheduler=kind)) for kind in get_args(SchedulerKind)],
        ("priority classes", with_(base, scheduler="priority", workload__mix=[
            {"query_type": "factual", "priority": 0}, {"query_type": "proof", "priority": 1}])),
        ("shortest_predicted_first", with_(base, scheduler={
            "kind": "shortest_predicted_first", "log_error": 0.5, "refine_after_tokens": 256, "refine_factor": 0.5,
            "aging_tokens_per_s": 100.0})),
        ("fair_share", with_(base, scheduler={"kind": "fair_share", "prompt_weight": 1.0, "output_weight": 2.0})),
        ("reasoning_aware", with_(base, scheduler={
            "kind": "reasoning_aware", "chunk_tokens": 1024, "long_after_tokens": 2048, "preempt_mode": "swap",
            "pcie_bandwidth_bytes_per_s": 25e9, "host_capacity_bytes": 64e9})),
        ("pool options", with_(base, cluster__pools__0={
            **base["cluster"]["pools"][0], "role": "both", "prefix_caching": False, "num_kv_blocks": 1000,
            "chunked_prefill": True, "long_prefill_token_threshold": 0, "reserve_full_isl": False,
            "async_scheduling": True, "max_model_len_tokens": 32768, "model": "qwen2.5-32b"})),
        ("kv_compression tokens", with_(base, cluster__pools__0={
            **base["cluster"]["pools"][0], "kv_compression": {"method": "rkv", "budget_tokens": 1024,
                                                              "window_tokens": 128}})),
        ("kv_compression share", with_(base, cluster__pools__0={
            **base["cluster"]["pools"][0], "kv_compression": {
                "method": "snapkv", "budget_share": 0.5, "window_tokens": 64, "lengthen_factor": 0.3,
                "lengthen_below_share": 0.25}})),
        ("disaggregated", with_(base, cluster={"pools": [{"name": "p", "role": "prefill"},
                                                         {"name": "d", "role": "decode"}],
                                               "kv_transfer": {"bandwidth_bytes_per_s": 5e10, "latency_s": 0.001}})),
        ("gamma", with_(base, workload__arrival={"process": "gamma", "rate_per_s": 2.0, "cv": 3.0})),
        ("diurnal", with_(base, workload__arrival={"process": "diurnal", "rate_per_s": 2.0, "amplitude": 0.5,
                                                   "period_s": 86400, "peak_s": 50400})),
        ("rate per user", with_(base, workload__arrival={"process": "poisson"}, workload__num_users=2000,
                                workload__rate_per_user_per_s=0.001)),
        ("duration", with_(base, workload__duration_s=600)),
        ("shipped query types", with_(base, workload__mix=[{"query_type": "coding", "weight": 2},
                                                            {"query_type": "deepseek-r1-production"}])),
        ("distributions", with_(base, workload__mix__0={
            "query_type": "x", "system_prompt_tokens": 512,
            "prompt_tokens": {"dist": "uniform", "low": 10, "high": 20},
            "output_tokens": {"dist": "lognormal", "mean": 1000, "cv": 1, "max": 8000},
            "reasoning_share": {"dist": "empirical", "values": [0.5, 0.9], "weights": [1, 3]}})),
        ("sessions", with_(base, workload__sessions={"turns": {"dist": "uniform", "low": 1, "high": 3},
                                                     "think_time_s": {"dist": "constant", "value": 30}})),
        ("trace", with_(base, workload={"trace": {"format": "mooncake", "path": "t.jsonl", "rate_scale": 2,
                                                  "start_s": 10, "end_s": 100}})),
        ("perf roofline", with_(base, perf={"kind": "roofline"})),
        ("perf linear", with_(base, perf={"kind": "linear", "step_overhead_s": 0.01, "per_prefill_token_s": 1e-5})),
        ("perf fits_dir", with_(base, perf={"kind": "calibrated", "fits_dir": "fits"})),
        ("inline model", with_(base, model={"num_params": 8e9, "num_layers": 32, "hidden_size": 4096,
                                            "num_attention_heads": 32, "num_kv_heads": 8, "head_dim": 128})),
        ("engine", with_(base, engine={"horizon_s": 3600, "exact_steps": True})),
        ("pricing", with_(base, pricing={"input_usd_per_mtok": 0.55, "output_usd_per_mtok": 2.19,
                                         "bill_reused_reasoning": True})),
        ("answer quality", with_(base, workload__mix__0={
            **base["workload"]["mix"][0], **yaml.safe_load(readme_block("## Answer quality"))[0]})),
        ("quality given", with_(base, workload__mix__0={
            **base["workload"]["mix"][0], "quality": {"pass_at_1": 0.8, "no_thinking_accuracy": 0.5,
                                                       "dispersion": 1.0, "difficulty": "none"},
            "parallel": {"n": 4, "aggregate": "first_finished", "m": 2}})),
        ("by_difficulty", with_(base, router={"kind": "by_difficulty", "classes": {"easy": [1, 2, 3], "hard": [4, 5]},
                                              "table": {"easy": "main", "hard": "main"}, "classifier_accuracy": 0.9,
                                              "budgets": {"easy": 1000}, "default": "main"})),
        ("no thinking", with_(base, cluster__pools__0={**base["cluster"]["pools"][0], "thinking": False})),
        ("best_of_n", with_(base, workload__mix__0={
            **base["workload"]["mix"][0], "parallel": {"n": 4, "aggregate": "best_of_n", "reward_pool": "prm"}},
            cluster={"pools": [base["cluster"]["pools"][0], {"name": "prm", "gpu": "h100-sxm"}]})),
    ]
    return forms


FORMS = readme_forms()


@pytest.mark.parametrize("name, data", FORMS, ids=[f[0] for f in FORMS])
def test_every_documented_form_validates_against_the_schema(validator, name, data):
    assert errors(validator, data) == []


@pytest.mark.parametrize("name, data", [f for f in FORMS if f[0] not in ("trace", "perf fits_dir")],
                         ids=[f[0] for f in FORMS if f[0] not in ("trace", "perf fits_dir")])
def test_and_the_loader_takes_it_too(name, data):
    parse_scenario(data)  # (the trace and fits_dir forms name files that are not there)


@pytest.mark.parametrize("change", [{"router": "fastest"}, {"scheduler": "lifo"}, {"router": "by_query_type"},
                                    {"seed": -1}, {"bogus": 1}, {"cluster": {"pools": []}}])
def test_forms_the_loader_refuses_the_schema_refuses(validator, change):
    data = {**readme_scenario(), **change}
    assert errors(validator, data)
    with pytest.raises(Exception):  # noqa: B017 (ScenarioError or ValidationError, by the layer that refuses)
        parse_scenario(data)


def test_every_field_has_a_description(validator):
    schema = validator.schema
    missing = [f"Scenario.{n}" for n, p in schema["properties"].items() if "description" not in p]
    for name, definition in schema["$defs"].items():
        missing += [f"{name}.{n}" for n, p in definition.get("properties", {}).items() if "description" not in p]
    assert missing == []


@pytest.mark.parametrize("registry, spec, kinds", [(ROUTERS, RouterSpec, RouterKind),
                                                   (SCHEDULERS, SchedulerSpec, SchedulerKind)])
def test_the_bare_string_kinds_are_those_that_need_no_other_field(registry, spec, kinds):
    adapter: TypeAdapter[Any] = TypeAdapter(spec)
    bare = set()
    for kind in registry:
        try:
            adapter.validate_python({"kind": kind})
            bare.add(kind)
        except ValidationError:
            pass
    assert set(get_args(kinds)) == bare
