"""GPU and model specifications, their presets and datasheet figures: data only, no behaviour beyond derived sizes.

Figures are datasheet peaks (NVIDIA) and Hugging Face model configs; see ../shared/design/REFERENCE.md and
docs/model.md. Prices are scenario defaults (public on-demand list prices, 2024-2026), not facts.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3


class GpuSpec(BaseModel):
    """One GPU: memory, bandwidth, dense BF16 peak, interconnect and price."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    name: str = Field(default="custom", description="a name for reports (an inline spec's fit is the nearest "
                      "shipped one)")
    memory_bytes: float = Field(gt=0, description="HBM capacity in bytes")
    hbm_bandwidth_bytes_per_s: float = Field(gt=0, description="HBM bandwidth, bytes per second")
    peak_flops_per_s: float = Field(gt=0, description="dense BF16 tensor-core peak")
    interconnect_bandwidth_bytes_per_s: float = Field(
        gt=0, description="per-GPU NVLink (or PCIe) bandwidth used by tensor-parallel all-reduce"
    )
    usd_per_hour: float = Field(ge=0, description="price of one GPU-hour")


class GpuDatasheet(BaseModel):
    """The datasheet figures a fit's roofline features are computed from (not measured): a GPU preset's, or those a
    profile or an experiment folder records for its device."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    name: str
    preset: str | None = None
    memory_bytes: float = Field(gt=0)
    hbm_bandwidth_bytes_per_s: float = Field(gt=0)
    peak_flops_per_s: float = Field(gt=0)
    interconnect_bandwidth_bytes_per_s: float = Field(default=900e9, gt=0)
    datasheet_note: str | None = None


def datasheet_of(gpu: GpuSpec, note: str | None = None) -> GpuDatasheet:
    """A GPU spec's datasheet figures, as a fit's features use them."""
    return GpuDatasheet(name=gpu.name, preset=gpu.name, memory_bytes=gpu.memory_bytes,
                        hbm_bandwidth_bytes_per_s=gpu.hbm_bandwidth_bytes_per_s,
                        peak_flops_per_s=gpu.peak_flops_per_s,
                        interconnect_bandwidth_bytes_per_s=gpu.interconnect_bandwidth_bytes_per_s,
                        datasheet_note=note)


class MoeSpec(BaseModel):
    """Mixture of experts: each token's FFN runs on `experts_per_token` of `num_experts` routed experts (plus any
    shared experts); the first `num_dense_layers` layers keep a dense FFN of the model's intermediate_size."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)
    num_experts: int = Field(gt=0, description="routed experts per MoE layer")
    experts_per_token: int = Field(gt=0, description="routed experts each token uses")
    expert_intermediate_size: int = Field(gt=0, description="FFN width of one expert")
    num_shared_experts: int = Field(default=0, ge=0, description="experts every token uses")
    num_dense_layers: int = Field(default=0, ge=0, description="leading layers with a dense FFN")


class MlaSpec(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3/R1): K and V are cached as one compressed latent of
    kv_lora_rank values plus a shared rotary key of qk_rope_head_dim values, per token and layer."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)
    kv_lora_rank: int = Field(default=512, gt=0, description="values of the cached KV latent")
    qk_rope_head_dim: int = Field(default=64, gt=0, description="values of the cached rotary key")
    qk_nope_head_dim: int = Field(default=128, gt=0, description="query/key dimension without rotary")
    v_head_dim: int = Field(default=128, gt=0, description="value dimension per head")
    q_lora_rank: int | None = Field(default=1536, gt=0, description="query compression rank (None: none)")


class ModelSpec(BaseModel):
    """A decoder-only transformer's size and attention shape (what step time and KV memory follow from)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)

    name: str = Field(default="custom", description="a name for reports")
    num_params: float = Field(gt=0, description="total parameters")
    num_active_params: float | None = Field(
        default=None, gt=0, description="parameters used per token (MoE); defaults to num_params"
    )
    num_layers: int = Field(gt=0, description="transformer layers")
    hidden_size: int = Field(gt=0, description="model (residual) width")
    num_attention_heads: int = Field(gt=0, description="query heads")
    num_kv_heads: int = Field(gt=0, description="key/value heads (GQA; equal to the query heads for MHA)")
    head_dim: int = Field(gt=0, description="dimension of one head")
    bytes_per_value: float = Field(default=2.0, gt=0, description="bytes per weight (BF16: 2, FP8: 1)")
    kv_bytes_per_value: float | None = Field(default=None, gt=0, description="bytes per KV value; defaults to "
                                             "bytes_per_value")
    max_context_tokens: int = Field(default=131072, gt=0, description="context length (the default "
                                    "max_model_len_tokens)")
    intermediate_size: int | None = Field(default=None, gt=0, description="dense FFN width; derived from "
                                          "num_params when not given")
    vocab_size: int = Field(default=128256, gt=0, description="vocabulary (the LM head's width)")
    moe: MoeSpec | None = Field(default=None, description="mixture of experts (None: dense)")
    mla: MlaSpec | None = Field(default=None, description="multi-head latent attention (None: GQA/MHA)")

    @property
    def active_params(self) -> float:
        return self.num_active_params if self.num_active_params is not None else self.num_params

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights (what must be resident in GPU memory)."""
        return self.num_params * self.bytes_per_value

    @property
    def kv_value_bytes(self) -> float:
        return self.kv_bytes_per_value if self.kv_bytes_per_value is not None else self.bytes_per_value

    @property
    def kv_values_per_token_layer(self) -> int:
        """Values cached per token and layer: K and V of every KV head, or MLA's latent plus rotary key."""
        if self.mla is not None:
            return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes per token over all layers: 2 (K and V) x layers x kv_heads x head_dim x bytes (GQA), or
        layers x (kv_lora_rank + qk_rope_head_dim) x bytes (MLA)."""
        return float(self.num_layers * self.kv_values_per_token_layer * self.kv_value_bytes)

    def weight_bytes_read(self, tokens: float) -> float:
        """Weight bytes one step of `tokens` tokens reads: every dense weight, and of a mixture of experts only
        the routed experts the tokens touch (expected E (1 - (1 - k/E)^tokens) per layer, uniform routing)."""
        if self.moe is None:
            return self.weight_bytes
        moe = self.moe
        expert_params = 3.0 * self.hidden_size * moe.expert_intermediate_size
        moe_layers = self.num_layers - moe.num_dense_layers
        routed_params = moe.num_experts * expert_params * moe_layers
        dense_params = max(self.num_params - routed_params, 0.0)
        touched = moe.num_experts * (1.0 - (1.0 - moe.experts_per_token / moe.num_experts) ** max(tokens, 0.0))
        return (dense_params + touched * expert_params * moe_layers) * self.bytes_per_value

    @property
    def ffn_size(self) -> int:
        """Dense FFN width: given, or what the parameter count leaves after embeddings and attention."""
        if self.intermediate_size is not None:
            return self.intermediate_size
        h = self.hidden_size
        attn = h * self.head_dim * (2 * self.num_attention_heads + 2 * self.num_kv_heads)
        per_layer = (self.num_params - 2 * self.vocab_size * h) / self.num_layers - attn
        return max(1, int(per_layer / (3 * h)))


GPUS: dict[str, GpuSpec] = {
    "a100-80gb": GpuSpec(
        name="a100-80gb",
        memory_bytes=80 * GIB,
        hbm_bandwidth_bytes_per_s=2.039e12,
        peak_flops_per_s=312e12,
        interconnect_bandwidth_bytes_per_s=600e9,
        usd_per_hour=1.80,
    ),
    "h100-sxm": GpuSpec(
        name="h100-sxm",
        memory_bytes=80 * GIB,
        hbm_bandwidth_bytes_per_s=3.35e12,
        peak_flops_per_s=989e12,
        interconnect_bandwidth_bytes_per_s=900e9,
        usd_per_hour=2.90,
    ),
    "h200": GpuSpec(
        name="h200",
        memory_bytes=141e9,
        hbm_bandwidth_bytes_per_s=4.8e12,
        peak_flops_per_s=989e12,
        interconnect_bandwidth_bytes_per_s=900e9,
        usd_per_hour=3.50,
    ),
    "b200": GpuSpec(
        name="b200",
        memory_bytes=180e9,
        hbm_bandwidth_bytes_per_s=8e12,
        peak_flops_per_s=2250e12,
        interconnect_bandwidth_bytes_per_s=1.8e12,
        usd_per_hour=5.00,
    ),
}

MODELS: dict[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b", num_params=8.03e9, num_layers=32, hidden_size=4096,
        num_attention_heads=32, num_kv_heads=8, head_dim=128, max_context_tokens=131072,
        intermediate_size=14336, vocab_size=128256,
    ),
    "llama-3.1-70b": ModelSpec(
        name="llama-3.1-70b", num_params=70.6e9, num_layers=80, hidden_size=8192,
        num_attention_heads=64, num_kv_heads=8, head_dim=128, max_context_tokens=131072,
        intermediate_size=28672, vocab_size=128256,
    ),
    # Llama 3.1 405B in Meta's FP8 release (FP8 weights, BF16 KV): the seed's "big" model; 8 x H100 hold it.
    "llama-3.1-405b-fp8": ModelSpec(
        name="llama-3.1-405b-fp8", num_params=405.9e9, num_layers=126, hidden_size=16384,
        num_attention_heads=128, num_kv_heads=8, head_dim=128, bytes_per_value=1.0, kv_bytes_per_value=2.0,
        max_context_tokens=131072, intermediate_size=53248, vocab_size=128256,
    ),
    "qwen2.5-32b": ModelSpec(
        name="qwen2.5-32b", num_params=32.8e9, num_layers=64, hidden_size=5120,
        num_attention_heads=40, num_kv_heads=8, head_dim=128, max_context_tokens=32768,
        intermediate_size=27648, vocab_size=152064,
    ),
    "r1-distill-qwen-7b": ModelSpec(
        name="r1-distill-qwen-7b", num_params=7.62e9, num_layers=28, hidden_size=3584,
        num_attention_heads=28, num_kv_heads=4, head_dim=128, max_context_tokens=131072,
        intermediate_size=18944, vocab_size=152064,
    ),
    "r1-distill-qwen-32b": ModelSpec(
        name="r1-distill-qwen-32b", num_params=32.8e9, num_layers=64, hidden_size=5120,
        num_attention_heads=40, num_kv_heads=8, head_dim=128, max_context_tokens=131072,
        intermediate_size=27648, vocab_size=152064,
    ),
    # Mixtures of experts (public config.json of each model). DeepSeek-R1 ships FP8 weights and caches MLA's
    # 512 + 64 values per token and layer in BF16.
    "deepseek-r1": ModelSpec(
        name="deepseek-r1", num_params=671e9, num_active_params=37e9, num_layers=61, hidden_size=7168,
        num_attention_heads=128, num_kv_heads=128, head_dim=128, bytes_per_value=1.0, kv_bytes_per_value=2.0,
        max_context_tokens=163840, intermediate_size=18432, vocab_size=129280,
        moe=MoeSpec(num_experts=256, experts_per_token=8, expert_intermediate_size=2048, num_shared_experts=1,
                    num_dense_layers=3),
        mla=MlaSpec(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, q_lora_rank=1536),
    ),
    "qwen3-30b-a3b": ModelSpec(
        name="qwen3-30b-a3b", num_params=30.5e9, num_active_params=3.3e9, num_layers=48, hidden_size=2048,
        num_attention_heads=32, num_kv_heads=4, head_dim=128, max_context_tokens=40960, intermediate_size=6144,
        vocab_size=151936, moe=MoeSpec(num_experts=128, experts_per_token=8, expert_intermediate_size=768),
    ),
    "qwen3-235b-a22b": ModelSpec(
        name="qwen3-235b-a22b", num_params=235e9, num_active_params=22e9, num_layers=94, hidden_size=4096,
        num_attention_heads=64, num_kv_heads=4, head_dim=128, max_context_tokens=40960, intermediate_size=12288,
        vocab_size=151936, moe=MoeSpec(num_experts=128, experts_per_token=8, expert_intermediate_size=1536),
    ),
    # gpt-oss-120b: MXFP4 expert weights (about 4.25 bits), BF16 attention and KV; 64 query heads of dim 64.
    "gpt-oss-120b": ModelSpec(
        name="gpt-oss-120b", num_params=116.8e9, num_active_params=5.1e9, num_layers=36, hidden_size=2880,
        num_attention_heads=64, num_kv_heads=8, head_dim=64, bytes_per_value=0.55, kv_bytes_per_value=2.0,
        max_context_tokens=131072, intermediate_size=2880, vocab_size=201088,
        moe=MoeSpec(num_experts=128, experts_per_token=4, expert_intermediate_size=2880),
    ),
}


def preset_for_name(name: str) -> str | None:
    """The GPU preset a device or folder name refers to ('NVIDIA H100 80GB HBM3', 'h100_sxm'), if any. An H100
    PCIe is not the SXM part."""
    low = name.lower()
    if "h100" in low and "pcie" not in low:
        return "h100-sxm"
    if "a100" in low:
        return "a100-80gb"
    if "h200" in low:
        return "h200"
    return None


def kv_capacity_blocks(
    gpu: GpuSpec,
    model: ModelSpec,
    tensor_parallel: int,
    gpu_memory_utilization: float,
    kv_block_tokens: int,
    activation_reserve_bytes: float,
    data_parallel_attention: bool = False,
) -> int:
    """Number of KV blocks a replica holds, as vLLM sizes its cache at start-up.

    (memory x utilisation x GPUs - weights - activation reserve x GPUs) / bytes per block. Weights and KV heads
    are sharded over the tensor-parallel GPUs, so the bytes of one block summed over the GPUs equal
    block_tokens x kv_bytes_per_token (times kv_replication when KV cannot be split). May be <= 0: the caller
    reports that the model does not fit.
    """
    free = kv_memory_bytes(gpu, model, tensor_parallel, gpu_memory_utilization, activation_reserve_bytes)
    return math.floor(free / kv_block_bytes(model, kv_block_tokens, tensor_parallel, data_parallel_attention))


def kv_memory_bytes(gpu: GpuSpec, model: ModelSpec, tensor_parallel: int, gpu_memory_utilization: float,
                    activation_reserve_bytes: float) -> float:
    """Bytes a replica's GPUs leave for the KV cache: memory x utilisation x GPUs - weights - activation reserve x
    GPUs. May be <= 0: the weights do not fit."""
    usable = tensor_parallel * (gpu.memory_bytes * gpu_memory_utilization - activation_reserve_bytes)
    return usable - model.weight_bytes


def kv_block_bytes(model: ModelSpec, kv_block_tokens: int, tensor_parallel: int,
                   data_parallel_attention: bool = False) -> float:
    """Bytes one KV block takes over a replica's GPUs (block_tokens x KV bytes per token x kv_replication)."""
    return kv_block_tokens * model.kv_bytes_per_token * kv_replication(model, tensor_parallel,
                                                                      data_parallel_attention)


def activation_reserve_estimate(model: ModelSpec, max_num_batched_tokens: int) -> float:
    """Per-GPU memory vLLM keeps out of the KV cache, estimated: 1 GiB (CUDA context, CUDA graphs, non-torch
    allocations) plus 32 bytes x max_num_batched_tokens x hidden_size (the activations of its profiling run).
    Reproduces the KV capacity vLLM logged in the two H100 runs of e2e-ground-truth within 3% (docs/calibration.md)."""
    return float(GIB + 32.0 * max_num_batched_tokens * model.hidden_size)


def kv_replication(model: ModelSpec, tensor_parallel: int, data_parallel_attention: bool = False) -> float:
    """How many copies of each token's KV a tensor-parallel group holds: MLA's single latent is replicated on
    every GPU; KV heads are replicated once the group has more GPUs than KV heads. With data-parallel attention
    each sequence's KV lives on one GPU only."""
    if data_parallel_attention:
        return 1.0
    if model.mla is not None:
        return float(tensor_parallel)
    return max(1.0, tensor_parallel / model.num_kv_heads)


def model_from_architecture(arch: dict[str, Any], name: str = "custom") -> ModelSpec:
    """A ModelSpec from a `model_architecture` block (the e2e experiments' experiment.json, profile metadata):
    num_layers, hidden_size, num_attention_heads, num_kv_heads, head_dim, intermediate_size, vocab_size,
    num_params, bytes_per_param, and for a mixture of experts active_params and moe {num_experts,
    experts_per_token, expert_intermediate_size}. Raises ValueError naming a missing field."""
    required = ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "num_params")
    missing = [k for k in required if arch.get(k) is None]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    head_dim = arch.get("head_dim") or arch["hidden_size"] // arch["num_attention_heads"]
    moe = None
    if arch.get("moe"):
        m = arch["moe"]
        moe = MoeSpec(num_experts=m["num_experts"], experts_per_token=m["experts_per_token"],
                      expert_intermediate_size=m.get("expert_intermediate_size") or m["intermediate_size"],
                      num_shared_experts=m.get("num_shared_experts", 0),
                      num_dense_layers=m.get("num_dense_layers", 0))
    mla = MlaSpec(**arch["mla"]) if arch.get("mla") else None
    return ModelSpec(
        name=arch.get("name") or name, num_params=float(arch["num_params"]),
        num_active_params=float(arch["active_params"]) if arch.get("active_params") else None,
        num_layers=int(arch["num_layers"]), hidden_size=int(arch["hidden_size"]),
        num_attention_heads=int(arch["num_attention_heads"]), num_kv_heads=int(arch["num_kv_heads"]),
        head_dim=int(head_dim), bytes_per_value=float(arch.get("bytes_per_param", 2)),
        intermediate_size=int(arch["intermediate_size"]) if arch.get("intermediate_size") else None,
        vocab_size=int(arch.get("vocab_size") or 128256),
        max_context_tokens=int(arch.get("max_position_embeddings") or 131072), moe=moe, mla=mla)
