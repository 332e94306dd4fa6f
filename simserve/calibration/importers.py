"""Importers: published per-operation GPU measurements -> the op-level profile schema
(simserve.calibration.profiles).

- `aiconfigurator` (NVIDIA ai-dynamo/aiconfigurator, Apache-2.0): one system folder (gemm_perf.csv,
  context_attention_perf.csv, generation_attention_perf.csv, custom_allreduce_perf.csv). Latency ms -> s; decode
  KV length = isl + step; all-reduce message_size is elements (bf16: 2 bytes each); only the CUDA-graph all-reduce
  rows (what vLLM serves with) are kept.
- `vidur` (microsoft/vidur, MIT): a compute folder of `<model>/mlp.csv` files (per-layer token-level ops at
  num_tokens and emulated TP) and, beside it, `network/<gpu>_dgx/all_reduce.csv`. GEMM shapes follow from each
  row's model shape; latency is the median, ms -> s; all-reduce size is bytes; only single-node rows are kept.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from simserve.calibration.profiles import SCHEMA, ProfileError
from simserve.hardware import GPUS, datasheet_of, preset_for_name


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise ProfileError(f"{path}: missing (expected for this format)")
    df = pd.read_csv(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ProfileError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _datasheet(gpu: str) -> dict[str, Any]:
    if gpu not in GPUS:
        raise ProfileError(f"--gpu: unknown GPU preset {gpu!r}; presets: {', '.join(GPUS)}")
    return datasheet_of(GPUS[gpu], "simserve preset datasheet figures; the latencies are measured").model_dump()


def _guess_gpu(src: Path) -> str:
    preset = preset_for_name(str(src))
    if preset is None:
        raise ProfileError(f"{src}: cannot tell which GPU this is; pass --gpu with one of {', '.join(GPUS)}")
    return preset


def import_aiconfigurator(src: str | Path, gpu: str | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Read one aiconfigurator system folder; returns (metadata, tables) in the profile schema."""
    src = Path(src)
    gpu = gpu or _guess_gpu(src)
    g = _read(src / "gemm_perf.csv", ["gemm_dtype", "m", "n", "k", "latency", "device", "version"])
    g = g[g.gemm_dtype == "bfloat16"]
    gemm = pd.DataFrame({"m": g.m, "n": g.n, "k": g.k, "latency_s": g.latency * 1e-3})
    c = _read(src / "context_attention_perf.csv",
              ["batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "latency", "kv_cache_dtype"])
    ctx = pd.DataFrame({"batch_size": c.batch_size, "new_tokens": c.isl, "cached_tokens": 0,
                        "num_heads": c.num_heads, "num_kv_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                        "latency_s": c.latency * 1e-3})
    d = _read(src / "generation_attention_perf.csv",
              ["batch_size", "isl", "step", "num_heads", "num_key_value_heads", "head_dim", "latency"])
    gen = pd.DataFrame({"batch_size": d.batch_size, "kv_tokens": d.isl + d.step, "num_heads": d.num_heads,
                        "num_kv_heads": d.num_key_value_heads, "head_dim": d.head_dim,
                        "latency_s": d.latency * 1e-3})
    a = _read(src / "custom_allreduce_perf.csv", ["num_gpus", "message_size", "latency", "backend"])
    a = a[a.backend == "vllm_graph"]
    ar = pd.DataFrame({"num_gpus": a.num_gpus, "message_bytes": a.message_size * 2, "latency_s": a.latency * 1e-3})
    meta = {
        "schema": SCHEMA,
        "source": {"kind": "aiconfigurator", "path": src.name, "device": str(g.device.iloc[0]),
                   "framework_version": str(g.version.iloc[0]),
                   "attention_kernel": str(c.get("kernel_source", pd.Series(["?"])).iloc[0]),
                   "license": "Apache-2.0 (ai-dynamo/aiconfigurator)",
                   "converted_by": "simserve calibrate import --format aiconfigurator"},
        "gpu": _datasheet(gpu),
        "dtype": "bfloat16",
        "attention_backend": str(c.get("kernel_source", pd.Series(["?"])).iloc[0]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "notes": "vLLM kernels timed in CUDA graphs by aiconfigurator's collector; latency = mean per call. "
                 "Decode KV length = isl + step; all-reduce message bytes = 2 x elements (bf16).",
    }
    tables = {"gemm": gemm, "context_attention": ctx, "generation_attention": gen, "allreduce": ar}
    return meta, {k: v.reset_index(drop=True) for k, v in tables.items()}


# Vidur mlp.csv op -> (table, shape function of the model row). GEMM shapes per its README.
def _vidur_gemms(r: pd.Series) -> dict[str, tuple[float, float]]:
    tp = r.num_tensor_parallel_workers
    d = r.n_embd / r.n_head
    up = (2 if r.use_gated_mlp else 1) * r.n_expanded_embd / tp
    return {
        "attn_pre_proj": ((r.n_head + 2 * r.n_kv_head) * d / tp, r.n_embd),
        "attn_post_proj": (r.n_embd, r.n_head * d / tp),
        "mlp_up_proj": (up, r.n_embd),
        "mlp_down_proj": (r.n_embd, r.n_expanded_embd / tp),
    }


def _vidur_elementwise(r: pd.Series) -> dict[str, tuple[str, float]]:
    tp = r.num_tensor_parallel_workers
    d = r.n_embd / r.n_head
    return {
        "input_layernorm": ("rmsnorm", r.n_embd),
        "post_attention_layernorm": ("rmsnorm", r.n_embd),
        "attn_rope": ("rope", (r.n_head + r.n_kv_head) * d / tp),
        "mlp_act": ("silu_mul", r.n_expanded_embd / tp),
        "add": ("add", r.n_embd),
    }


def import_vidur(src: str | Path, gpu: str | None = None) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """Read a Vidur compute folder (`<model>/mlp.csv` ...) and its sibling network folder."""
    src = Path(src)
    gpu = gpu or _guess_gpu(src)
    files = sorted(src.glob("*/mlp.csv"))
    if not files:
        raise ProfileError(f"{src}: no <model>/mlp.csv files (expected a Vidur compute folder such as vidur/a100)")
    gemm_rows: list[tuple[float, float, float, float]] = []
    elem_rows: list[tuple[str, float, float, float]] = []
    shape_cols = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp", "num_tokens",
                  "num_tensor_parallel_workers"]
    for f in files:
        df = _read(f, shape_cols + ["time_stats.mlp_up_proj.median"])
        for _, r in df.iterrows():
            for op, (n, k) in _vidur_gemms(r).items():
                gemm_rows.append((r.num_tokens, n, k, r[f"time_stats.{op}.median"] * 1e-3))
            for op, (name, width) in _vidur_elementwise(r).items():
                col = f"time_stats.{op}.median"
                if col in df.columns and np.isfinite(r[col]):
                    elem_rows.append((name, r.num_tokens, width, r[col] * 1e-3))
    # Repeated shapes (duplicate runs, and shapes shared by models) are averaged.
    gemm = (pd.DataFrame(gemm_rows, columns=["m", "n", "k", "latency_s"])
            .groupby(["m", "n", "k"], as_index=False).latency_s.mean())
    elem = (pd.DataFrame(elem_rows, columns=["op", "num_tokens", "width", "latency_s"])
            .groupby(["op", "num_tokens", "width"], as_index=False).latency_s.mean())
    tables = {"gemm": gemm, "elementwise": elem}
    net = src.parent / "network" / f"{src.name}_dgx" / "all_reduce.csv"
    if net.exists():
        a = _read(net, ["num_workers", "devices_per_node", "size", "time_stats.all_reduce.median"])
        a = a[a.devices_per_node == a.num_workers]
        ar = pd.DataFrame({"num_gpus": a.num_workers, "message_bytes": a["size"],
                           "latency_s": a["time_stats.all_reduce.median"] * 1e-3})
        tables["allreduce"] = ar.groupby(["num_gpus", "message_bytes"], as_index=False).latency_s.mean()
    meta = {
        "schema": SCHEMA,
        "source": {"kind": "vidur", "path": src.name, "models": [f.parent.name for f in files],
                   "network": net.parent.name if net.exists() else None, "license": "MIT (microsoft/vidur)",
                   "converted_by": "simserve calibrate import --format vidur"},
        "gpu": _datasheet(gpu),
        "dtype": "float16",
        "attention_backend": None,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "notes": "sarathi-serve kernels, fp16, median of 20 timed steps; TP emulated on one GPU (no communication "
                 "in compute rows). Only single-node all-reduce rows are kept.",
    }
    return meta, {k: v.reset_index(drop=True) for k, v in tables.items()}


IMPORTERS = {"aiconfigurator": import_aiconfigurator, "vidur": import_vidur}
