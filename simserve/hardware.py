"""GPU and model specifications, and their presets: data only, no behaviour beyond derived sizes.

Figures are datasheet peaks (NVIDIA) and Hugging Face model configs; see ../shared/design/REFERENCE.md and
docs/model.md. Prices are scenario defaults (public on-demand list prices, 2024-2026), not facts.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3


class GpuSpec(BaseModel):
    """One GPU: memory, bandwidth, dense BF16 peak, interconnect and price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    memory_bytes: float = Field(gt=0, description="HBM capacity in bytes")
    hbm_bandwidth_bytes_per_s: float = Field(gt=0)
    peak_flops_per_s: float = Field(gt=0, description="dense BF16 tensor-core peak")
    interconnect_bandwidth_bytes_per_s: float = Field(
        gt=0, description="per-GPU NVLink (or PCIe) bandwidth used by tensor-parallel all-reduce"
    )
    usd_per_hour: float = Field(ge=0, description="price of one GPU-hour")


class ModelSpec(BaseModel):
    """A decoder-only transformer's size and attention shape (what step time and KV memory follow from)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    num_params: float = Field(gt=0, description="total parameters")
    num_active_params: float | None = Field(
        default=None, gt=0, description="parameters used per token (MoE); defaults to num_params"
    )
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_attention_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    bytes_per_value: float = Field(default=2.0, gt=0, description="bytes per weight and per KV value (BF16: 2)")
    max_context_tokens: int = Field(default=131072, gt=0)

    @property
    def active_params(self) -> float:
        return self.num_active_params if self.num_active_params is not None else self.num_params

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights (what must be resident in GPU memory)."""
        return self.num_params * self.bytes_per_value

    @property
    def kv_bytes_per_token(self) -> float:
        """KV cache bytes per token over all layers: 2 (K and V) x layers x kv_heads x head_dim x bytes."""
        return 2.0 * self.num_layers * self.num_kv_heads * self.head_dim * self.bytes_per_value


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
    ),
    "llama-3.1-70b": ModelSpec(
        name="llama-3.1-70b", num_params=70.6e9, num_layers=80, hidden_size=8192,
        num_attention_heads=64, num_kv_heads=8, head_dim=128, max_context_tokens=131072,
    ),
    "qwen2.5-32b": ModelSpec(
        name="qwen2.5-32b", num_params=32.8e9, num_layers=64, hidden_size=5120,
        num_attention_heads=40, num_kv_heads=8, head_dim=128, max_context_tokens=32768,
    ),
    "r1-distill-qwen-7b": ModelSpec(
        name="r1-distill-qwen-7b", num_params=7.62e9, num_layers=28, hidden_size=3584,
        num_attention_heads=28, num_kv_heads=4, head_dim=128, max_context_tokens=131072,
    ),
    "r1-distill-qwen-32b": ModelSpec(
        name="r1-distill-qwen-32b", num_params=32.8e9, num_layers=64, hidden_size=5120,
        num_attention_heads=40, num_kv_heads=8, head_dim=128, max_context_tokens=131072,
    ),
}


def kv_capacity_blocks(
    gpu: GpuSpec,
    model: ModelSpec,
    tensor_parallel: int,
    gpu_memory_utilization: float,
    kv_block_tokens: int,
    activation_reserve_bytes: float,
) -> int:
    """Number of KV blocks a replica holds, as vLLM sizes its cache at start-up.

    (memory x utilisation x GPUs - weights - activation reserve x GPUs) / bytes per block. Weights and KV heads
    are sharded over the tensor-parallel GPUs, so the bytes of one block summed over the GPUs equal
    block_tokens x kv_bytes_per_token. May be <= 0: the caller reports that the model does not fit.
    """
    usable = tensor_parallel * (gpu.memory_bytes * gpu_memory_utilization - activation_reserve_bytes)
    free = usable - model.weight_bytes
    return math.floor(free / (kv_block_tokens * model.kv_bytes_per_token))
