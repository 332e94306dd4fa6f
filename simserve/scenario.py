"""Scenarios: YAML in, frozen and validated pydantic models out. Unknown keys are errors; every error names the
file, the field path and what was expected (ScenarioError)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from simserve.hardware import (
    GPUS,
    MODELS,
    GpuSpec,
    ModelSpec,
    activation_reserve_estimate,
    kv_block_bytes,
    kv_capacity_blocks,
    kv_memory_bytes,
)
from simserve.perf import CalibratedPerfSpec, FitError, PerfSpec, RooflinePerfSpec
from simserve.perf.speculative import SpeculativeSpec
from simserve.quality import KvCompressionSpec, resolve
from simserve.request import BUILTIN_PREFIX
from simserve.routing import ByDifficultyRouterSpec, ByQueryTypeRouterSpec, RouterKind, RouterSpec, SimpleRouterSpec
from simserve.schedulers import FcfsSchedulerSpec, SchedulerKind, SchedulerSpec
from simserve.workload import QueryType, WorkloadSpec, load_empirical, resolve_path

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


class ScenarioError(Exception):
    """A scenario that cannot be used; the message is meant for the user as it is."""


class FieldError(ValueError):
    """A check of a whole section that blames one field of it: `loc` (keys and indices below the section) is added
    to the section's path in the message, so the error names the field where it was written."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class PoolSpec(BaseModel):
    """A pool of identical replicas: `replicas` copies of the model, each on `tensor_parallel` GPUs."""

    model_config = _FROZEN
    name: str = Field(default="main", description="the pool's name (unique; routers and reports use it)")
    gpu: str | GpuSpec = Field(default="h100-sxm", description="a GPU preset (a100-80gb, h100-sxm, h200, "
                               "b200) or an inline spec")
    model: str | ModelSpec | None = Field(default=None, description="defaults to the scenario's model")
    replicas: int = Field(default=1, gt=0, description="copies of the model")
    tensor_parallel: int = Field(default=1, gt=0, description="GPUs per replica; must divide the attention "
                                 "heads, and divide or be a multiple of the KV heads (vLLM)")
    max_num_seqs: int = Field(default=256, gt=0, description="most requests running at once (vLLM's)")
    max_num_batched_tokens: int = Field(default=8192, gt=0, description="token budget of one step (vLLM's)")
    kv_block_tokens: int = Field(default=16, gt=0, description="tokens per KV block (vLLM's block_size)")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="share of GPU memory vLLM may "
                                          "use (weights, activations, KV)")
    activation_reserve_bytes: float | None = Field(
        default=None, ge=0, description="per GPU, held back for activations, CUDA graphs and the CUDA context; "
        "default: estimated from the model and max_num_batched_tokens (hardware.activation_reserve_estimate)")
    num_kv_blocks: int | None = Field(default=None, gt=0, description="overrides the derived KV capacity")
    max_model_len_tokens: int | None = Field(default=None, gt=0, description="defaults to the model's context")
    prefix_caching: bool = Field(default=True, description="automatic prefix caching (vLLM V1 default: on)")
    expert_parallel: bool = Field(default=False, description="MoE: whole experts split over the replica's GPUs "
                                  "(all-to-all dispatch) instead of every expert sharded (calibrated perf)")
    data_parallel_attention: bool = Field(
        default=False, description="attention data-parallel over the replica's GPUs: every head on each GPU for its "
        "share of the sequences, KV not replicated (MLA); MoE layers expert-parallel (calibrated perf)")
    role: Literal["both", "prefill", "decode"] = Field(
        default="both", description="prefill/decode disaggregation: prefill pools hand requests to decode pools")
    chunked_prefill: bool = Field(default=True, description="split long prompts over steps (vLLM V1 default: on); "
                                  "off, a prompt is scheduled whole or waits")
    long_prefill_token_threshold: int = Field(
        default=0, ge=0, description="cap on one request's prefill chunk per step when more than one request is "
        "running or waiting (vLLM's; 0: no cap)")
    reserve_full_isl: bool = Field(
        default=True, description="admit a waiting request only if the KV blocks of its whole prompt (and output so "
        "far) fit, not just its first chunk (vLLM's scheduler_reserve_full_isl, on by default in vLLM 0.33; off, a "
        "prompt is admitted when its first chunk fits, and a long one may have to be preempted)")
    async_scheduling: bool = Field(
        default=False, description="plan step s+1 before step s's outputs are applied (vLLM's two-deep batch "
        "queue): a finished request frees its slot and blocks one step later")
    thinking: bool = Field(default=True, description="false: the model answers without reasoning (a hybrid "
                           "model with thinking off, or a standard model): no reasoning tokens, and with answer "
                           "quality modelled, the model's non-thinking accuracy")
    kv_compression: KvCompressionSpec | None = Field(
        default=None, description="KV compression of generated tokens (R-KV / SnapKV / H2O style eviction): a "
        "sequence keeps its prompt and at most a budget of generated KV; default off")
    speculative: SpeculativeSpec | None = Field(
        default=None, description="speculative decoding (draft_model, eagle, mtp, ngram): k drafted tokens per "
        "decoding sequence verified each step, an acceptance model per method, phase and query type "
        "(docs/speculative.md); default off")

    @model_validator(mode="after")
    def _limits(self) -> PoolSpec:
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise FieldError(("max_num_batched_tokens",), f"max_num_batched_tokens ({self.max_num_batched_tokens}) "
                             f"must be >= max_num_seqs ({self.max_num_seqs}), as vLLM requires")
        if isinstance(self.gpu, str) and self.gpu not in GPUS:
            raise FieldError(("gpu",), f"unknown gpu {self.gpu!r}; presets: {', '.join(GPUS)} (or an inline spec)")
        if isinstance(self.model, str) and self.model not in MODELS:
            raise FieldError(("model",), _unknown_model(self.model))
        if self.speculative is not None and self.async_scheduling:
            raise FieldError(("speculative",), "speculative decoding is modelled with sync scheduling only "
                             "(async_scheduling: false)")
        if self.speculative is not None and self.kv_compression is not None:
            raise FieldError(("speculative",), "speculative decoding with kv_compression is not supported")
        return self


def _unknown_model(name: str) -> str:
    return f"unknown model {name!r}; presets: {', '.join(MODELS)} (or an inline spec)"


class KvTransferSpec(BaseModel):
    """The link that carries a request's KV from a prefill replica to a decode replica: time = latency + KV bytes
    / bandwidth (defaults: one 400 Gb/s RDMA NIC per replica, 1 ms of setup)."""

    model_config = _FROZEN
    bandwidth_bytes_per_s: float = Field(default=50e9, gt=0, description="link bandwidth, bytes per second")
    latency_s: float = Field(default=0.001, ge=0, description="setup time of one transfer, seconds")


class ClusterSpec(BaseModel):
    model_config = _FROZEN
    pools: list[PoolSpec] = Field(min_length=1, description="pools of identical replicas")
    kv_transfer: KvTransferSpec = Field(default_factory=KvTransferSpec, description="prefill-to-decode KV link "
                                        "(disaggregated pools)")

    @model_validator(mode="after")
    def _unique(self) -> ClusterSpec:
        names = [p.name for p in self.pools]
        if len(set(names)) != len(names):
            dup = next(i for i, n in enumerate(names) if n in names[:i])
            raise FieldError(("pools", dup, "name"), f"pool names must be unique, got {names}")
        roles = {p.role for p in self.pools}
        if ("prefill" in roles) != ("decode" in roles):
            raise ValueError("a pool with role 'prefill' needs a pool with role 'decode', and the other way round")
        return self


class SloSpec(BaseModel):
    """Service-level objectives a request must all meet to count toward goodput (seconds; omit to skip one)."""

    model_config = _FROZEN
    ttft_s: float | None = Field(default=None, gt=0, description="time to first token, seconds")
    tpot_s: float | None = Field(default=None, gt=0, description="mean time per output token after the first")
    time_to_answer_s: float | None = Field(
        default=None, gt=0, description="arrival to the last reasoning token, seconds: the wait before the answer "
        "streams (the first token for a request without reasoning)")
    e2e_s: float | None = Field(default=None, gt=0, description="arrival to last token, seconds")


class EngineSpec(BaseModel):
    model_config = _FROZEN
    exact_steps: bool = Field(default=False, description="one event per step instead of fast-forwarding")
    horizon_s: float | None = Field(default=None, gt=0, description="stop here even if requests remain")
    check_invariants: bool = Field(default=False, description="assert KV block conservation at every step")


class PricingSpec(BaseModel):
    """What the provider charges per million tokens (docs/model.md, "Economics of trace reuse"): prompt tokens as
    input, reasoning and answer tokens as output. Defaults: DeepSeek-R1's API list price (api-docs.deepseek.com,
    2025: 0.55 USD per million input tokens on a cache miss, 2.19 per million output), a scenario input."""

    model_config = _FROZEN
    input_usd_per_mtok: float = Field(default=0.55, ge=0, description="USD per million prompt tokens billed "
                                      "(0.55: DeepSeek-R1 API, cache miss)")
    output_usd_per_mtok: float = Field(default=2.19, ge=0, description="USD per million output tokens billed "
                                       "(reasoning plus answer; 2.19: DeepSeek-R1 API)")
    bill_reused_reasoning: bool = Field(default=True, description="bill the reasoning a trace-cache hit or minted "
                                        "tokens saved as if generated (the user gets the same answer; the provider "
                                        "keeps the saving); false: bill only the tokens generated")


def _kind_only(value: Any) -> Any:
    """`router: least_kv` and `scheduler: fcfs` stand for mappings with only a kind (the JSON Schema says so too)."""
    return {"kind": value} if isinstance(value, str) else value


class Scenario(BaseModel):
    """A complete simulation: model, cluster, step-time model, workload and SLOs."""

    model_config = _FROZEN
    name: str = Field(default="scenario", description="names the results folder (results/NAME)")
    description: str = Field(default="", description="free text")
    seed: int = Field(default=0, ge=0, description="seeds every random stream of the run")
    model: str | ModelSpec | None = Field(
        default=None, description="the model the pools serve: a preset name or an inline spec; required unless "
        "every pool names its own (cluster.pools.N.model)")
    cluster: ClusterSpec = Field(description="the pools of GPUs and the KV link between them")
    perf: PerfSpec = Field(default_factory=RooflinePerfSpec, description="the step-time model (kind: "
                           "calibrated, roofline or linear)")
    workload: WorkloadSpec = Field(description="the requests: a synthetic mix or a trace")
    slo: SloSpec | None = Field(default=None, description="service-level objectives for goodput")
    router: Annotated[RouterSpec, BeforeValidator(_kind_only, json_schema_input_type=RouterSpec | RouterKind)] = (
        Field(default_factory=lambda: SimpleRouterSpec(kind="round_robin"), description="which replica an "
              "arriving request goes to: a kind (round_robin, least_outstanding...) or a mapping with kind, "
              "staleness_s and the router's own fields"))
    scheduler: Annotated[SchedulerSpec, BeforeValidator(_kind_only,
                                                        json_schema_input_type=SchedulerSpec | SchedulerKind)] = (
        Field(default_factory=FcfsSchedulerSpec, description="the waiting queue's order and the preemption "
              "victim: a kind (fcfs) or a mapping with kind"))
    engine: EngineSpec = Field(default_factory=EngineSpec, description="how the run is stepped and when it "
                               "stops")
    pricing: PricingSpec | None = Field(default=None, description="the price per million tokens the provider "
                                        "charges: adds revenue and margin to the summary (null: none)")
    _base_dir: Path | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _known(self) -> Scenario:
        if isinstance(self.model, str) and self.model not in MODELS:
            raise FieldError(("model",), _unknown_model(self.model))
        if self.model is None:
            bare = [str(i) for i, p in enumerate(self.cluster.pools) if p.model is None]
            if bare:
                raise FieldError(("model",), f"required field is missing: the model the pools serve (a preset such "
                                 f"as llama-3.1-8b, or an inline spec), or a model on every pool (cluster.pools."
                                 f"{'/'.join(bare)} name{'s' if len(bare) == 1 else ''} none)")
        if isinstance(self.router, ByQueryTypeRouterSpec | ByDifficultyRouterSpec):
            pools = {p.name for p in self.cluster.pools}
            targets: list[tuple[tuple[str | int, ...], str | None]] = [
                (("router", "table", q), pool) for q, pool in self.router.table.items()]
            for loc, target in [*targets, (("router", "default"), self.router.default)]:
                if target is not None and target not in pools:
                    raise FieldError(loc, f"pool {target!r} is not in cluster.pools ({', '.join(sorted(pools))})")
        serving = [(i, p) for i, p in enumerate(self.cluster.pools)
                   if p.role != "prefill" and p.name not in self.reward_pools]
        for i, p in serving[1:]:
            if p.kv_compression != serving[0][1].kv_compression:
                raise FieldError(("cluster", "pools", i, "kv_compression"), "pools that decode requests must "
                                 "share one kv_compression (answers are drawn at arrival, before routing): "
                                 "different ones per pool are not supported yet")
        return self

    @property
    def answer_compression(self) -> KvCompressionSpec | None:
        """The KV compression of the pools that decode requests (one for all of them, validated): the quality
        model draws answers and lengths with it."""
        for p in self.cluster.pools:
            if p.role != "prefill" and p.name not in self.reward_pools:
                return p.kv_compression
        return None

    @property
    def base_dir(self) -> Path | None:
        """Folder that relative data files are read from (the scenario file's folder)."""
        return self._base_dir

    def gpu_of(self, pool: PoolSpec) -> GpuSpec:
        return GPUS[pool.gpu] if isinstance(pool.gpu, str) else pool.gpu

    def model_of(self, pool: PoolSpec) -> ModelSpec:
        m = pool.model if pool.model is not None else self.model
        assert m is not None, "validated: a scenario model or one on every pool"
        return MODELS[m] if isinstance(m, str) else m

    @property
    def reward_pools(self) -> set[str]:
        """Pools that run a reward model for best_of_n (requests are not routed to them)."""
        return {q.parallel.reward_pool for q in self.workload.mix or [] if q.parallel and q.parallel.reward_pool}

    @property
    def answer_model(self) -> str:
        """The model whose answers the quality model describes: the scenario's, else the first serving pool's."""
        if isinstance(self.model, str):
            return self.model
        if self.model is not None:
            return self.model.name
        pool = next(p for p in self.cluster.pools if p.name not in self.reward_pools)
        return self.model_of(pool).name

    def answer_key(self, pool_name: str, route_class: str = "") -> tuple[str, int | None]:
        """The (model, thinking budget) a request answered on this pool gets: budget 0 on a pool without thinking,
        the difficulty class's budget if the router gives one, else None (the mix entry's own)."""
        pool = next(p for p in self.cluster.pools if p.name == pool_name)
        if pool.role == "prefill":  # answered on a decode pool: the scenario's model
            return self.answer_model, None
        if not pool.thinking:
            return self.model_of(pool).name, 0
        budgets = self.router.budgets if isinstance(self.router, ByDifficultyRouterSpec) else {}
        return self.model_of(pool).name, budgets.get(route_class)

    def answer_variants(self) -> list[tuple[str, int | None]]:
        """Every (model, budget) a request's answer may be drawn for, the default (the scenario's model, the
        entry's budget) first; one variant means no choice."""
        keys: list[tuple[str, int | None]] = [(self.answer_model, None)]
        serving = [p for p in self.cluster.pools if p.name not in self.reward_pools and p.role != "prefill"]
        keys += [self.answer_key(p.name) for p in serving]
        if isinstance(self.router, ByDifficultyRouterSpec):
            keys += [self.answer_key(pool, cls) for cls, pool in self.router.table.items()]
        return list(dict.fromkeys(keys))

    def reserve_bytes_of(self, pool: PoolSpec) -> float:
        if pool.activation_reserve_bytes is not None:
            return pool.activation_reserve_bytes
        return activation_reserve_estimate(self.model_of(pool), pool.max_num_batched_tokens)

    def kv_blocks_of(self, pool: PoolSpec) -> int:
        """KV blocks of one replica of `pool`: `num_kv_blocks`, or what its GPUs' memory leaves (vLLM's sizing)."""
        if pool.num_kv_blocks is not None:
            return pool.num_kv_blocks
        return kv_capacity_blocks(self.gpu_of(pool), self.model_of(pool), pool.tensor_parallel,
                                  pool.gpu_memory_utilization, pool.kv_block_tokens, self.reserve_bytes_of(pool),
                                  pool.data_parallel_attention)

    def max_tokens_of(self, pool: PoolSpec) -> int:
        """The most tokens (prompt plus output) one request may reach on a replica of `pool`: its max model
        length, or its KV capacity if smaller (a longer request is rejected on arrival)."""
        model_len = pool.max_model_len_tokens or self.model_of(pool).max_context_tokens
        return min(model_len, self.kv_blocks_of(pool) * pool.kv_block_tokens)

    def to_yaml(self) -> str:
        """The resolved scenario (defaults filled in) as YAML that loads back to an equal scenario."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        base = self.base_dir

        def absolute_files(node: Any) -> Any:
            # Relative data files are relative to the scenario's folder; the resolved copy lives elsewhere.
            if isinstance(node, dict):
                return {k: (str((base / v).resolve()) if _is_relative_file(k, v) and base is not None
                            else absolute_files(v)) for k, v in node.items()}
            if isinstance(node, list):
                return [absolute_files(v) for v in node]
            return node

        return yaml.safe_dump(absolute_files(data), sort_keys=False)


def _is_relative_file(key: str, value: Any) -> bool:
    return (key in ("file", "path", "fit", "fits_dir") and isinstance(value, str)
            and not value.startswith(BUILTIN_PREFIX) and not Path(value).is_absolute())


def _yaml_path(loc: tuple[Any, ...], data: Any) -> tuple[str, bool]:
    """The error location as the user wrote it: pydantic adds union members (a `kind` tag such as 'roofline',
    or a type name such as 'GpuSpec') to locations; keep only the segments that index into the input. Also says
    whether a union member was dropped (the error is about one member of a union)."""
    parts: list[str] = []
    node = data
    member = False
    for i, seg in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node):
            node = node[seg]
        elif not (last and isinstance(node, dict) and not _is_member(seg)):
            member = True
            continue  # a union member, not part of the input
        parts.append(str(seg))
    return ".".join(parts) or "(top level)", member


def _is_member(seg: Any) -> bool:
    """A location segment pydantic adds for a union member of a plain type ('str', 'int', ...)."""
    return seg in ("str", "int", "float", "bool", "none", "list[str]", "dict[str,str]")


def _format_errors(source: str, err: ValidationError, data: Any) -> str:
    found: list[tuple[str, bool, str, str]] = []  # (path, about a union member, error type, message)
    for e in err.errors():
        loc = tuple(e["loc"])
        exc = e.get("ctx", {}).get("error")
        if isinstance(exc, FieldError):
            loc = loc + exc.loc
        path, member = _yaml_path(loc, data)
        msg = str(exc) if isinstance(exc, FieldError) else e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this section)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            ctx = e.get("ctx", {})
            got = f", got {ctx['tag']!r}" if "tag" in ctx else ""
            msg = f"expected {ctx.get('discriminator', 'a tag')} to be one of {ctx.get('expected_tags', '?')}{got}"
        found.append((path, member, e["type"], msg))
    by_path: dict[str, list[str]] = {}
    for path, member, kind, msg in found:
        # A union member the input is not (`gpu: {...}` is not a preset name): its type error is noise when
        # another member says what is wrong inside the input.
        if member and kind.endswith("_type") and any(
                p.startswith(path + ".") or (p == path and not k.endswith("_type")) for p, _, k, _ in found):
            continue
        if msg not in by_path.setdefault(path, []):
            by_path[path].append(msg)
    n = len(by_path)
    lines = [f"{source}: invalid scenario ({n} error{'s' if n > 1 else ''})"]
    lines.extend(f"  {path}: {' or '.join(msgs)}" for path, msgs in by_path.items())
    return "\n".join(lines)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `dotted.key=value` overrides (value parsed as YAML; list items by index: cluster.pools.0.replicas=4)."""
    for item in overrides:
        if "=" not in item:
            raise ScenarioError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ScenarioError(f"--set {key}: {part!r} is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = yaml.safe_load(raw)
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = yaml.safe_load(raw)
                else:
                    node = node.setdefault(part, {})
            else:
                raise ScenarioError(f"--set {key}: cannot descend into {'.'.join(parts[:i])!r} (not a section)")
    return data


def parse_scenario(data: Any, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a scenario given as plain data; raises ScenarioError naming `source` and the field path."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping of scenario fields at the top level")
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as err:
        raise ScenarioError(_format_errors(source, err, data)) from None
    scenario._base_dir = base_dir
    _check_buildable(scenario, source)
    return scenario


def _check_buildable(scenario: Scenario, source: str) -> None:
    """Checks that need more than one field: data files readable, models fit in their pools' memory."""
    trace = scenario.workload.trace
    if trace is not None:
        path = resolve_path(trace.path, scenario.base_dir)
        if not path.is_file():
            raise ScenarioError(f"{source}: workload.trace.path: trace file not found: {path}")
    for i, q in enumerate(scenario.workload.mix or []):
        for key in ("prompt_tokens", "reasoning_tokens", "answer_tokens", "output_tokens", "reasoning_share"):
            spec = getattr(q, key)
            if spec is not None and getattr(spec, "file", None):
                try:
                    load_empirical(spec.file, str(scenario.base_dir or "."))
                except ValueError as exc:
                    raise ScenarioError(f"{source}: workload.mix.{i}.{key}.file: {exc}") from None
        _check_quality(scenario, q, f"{source}: workload.mix.{i}")
    if isinstance(scenario.perf, CalibratedPerfSpec):
        field = "perf.fit" if scenario.perf.fit else "perf.fits_dir" if scenario.perf.fits_dir else "perf"
        for pool in scenario.cluster.pools:
            try:
                scenario.perf.resolve_fit(scenario.gpu_of(pool), scenario.base_dir)
            except FitError as exc:
                raise ScenarioError(f"{source}: {field}: {exc}") from None
    for i, pool in enumerate(scenario.cluster.pools):
        where = f"{source}: cluster.pools.{i}"
        _check_parallel(pool, scenario.model_of(pool), where)
        model_len = pool.max_model_len_tokens or scenario.model_of(pool).max_context_tokens
        if not pool.chunked_prefill and pool.max_num_batched_tokens < model_len:
            raise ScenarioError(
                f"{where}.max_num_batched_tokens: with chunked_prefill off it must be >= the max model length "
                f"({model_len} tokens; set max_model_len_tokens lower or raise it), as vLLM requires")
        _check_memory(scenario, pool, where)


def _check_quality(scenario: Scenario, q: QueryType, where: str) -> None:
    """A reward pool names a pool that requests are not routed to; the quality model's defaults resolve."""
    names = [p.name for p in scenario.cluster.pools]
    if q.parallel is not None and q.parallel.reward_pool is not None:
        if q.parallel.reward_pool not in names:
            raise ScenarioError(f"{where}.parallel.reward_pool: no pool named {q.parallel.reward_pool!r}; pools: "
                                f"{names}")
        if all(name in scenario.reward_pools for name in names):
            raise ScenarioError(f"{where}.parallel.reward_pool: every pool would run the reward model; requests "
                                "need a pool of their own")
    if q.quality_on:
        try:
            resolve(q.quality, scenario.answer_model, q.query_type, q.early_exit)
        except ValueError as exc:
            raise ScenarioError(f"{where}.quality: {exc}") from None


def _check_parallel(pool: PoolSpec, model: ModelSpec, where: str) -> None:
    """vLLM's tensor-parallel rules: the GPUs split the attention heads evenly, and split the KV heads evenly or,
    when there are more GPUs than KV heads, replicate each on an equal share of them (QKVParallelLinear). MLA has
    one latent, not KV heads; data-parallel attention splits sequences, not heads."""
    tp = pool.tensor_parallel
    if tp == 1 or pool.data_parallel_attention:
        return
    heads, kv = model.num_attention_heads, model.num_kv_heads

    def fits(n: int) -> bool:
        return heads % n == 0 and (model.mla is not None or kv % n == 0 or n % kv == 0)

    valid = ", ".join(str(n) for n in range(1, min(heads, 64) + 1) if fits(n))
    if heads % tp:
        raise ScenarioError(f"{where}.tensor_parallel: {tp} does not divide the {heads} attention heads of "
                            f"{model.name}, as vLLM requires (valid: {valid})")
    if not fits(tp):
        raise ScenarioError(f"{where}.tensor_parallel: {tp} and the {kv} KV heads of {model.name}: one must divide "
                            f"the other, as vLLM requires (it splits the KV heads over the GPUs, or replicates each "
                            f"on an equal share of them; valid: {valid})")


def _check_memory(scenario: Scenario, pool: PoolSpec, where: str) -> None:
    """The weights fit on the replica's GPUs, and its KV blocks (derived, or `num_kv_blocks` set by hand) in what the
    weights leave. A hand-set count is held to the memory the weights leave, less `activation_reserve_bytes` only if
    that is given too (the estimated reserve is conservative: real vLLM servers hold up to 3% more blocks)."""
    gpu, model, tp = scenario.gpu_of(pool), scenario.model_of(pool), pool.tensor_parallel
    on = f"{tp} x {gpu.name} at gpu_memory_utilization {pool.gpu_memory_utilization}"
    hand_set = pool.num_kv_blocks is not None
    reserve = (pool.activation_reserve_bytes or 0.0) if hand_set else scenario.reserve_bytes_of(pool)
    free = kv_memory_bytes(gpu, model, tp, pool.gpu_memory_utilization, reserve)
    if free <= 0:
        raise ScenarioError(
            f"{where}: model {model.name} ({model.weight_bytes / 1e9:.1f} GB of weights) leaves no KV memory on {on}"
            f"{', num_kv_blocks or not' if hand_set else ''}; raise tensor_parallel or use a larger GPU")
    block = kv_block_bytes(model, pool.kv_block_tokens, tp, pool.data_parallel_attention)
    room = math.floor(free / block)
    left = (f"the {free / 1e9:.2f} GB the weights {'' if hand_set else 'and activations '}leave on {on}")
    if room <= 0:
        raise ScenarioError(f"{where}.kv_block_tokens: a block of {pool.kv_block_tokens:,} tokens takes "
                            f"{block / 1e9:.2f} GB of KV, more than {left}: not one block fits (vLLM uses 16)")
    if hand_set and pool.num_kv_blocks is not None and pool.num_kv_blocks > room:
        raise ScenarioError(f"{where}.num_kv_blocks: {pool.num_kv_blocks:,} blocks of {pool.kv_block_tokens} tokens "
                            f"take {pool.num_kv_blocks * block / 1e9:.2f} GB of KV, more than {left} (at most "
                            f"{room:,} blocks)")


def _load_yaml(text: str) -> Any:
    """yaml.safe_load, through libyaml when PyYAML has it (a tenth of the time; the same resolver, so the same
    data). A document libyaml refuses is read again by the pure-Python loader, whose errors the messages quote."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is not None:
        try:
            return yaml.load(text, Loader=loader)  # noqa: S506  # a safe loader
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read and validate a scenario YAML file (with optional `dotted.key=value` overrides)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read scenario file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not a UTF-8 text file (byte {exc.start}): expected a YAML scenario") from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ScenarioError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if overrides:
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: expected a mapping of scenario fields at the top level")
        data = apply_overrides(data, overrides)
    return parse_scenario(data, str(path), path.parent)
