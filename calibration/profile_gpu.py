#!/usr/bin/env python
"""GPU profiling harness: measure a model's operator and whole-step latencies into a simserve profile folder.

The model's architecture is built from its Hugging Face config with random weights (timing does not depend on weight
values, so nothing is downloaded). Optionally only the first N decoder layers are built (``--layers``) and one tensor-
parallel shard is emulated on one GPU by dividing the attention heads and FFN width (``--tensor-parallel``). The
output folder follows the simserve op-level profile schema, version 1 (see ``calibration/README.md``): ``gemm.csv``,
``context_attention.csv``, ``generation_attention.csv``, ``elementwise.csv``, ``steps.csv`` and ``metadata.yaml``;
all latencies are in seconds.

Run it as a script (``python calibration/profile_gpu.py --help``) or import it; the timing of one point goes through
:func:`measure_point`, which tests replace to inject out-of-memory errors.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime as dt
import gc
import inspect
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from simserve.calibration.profiles import COLUMNS as PROFILE_COLUMNS
from simserve.calibration.profiles import SCHEMA
from simserve.hardware import GPUS, preset_for_name

# Public config.json values of the built-in models: (HF config class, kwargs).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "tiny": ("llama", dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=16, intermediate_size=128, vocab_size=256, max_position_embeddings=4096,
                           rope_theta=10000.0, rms_norm_eps=1e-5)),
    "llama-3.1-8b": ("llama", dict(num_hidden_layers=32, hidden_size=4096, num_attention_heads=32,
                                   num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                   max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5)),
    "llama-3.1-70b": ("llama", dict(num_hidden_layers=80, hidden_size=8192, num_attention_heads=64,
                                    num_key_value_heads=8, intermediate_size=28672, vocab_size=128256,
                                    max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5)),
    "qwen2.5-32b": ("qwen2", dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=40,
                                  num_key_value_heads=8, intermediate_size=27648, vocab_size=152064,
                                  max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5)),
    "r1-distill-qwen-7b": ("qwen2", dict(num_hidden_layers=28, hidden_size=3584, num_attention_heads=28,
                                         num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                                         max_position_embeddings=131072, rope_theta=10000.0, rms_norm_eps=1e-6)),
    "r1-distill-qwen-32b": ("qwen2", dict(num_hidden_layers=64, hidden_size=5120, num_attention_heads=40,
                                          num_key_value_heads=8, intermediate_size=27648, vocab_size=152064,
                                          max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-5)),
}

# Placeholder datasheet of a device with no simserve preset: (HBM bytes/s, dense bf16 FLOP/s, interconnect bytes/s).
NOMINAL = (5.0e10, 1.0e12, 32e9)

# The profile schema's columns (simserve.calibration.profiles), each table with its latency and status.
COLUMNS: dict[str, list[str]] = {name: [*cols, "latency_s", "status"] for name, cols in PROFILE_COLUMNS.items()}

Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Grid:
    """The points measured, per table."""

    gemm_tokens: tuple[int, ...]
    ctx_batch: tuple[int, ...]
    ctx_new: tuple[int, ...]
    ctx_cached: tuple[int, ...]
    gen_batch: tuple[int, ...]
    gen_kv: tuple[int, ...]
    elem_tokens: tuple[int, ...]
    prefill_new: tuple[int, ...]
    prefill_cached: tuple[int, ...]
    decode_batch: tuple[int, ...]
    decode_kv: tuple[int, ...]
    mixed: tuple[tuple[int, ...], ...]


def spread(count: int, low: int, high: int) -> tuple[int, ...]:
    """``count`` context lengths spread geometrically from ``low`` to ``high`` (a mixed-length decode batch)."""
    if count == 1:
        return (low,)
    return tuple(int(round(low * (high / low) ** (i / (count - 1)))) for i in range(count))


def default_grid() -> Grid:
    """The full grid, for a GPU."""
    powers = tuple(2 ** i for i in range(14))  # 1 .. 8192
    return Grid(
        gemm_tokens=powers,
        ctx_batch=(1, 2, 4, 8),
        ctx_new=(16, 64, 256, 512, 1024, 2048, 4096, 8192),
        ctx_cached=(0, 512, 2048, 8192, 32768),
        gen_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        gen_kv=(128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768),
        elem_tokens=powers,
        prefill_new=(32, 128, 512, 1024, 2048, 4096, 8192),
        prefill_cached=(0, 1024, 4096, 16384),
        decode_batch=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        decode_kv=(128, 512, 2048, 8192),
        mixed=(spread(4, 128, 8192), spread(16, 128, 4096), spread(64, 128, 2048), spread(32, 512, 1024)),
    )


def quick_grid() -> Grid:
    """A small grid: a smoke test on any machine, seconds on a CPU with the tiny model."""
    return Grid(
        gemm_tokens=(1, 8, 64, 256),
        ctx_batch=(1, 2),
        ctx_new=(16, 64),
        ctx_cached=(0, 64),
        gen_batch=(1, 4),
        gen_kv=(16, 128),
        elem_tokens=(1, 16, 128),
        prefill_new=(16, 64),
        prefill_cached=(0, 32),
        decode_batch=(1, 4),
        decode_kv=(16, 64),
        mixed=(spread(2, 8, 64), spread(3, 8, 64)),
    )


@dataclasses.dataclass(frozen=True)
class Bench:
    """One prepared point: ``run`` is timed; ``reset`` (untimed) runs before each call of ``run``."""

    run: Callable[[], Any]
    reset: Callable[[], Any] | None = None


@dataclasses.dataclass(frozen=True)
class Timing:
    """How points are timed."""

    device: torch.device
    warmup: int
    repeats: int


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(bench: Bench, device: torch.device) -> float:
    """Seconds one call of ``bench.run`` takes: CUDA events on a GPU, ``perf_counter`` on the CPU."""
    if bench.reset is not None:
        bench.reset()
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        bench.run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    begin = time.perf_counter()
    bench.run()
    return time.perf_counter() - begin


def measure_point(setup: Callable[[], Bench], timing: Timing) -> float:
    """Prepare one point and return the median of ``timing.repeats`` timed runs after ``timing.warmup`` ones."""
    bench = setup()
    with torch.inference_mode():
        for _ in range(timing.warmup):
            time_once(bench, timing.device)
        samples = [time_once(bench, timing.device) for _ in range(timing.repeats)]
    return statistics.median(samples)


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is an out-of-memory error of the allocator."""
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    """Release cached allocator blocks after an out-of-memory error."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Progress:
    """Counts points, prints progress to stderr (a line per table and about every 5 %), and enforces a deadline."""

    def __init__(self, total: int, max_minutes: float | None, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.start = time.monotonic()
        self.deadline = None if max_minutes is None else self.start + 60.0 * max_minutes
        self.every = max(1, self.total // 20)
        self.stream = stream if stream is not None else sys.stderr

    def expired(self) -> bool:
        """Whether the ``--max-minutes`` budget is spent."""
        return self.deadline is not None and time.monotonic() >= self.deadline

    def table(self, name: str, points: int) -> None:
        """Announce a table."""
        print(f"[profile] {name}: {points} points ({self.status()})", file=self.stream, flush=True)

    def tick(self) -> None:
        """Count one finished point; print every ~5 % of the total."""
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            print(f"[profile] {self.status()}", file=self.stream, flush=True)

    def status(self) -> str:
        """Points done / total, elapsed and estimated time left."""
        elapsed = time.monotonic() - self.start
        left = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        return f"{self.done}/{self.total} points, elapsed {elapsed:.1f} s, about {left:.1f} s left"


@dataclasses.dataclass
class Runner:
    """Measures points one by one, turning out-of-memory errors into ``oom`` rows."""

    timing: Timing
    progress: Progress
    stopped: bool = False

    def point(self, row: Row, setup: Callable[[], Bench]) -> Row | None:
        """Measure one point; ``row`` gets ``latency_s`` and ``status``. None once the deadline has passed."""
        if self.stopped or self.progress.expired():
            self.stopped = True
            return None
        latency: float | str = ""
        try:
            latency = measure_point(setup, self.timing)
        except Exception as error:  # noqa: BLE001 - only out-of-memory errors are swallowed
            if not is_oom(error):
                raise
        status = "ok" if latency != "" else "oom"
        if status == "oom":  # outside the except block, so the traceback no longer holds the point's tensors
            print(f"[profile] out of memory at {row}", file=self.progress.stream, flush=True)
            free_memory(self.timing.device)
        self.progress.tick()
        return {**row, "latency_s": latency, "status": status}

    def table(self, name: str, points: Sequence[tuple[Row, Callable[[], Bench]]]) -> list[Row]:
        """Measure every point of one table (until the deadline)."""
        self.progress.table(name, len(points))
        rows = []
        for row, setup in points:
            result = self.point(row, setup)
            if result is None:
                break
            rows.append(result)
        return rows


# ----------------------------------------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The architecture measured (after layer slicing and TP division) and where it came from."""

    name: str
    family: str
    config: dict[str, Any]
    full_layers: int
    tensor_parallel: int

    @property
    def num_heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.config["num_key_value_heads"])

    @property
    def head_dim(self) -> int:
        return int(self.config["head_dim"])


def load_config(model: str | None, config_path: str | None) -> tuple[str, str, dict[str, Any]]:
    """(name, family, HF config kwargs) of a built-in model or of an HF ``config.json``."""
    if model is not None:
        family, kwargs = MODELS[model]
        return model, family, dict(kwargs)
    assert config_path is not None
    raw = json.loads(Path(config_path).read_text())
    family = str(raw.get("model_type", "llama"))
    if family not in ("llama", "qwen2", "mistral"):
        raise SystemExit(f"model_type {family!r}: the harness builds llama and qwen2 architectures (mistral as llama)")
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "vocab_size", "max_position_embeddings", "rope_theta", "rms_norm_eps",
            "attention_bias", "mlp_bias", "tie_word_embeddings", "hidden_act")
    kwargs = {key: raw[key] for key in keys if raw.get(key) is not None}
    name = str(raw.get("_name_or_path") or Path(config_path).resolve().parent.name or Path(config_path).stem)
    return name, family, kwargs


def shard_config(name: str, family: str, kwargs: dict[str, Any], layers: int | None, tp: int) -> ModelSpec:
    """Slice to the first ``layers`` decoder layers and divide heads and FFN width by ``tp`` (one TP shard)."""
    config = dict(kwargs)
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    config["head_dim"] = int(config.get("head_dim") or config["hidden_size"] // heads)
    if heads % tp or config["intermediate_size"] % tp:
        raise SystemExit(f"--tensor-parallel {tp} does not divide {heads} heads and FFN width "
                         f"{config['intermediate_size']}")
    if kv_heads % tp and tp % kv_heads:
        raise SystemExit(f"--tensor-parallel {tp} and {kv_heads} KV heads neither divide the other")
    config["num_attention_heads"] = heads // tp
    config["num_key_value_heads"] = max(1, kv_heads // tp)  # fewer KV heads than shards: replicated, one each
    config["intermediate_size"] = config["intermediate_size"] // tp
    full = int(config["num_hidden_layers"])
    if layers is not None:
        config["num_hidden_layers"] = min(layers, full)
    return ModelSpec(name=name, family=family, config=config, full_layers=full, tensor_parallel=tp)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily make ``dtype`` torch's default floating-point type."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model with random weights, created directly on ``device`` in ``dtype``, in eval mode, SDPA attention."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_class = Qwen2Config if spec.family.startswith("qwen") else LlamaConfig
    config = config_class(**spec.config)
    with default_dtype(dtype), device:
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.to(device=device, dtype=dtype).eval()


def count_params(model: torch.nn.Module) -> int:
    """Parameters of the module as built."""
    return sum(p.numel() for p in model.parameters())


def linear_shapes(model: Any) -> list[tuple[int, int]]:
    """Distinct (out n, in k) shapes of the nn.Linear layers of one decoder layer and of the LM head."""
    modules = [*model.model.layers[0].modules(), model.lm_head]
    shapes = {(m.out_features, m.in_features) for m in modules if isinstance(m, torch.nn.Linear)}
    return sorted(shapes)


# ------------------------------------------------------------------------------------------------------ operators


def sdpa_supports_gqa() -> bool:
    """Whether this torch's scaled_dot_product_attention has ``enable_gqa``."""
    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):
        return "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


def attention_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> Callable[[], Any]:
    """SDPA over (batch, heads, tokens, head_dim) tensors with GQA; causal means aligned to the last key.

    Query i of n new tokens attends to every cached key and to new keys <= i. KV heads are shared natively with
    ``enable_gqa`` where this torch has it, else expanded to the query heads before timing.
    """
    group = q.shape[1] // k.shape[1]
    kwargs: dict[str, Any] = {}
    if group > 1 and sdpa_supports_gqa():
        kwargs["enable_gqa"] = True
    elif group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    q_len, kv_len = q.shape[2], k.shape[2]
    if causal and q_len == kv_len:
        kwargs["is_causal"] = True
    elif causal and q_len > 1:
        kwargs["attn_mask"] = lower_right_mask(q_len, kv_len, q.device)
    return lambda: F.scaled_dot_product_attention(q, k, v, **kwargs)


def lower_right_mask(q_len: int, kv_len: int, device: torch.device) -> Any:
    """A causal mask aligned to the bottom right (a cached prefix before the new tokens)."""
    try:
        from torch.nn.attention.bias import causal_lower_right

        return causal_lower_right(q_len, kv_len)
    except ImportError:
        rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        return torch.arange(kv_len, device=device)[None, :] <= rows


def gemm_setup(m: int, n: int, k: int, device: torch.device, dtype: torch.dtype) -> Callable[[], Bench]:
    """Y[m, n] = X[m, k] @ W[n, k]^T with torch.nn.functional.linear."""
    def setup() -> Bench:
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        return Bench(lambda: F.linear(x, w))
    return setup


def attention_setup(batch: int, q_len: int, kv_len: int, spec: ModelSpec, device: torch.device,
                    dtype: torch.dtype) -> Callable[[], Bench]:
    """Attention of ``q_len`` new tokens per sequence over ``kv_len`` keys (cached plus new)."""
    def setup() -> Bench:
        q = torch.randn(batch, spec.num_heads, q_len, spec.head_dim, device=device, dtype=dtype)
        k = torch.randn(batch, spec.num_kv_heads, kv_len, spec.head_dim, device=device, dtype=dtype)
        v = torch.randn_like(k)
        return Bench(attention_fn(q, k, v, causal=True))
    return setup


def elementwise_setup(op: str, tokens: int, width: int, model: Any, device: torch.device,
                      dtype: torch.dtype) -> Callable[[], Bench]:
    """rmsnorm (the model's RMSNorm module), silu_mul (the model's activation times up) or residual add."""
    def setup() -> Bench:
        a = torch.randn(tokens, width, device=device, dtype=dtype)
        b = torch.randn(tokens, width, device=device, dtype=dtype)
        if op == "rmsnorm":
            norm = model.model.norm
            return Bench(lambda: norm(a))
        if op == "silu_mul":
            act = model.model.layers[0].mlp.act_fn
            return Bench(lambda: act(a) * b)
        return Bench(lambda: a + b)
    return setup


# ---------------------------------------------------------------------------------------------------------- steps


def random_kv(spec: ModelSpec, batch: int, tokens: int, device: torch.device,
              dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random keys and values of a cached prefix, per layer (timing does not depend on their values)."""
    shape = (batch, spec.num_kv_heads, tokens, spec.head_dim)
    return [(torch.randn(shape, device=device, dtype=dtype), torch.randn(shape, device=device, dtype=dtype))
            for _ in range(int(spec.config["num_hidden_layers"]))]


def fresh_cache(prefix: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """A DynamicCache holding ``prefix`` (rebuilt before every timed forward, which appends to it)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    for layer, (k, v) in enumerate(prefix):
        cache.update(k, v, layer)
    return cache


def logits_kwargs(model: Any) -> dict[str, int]:
    """Compute logits for the last position only, as a server does, where this transformers allows it."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def cache_argument(model: Any) -> str:
    """The forward argument taking the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def step_setup(model: Any, spec: ModelSpec, contexts: Sequence[int], new_tokens: int, device: torch.device,
               dtype: torch.dtype) -> Callable[[], Bench]:
    """One forward of ``new_tokens`` per sequence after a cached prefix of ``context - new_tokens`` tokens.

    Sequences of different context lengths are left-padded to the longest, with an attention mask and
    per-sequence positions.
    """
    def setup() -> Bench:
        batch, longest = len(contexts), max(contexts)
        cached = longest - new_tokens
        prefix = random_kv(spec, batch, cached, device, dtype) if cached else []
        vocab = int(spec.config["vocab_size"])
        inputs: dict[str, Any] = {
            "input_ids": torch.randint(0, vocab, (batch, new_tokens), device=device),
            "cache_position": torch.arange(cached, longest, device=device),
            "use_cache": True,
            **logits_kwargs(model),
        }
        starts = torch.tensor([c - new_tokens for c in contexts], device=device)
        inputs["position_ids"] = starts[:, None] + torch.arange(new_tokens, device=device)[None, :]
        if len(set(contexts)) > 1:
            pads = torch.tensor([longest - c for c in contexts], device=device)
            inputs["attention_mask"] = (torch.arange(longest, device=device)[None, :] >= pads[:, None]).long()
        state: dict[str, Any] = {}
        cache_arg = cache_argument(model)

        def reset() -> None:
            state["cache"] = fresh_cache(prefix)

        return Bench(lambda: model(**{cache_arg: state["cache"]}, **inputs), reset)
    return setup


def step_rows(grid: Grid) -> list[tuple[Row, list[int], int]]:
    """(row, per-sequence context lengths, new tokens per sequence) of every step point."""
    points: list[tuple[Row, list[int], int]] = []
    for new in grid.prefill_new:
        for cached in grid.prefill_cached:
            row = {"decode_context_tokens": "", "prefill_new_tokens": str(new), "prefill_cached_tokens": str(cached)}
            points.append((row, [cached + new], new))
    decodes = [[kv] * batch for batch in grid.decode_batch for kv in grid.decode_kv]
    for contexts in [*decodes, *(list(m) for m in grid.mixed)]:
        row = {"decode_context_tokens": " ".join(map(str, contexts)), "prefill_new_tokens": "",
               "prefill_cached_tokens": ""}
        points.append((row, contexts, 1))
    return points


# --------------------------------------------------------------------------------------------------------- tables


Point = tuple[Row, Callable[[], Bench]]


def table_points(model: Any, spec: ModelSpec, grid: Grid, device: torch.device,
                 dtype: torch.dtype) -> dict[str, list[Point]]:
    """Every point of every table, in measuring order."""
    heads = {"num_heads": spec.num_heads, "num_kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim}
    hidden, inter = int(spec.config["hidden_size"]), int(spec.config["intermediate_size"])
    return {
        "gemm": [({"m": m, "n": n, "k": k}, gemm_setup(m, n, k, device, dtype))
                 for n, k in linear_shapes(model) for m in grid.gemm_tokens],
        "context_attention": [
            ({"batch_size": b, "new_tokens": new, "cached_tokens": cached, **heads},
             attention_setup(b, new, cached + new, spec, device, dtype))
            for b in grid.ctx_batch for new in grid.ctx_new for cached in grid.ctx_cached],
        "generation_attention": [
            ({"batch_size": b, "kv_tokens": kv, **heads}, attention_setup(b, 1, kv, spec, device, dtype))
            for b in grid.gen_batch for kv in grid.gen_kv],
        "elementwise": [
            ({"op": op, "num_tokens": n, "width": width}, elementwise_setup(op, n, width, model, device, dtype))
            for op, width in (("rmsnorm", hidden), ("silu_mul", inter), ("add", hidden)) for n in grid.elem_tokens],
        "steps": [(row, step_setup(model, spec, contexts, new, device, dtype))
                  for row, contexts, new in step_rows(grid)],
    }


def write_csv(path: Path, columns: list[str], rows: list[Row]) -> None:
    """A table with exactly ``columns``; latencies written with full precision."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            latency = row["latency_s"]
            writer.writerow({**row, "latency_s": repr(float(latency)) if latency != "" else ""})


# ------------------------------------------------------------------------------------------------------- metadata


def memory_bytes(device: torch.device) -> int:
    """Total memory of the GPU, or of the machine on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, if there is one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def gpu_metadata(device: torch.device) -> dict[str, Any]:
    """The device, its simserve preset and datasheet figures (nominal where unknown)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    preset = preset_for_name(name) if device.type == "cuda" else None
    sheet = GPUS.get(preset or "")
    hbm, flops, link = ((sheet.hbm_bandwidth_bytes_per_s, sheet.peak_flops_per_s,
                         sheet.interconnect_bandwidth_bytes_per_s) if sheet else NOMINAL)
    note = (f"datasheet figures of preset {preset} (dense bf16 peak)"
            if preset else "bandwidth, peak FLOP/s and interconnect are nominal placeholders, not measured")
    return {"name": name, "preset": preset, "memory_bytes": memory_bytes(device), "hbm_bandwidth_bytes_per_s": hbm,
            "peak_flops_per_s": flops, "interconnect_bandwidth_bytes_per_s": link, "datasheet_note": note}


def attention_backend(device: torch.device, dtype: torch.dtype, spec: ModelSpec) -> str:
    """The first SDPA backend (flash, efficient, math) that runs a decode-shaped GQA call on this device."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return "torch sdpa (backend unknown)"
    setup = attention_setup(2, 1, 64, spec, device, dtype)
    run = setup().run
    for backend, label in ((SDPBackend.FLASH_ATTENTION, "flash"), (SDPBackend.EFFICIENT_ATTENTION, "efficient"),
                           (SDPBackend.MATH, "math")):
        try:
            with sdpa_kernel(backend), torch.inference_mode():
                run()
        except RuntimeError:
            continue
        return f"torch sdpa ({label})"
    return "torch sdpa (backend unknown)"


def notes(spec: ModelSpec, stopped: bool) -> str:
    """How the numbers were obtained and what they leave out."""
    parts = [
        "Random weights from the model config (no download; timings do not depend on weight values).",
        f"Built {spec.config['num_hidden_layers']} of {spec.full_layers} decoder layers (Vidur-style slicing): "
        "scale per-layer times by the full layer count; embedding and LM head are counted once.",
        f"Tensor parallelism {spec.tensor_parallel} emulated on one GPU by dividing attention heads, KV heads and "
        "FFN width by it (as Vidur does); vocabulary and embedding are not sharded; no communication "
        "(all-reduce) is timed.",
        "Steps run the transformers model eagerly with a DynamicCache filled with random keys and values (untimed), "
        "LM head on the last position only; mixed-length decode batches use left padding and an attention mask.",
        "Latencies are medians in seconds.",
    ]
    if stopped:
        parts.append("Stopped early by --max-minutes: tables are incomplete.")
    return " ".join(parts)


def metadata(args: argparse.Namespace, spec: ModelSpec, model: torch.nn.Module, device: torch.device,
             dtype: torch.dtype, timing: Timing, stopped: bool) -> dict[str, Any]:
    """The ``metadata.yaml`` document."""
    import transformers

    config = spec.config
    return {
        "schema": SCHEMA,
        "source": {"kind": "harness", "command": " ".join(args.argv)},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dtype": str(dtype).removeprefix("torch."),
        "attention_backend": attention_backend(device, dtype, spec),
        "gpu": gpu_metadata(device),
        "software": {"torch": str(torch.__version__), "transformers": str(transformers.__version__),
                     "cuda": torch.version.cuda, "driver": driver_version() if device.type == "cuda" else None,
                     "python": platform.python_version()},
        "model": {"name": spec.name, "num_layers": int(config["num_hidden_layers"]),
                  "hidden_size": int(config["hidden_size"]), "num_attention_heads": spec.num_heads,
                  "num_kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
                  "intermediate_size": int(config["intermediate_size"]), "vocab_size": int(config["vocab_size"]),
                  "num_params": count_params(model), "bytes_per_param": torch.tensor([], dtype=dtype).element_size()},
        "scaled_from": {"num_layers": spec.full_layers, "tensor_parallel": spec.tensor_parallel},
        "repeats": timing.repeats,
        "warmup": timing.warmup,
        "notes": notes(spec, stopped),
        "complete": not stopped,
    }


# ------------------------------------------------------------------------------------------------------------ CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", choices=sorted(MODELS), help="a built-in model config")
    source.add_argument("--config", help="path to a Hugging Face config.json (llama or qwen2 architecture)")
    parser.add_argument("--out", required=True, help="profile folder to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--layers", type=int, default=None, help="build only the first N decoder layers")
    parser.add_argument("--tensor-parallel", type=int, default=1, help="emulate one shard of this TP degree")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per point (default 10, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per point (default 3, quick 1)")
    parser.add_argument("--quick", action="store_true", help="a much smaller grid")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop gracefully after this long")
    args = parser.parse_args(list(argv))
    for name in ("layers", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.tensor_parallel < 1 or (args.warmup is not None and args.warmup < 0):
        parser.error("--tensor-parallel must be at least 1 and --warmup at least 0")
    args.argv = ["calibration/profile_gpu.py", *argv]
    return args


def resolve_device(name: str | None) -> torch.device:
    """The device asked for, or CUDA when present."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device")
    return torch.device(name)


def profile(args: argparse.Namespace) -> Path:
    """Build the model, measure every table and write the profile folder; returns it."""
    device = resolve_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    name, family, kwargs = load_config(args.model, args.config)
    spec = shard_config(name, family, kwargs, args.layers, args.tensor_parallel)
    grid = quick_grid() if args.quick else default_grid()
    timing = Timing(device=device, warmup=args.warmup if args.warmup is not None else (1 if args.quick else 3),
                    repeats=args.repeats if args.repeats is not None else (3 if args.quick else 10))
    model = build_model(spec, device, dtype)
    tables = table_points(model, spec, grid, device, dtype)
    runner = Runner(timing, Progress(sum(map(len, tables.values())), args.max_minutes))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for table, points in tables.items():
        write_csv(out / f"{table}.csv", COLUMNS[table], runner.table(table, points))
    meta = metadata(args, spec, model, device, dtype, timing, runner.stopped)
    (out / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    print(f"[profile] wrote {out} ({runner.progress.status()})", file=sys.stderr, flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python calibration/profile_gpu.py ...``."""
    profile(parse_args(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
