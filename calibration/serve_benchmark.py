#!/usr/bin/env python
"""End-to-end serving benchmark: run transformers' continuous batching engine under a Poisson workload and write an
experiment folder that ``simserve validate`` can replay.

The model is built from its config with random weights (the built-in configs of ``calibration/profile_gpu.py``, or any
llama / qwen2 ``config.json``), so nothing is downloaded. Requests arrive as a Poisson process; prompt and output
lengths are drawn from fixed, uniform or lognormal distributions; prompts are random token ids and every request
generates exactly its drawn number of tokens (EOS disabled, ``max_new_tokens`` pinned), so the lengths are exact
replay inputs. The engine is transformers' own continuous batching manager (paged KV cache, chunked prefill, FIFO
scheduler), driven the way a server would drive it: requests are added while the engine runs and their tokens are
streamed back.

Per request the engine's own per-token timestamps (``record_timestamps``) give the first and last token times and its
lifespan gives the time it was first scheduled; the streamed outputs give the times the client received them (kept
as ``client_ttft_s`` and ``client_e2e_s``). The folder holds ``requests.csv`` and ``experiment.json`` in the layout
of the e2e ground-truth experiments (see ``calibration/README.md``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import importlib.util
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TOOL = "simserve calibration/serve_benchmark.py"
ENGINE = "transformers continuous batching"

# Datasheet figures of known GPUs, matched on the device name (upper case, first match wins):
# (name markers that must all appear, datasheet name, memory bytes, HBM bytes/s, dense bf16 FLOP/s).
GPU_DATASHEETS: list[tuple[tuple[str, ...], str, float, float, float]] = [
    (("H200",), "H200 SXM 141GB", 141e9, 4.8e12, 989e12),
    (("H100", "PCIE"), "H100 PCIe 80GB", 80e9, 2.0e12, 756e12),
    (("H100", "NVL"), "H100 NVL 94GB", 94e9, 3.9e12, 835e12),
    (("H100",), "H100 SXM 80GB", 80e9, 3.35e12, 989e12),
    (("A100", "80GB", "PCIE"), "A100 80GB PCIe", 80e9, 1.935e12, 312e12),
    (("A100", "80GB"), "A100 SXM 80GB", 80e9, 2.039e12, 312e12),
    (("A100", "40GB"), "A100 40GB", 40e9, 1.555e12, 312e12),
]
# Placeholder figures for a CPU or an unknown GPU (as calibration/profile_gpu.py uses).
NOMINAL_HBM_BYTES_PER_S = 5.0e10
NOMINAL_FLOPS_PER_S = 1.0e12

# Engine defaults on the CPU, where transformers cannot size the cache from free device memory.
CPU_KV_TOKENS = 65536
CPU_MAX_BATCH_TOKENS = 2048


def log(message: str) -> None:
    print(f"[serve-benchmark] {message}", file=sys.stderr, flush=True)


def load_profile_module() -> ModuleType:
    """calibration/profile_gpu.py (the model configs and builder), imported by path: calibration/ is a folder of
    scripts, not a package, so it is on sys.path only when a script of it is run directly."""
    name = "simserve_profile_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "profile_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------------------- workload


@dataclasses.dataclass(frozen=True)
class LengthDist:
    """A token-length distribution: fixed, uniform over [low, high], or lognormal with a mean and a CV."""

    kind: str
    mean: float
    cv: float
    low: int
    high: int

    def describe(self) -> dict[str, Any]:
        if self.kind == "fixed":
            return {"distribution": "fixed", "value": int(round(self.mean))}
        if self.kind == "uniform":
            return {"distribution": "uniform integers", "low": self.low, "high": self.high}
        return {"distribution": "lognormal, rounded", "mean": self.mean, "cv": self.cv, "clipped_to": [self.low,
                                                                                                         self.high]}

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, max(1, int(round(self.mean))), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(self.low, self.high + 1, size=n, dtype=np.int64)
        sigma2 = math.log1p(self.cv ** 2)
        mu = math.log(self.mean) - sigma2 / 2
        values = np.rint(rng.lognormal(mu, math.sqrt(sigma2), size=n)).astype(np.int64)
        return np.clip(values, self.low, self.high)


def length_dist(kind: str, mean: float, cv: float, explicit: Sequence[int] | None, limit: int) -> LengthDist:
    """The distribution of one length: ``explicit`` [low, high] makes it uniform over that range; a uniform one
    without a range spans mean +- sqrt(3) cv mean (the same CV); a lognormal one is clipped to [1, limit]."""
    if explicit is not None:
        low, high = int(explicit[0]), int(explicit[1])
        return LengthDist("uniform", (low + high) / 2, 0.0, low, high)
    if kind == "uniform":
        half = math.sqrt(3) * cv * mean
        low, high = max(1, int(round(mean - half))), max(1, int(round(mean + half)))
        return LengthDist("uniform", mean, cv, low, min(high, limit))
    if kind == "lognormal" and cv > 0:
        return LengthDist("lognormal", mean, cv, 1, limit)
    return LengthDist("fixed", mean, 0.0, int(round(mean)), int(round(mean)))


@dataclasses.dataclass
class Workload:
    scheduled_s: np.ndarray  # arrival times from the start of the run
    prompts: list[list[int]]
    outputs: list[int]


def make_workload(args: argparse.Namespace, vocab_size: int, prompt: LengthDist, output: LengthDist) -> Workload:
    rng = np.random.default_rng(args.seed)
    gaps = rng.exponential(1.0 / args.rate_per_s, size=args.num_requests)
    prompt_lens = prompt.sample(rng, args.num_requests)
    output_lens = output.sample(rng, args.num_requests)
    prompts = [rng.integers(0, vocab_size, size=int(n)).tolist() for n in prompt_lens]
    return Workload(np.cumsum(gaps), prompts, [int(n) for n in output_lens])


# ---------------------------------------------------------------------------------------------------------- engine


@dataclasses.dataclass
class Record:
    """What one request did, on the ``time.perf_counter`` clock."""

    index: int
    input_tokens: int
    output_tokens: int  # as requested
    scheduled_s: float
    arrival: float = math.nan  # when add_request was called
    first_received: float = math.nan  # streamed outputs, as the client got them
    last_received: float = math.nan
    streamed: int = 0
    first_scheduled: float = math.nan  # the engine's lifespan[0]
    token_times: list[float] | None = None  # the engine's per-token timestamps
    generated: int = 0
    error: str | None = None
    done: bool = False


def engine_config(args: argparse.Namespace, device: torch.device) -> Any:
    """The ContinuousBatchingConfig asked for (CPU defaults where transformers would size from device memory)."""
    try:
        from transformers import ContinuousBatchingConfig
    except ImportError:
        try:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig
        except ImportError:
            raise SystemExit("this transformers has no ContinuousBatchingConfig: serve_benchmark.py needs its "
                             "continuous batching API (written against transformers 5.24)") from None
    num_blocks = args.num_blocks
    max_batch_tokens = args.max_batch_tokens
    if device.type == "cpu":
        page = args.block_size or 256
        num_blocks = num_blocks or max(1, CPU_KV_TOKENS // page)
        max_batch_tokens = max_batch_tokens or CPU_MAX_BATCH_TOKENS
    kwargs: dict[str, Any] = dict(num_blocks=num_blocks, max_batch_tokens=max_batch_tokens,
                                  max_requests_per_batch=args.max_num_seqs, seed=args.seed,
                                  auto_switch_to_flash=not args.no_flash,
                                  allow_block_sharing=not args.no_prefix_caching)
    if args.block_size:
        kwargs["page_size"] = args.block_size
    if args.memory_fraction is not None:
        kwargs["max_memory_percent"] = args.memory_fraction
    if args.no_cuda_graphs:
        kwargs["use_cuda_graph"] = False
    return ContinuousBatchingConfig(**kwargs)


class _DropPsutilNotice(logging.Filter):
    """transformers logs an error on the CPU when psutil is missing; with the cache sized explicitly it is harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "psutil" not in record.getMessage()


def start_manager(model: Any, args: argparse.Namespace, device: torch.device, workload: Workload) -> Any:
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching import utils as cb_utils

    cb_utils.logger.addFilter(_DropPsutilNotice())
    gen = GenerationConfig(do_sample=False, max_new_tokens=max(workload.outputs), eos_token_id=-1, pad_token_id=0)
    hints = None
    try:
        from transformers.generation.continuous_batching.utils import WorkloadHints

        hints = WorkloadHints(max_prompt_length=max(map(len, workload.prompts)),
                              max_generated_length=max(workload.outputs), num_requests=len(workload.prompts))
    except (ImportError, TypeError):
        pass
    manager = model.init_continuous_batching(generation_config=gen,
                                             continuous_batching_config=engine_config(args, device),
                                             workload_hints=hints)
    if hasattr(manager, "warmup"):
        started = time.perf_counter()
        manager.warmup()  # CUDA graph capture / compile, before anything is timed
        log(f"engine warmed up in {time.perf_counter() - started:.1f}s")
    manager.start()
    return manager


def engine_facts(manager: Any, model: Any) -> dict[str, Any]:
    """What the running engine actually uses: read from its resolved config and its paged cache."""
    cfg = manager.continuous_batching_config
    processor = getattr(manager, "batch_processor", None)
    cache = getattr(processor, "cache", None)
    page = int(getattr(cfg, "page_size", 0) or 0) or None
    num_blocks = getattr(cache, "num_blocks", None)
    use_graph = getattr(cfg, "use_cuda_graph", None)
    return {
        "max_num_seqs": int(cfg.max_requests_per_batch),
        "max_num_batched_tokens": int(getattr(cache, "max_batch_tokens", None) or cfg.max_batch_tokens),
        "block_size": page,
        "kv_cache_num_blocks": int(num_blocks) if num_blocks is not None else None,
        "kv_cache_capacity_tokens": int(num_blocks) * page if num_blocks is not None and page else None,
        "prefix_caching": bool(getattr(cache, "use_prefix_sharing", False)),
        "attention_backend": str(model.config._attn_implementation),
        "scheduler": str(getattr(cfg, "scheduler_type", "fifo")),
        "safety_margin": getattr(getattr(processor, "scheduler", None), "safety_margin", None),
        "use_cuda_graph": list(use_graph) if isinstance(use_graph, tuple) else use_graph,
        "use_async_batching": getattr(cfg, "use_async_batching", None),
        "max_memory_percent": getattr(cfg, "max_memory_percent", None),
    }


def handle(result: Any, records: dict[str, Record], received: float) -> Record | None:
    """Fold one streamed output into its record; the record when the request has finished."""
    rec = records.get(result.request_id)
    if rec is None:  # a warmup request
        return None
    rec.streamed += 1
    if result.generated_tokens and math.isnan(rec.first_received):
        rec.first_received = received
    rec.last_received = received
    if not result.is_finished():
        return None
    rec.done = True
    rec.error = result.error
    rec.generated = len(result.generated_tokens)
    rec.first_scheduled = float(result.lifespan[0]) if result.lifespan[0] > 0 else math.nan
    rec.token_times = list(result.timestamps) if result.timestamps is not None else None
    return rec


def drain(manager: Any, records: dict[str, Record], pending: set[str], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for one output and fold it in."""
    result = manager.get_result(timeout=max(timeout, 0.0))
    received = time.perf_counter()
    if result is None:
        if not manager.is_running():
            raise SystemExit("the continuous batching engine stopped with requests outstanding (see its log above)")
        return
    rec = handle(result, records, received)
    if rec is not None:
        pending.discard(result.request_id)


def warm_up(manager: Any, workload: Workload, count: int, stream: bool) -> None:
    """A few untimed requests first: lazy initialisation and first-call costs stay out of the measurement."""
    if count <= 0:
        return
    ids = set()
    for i in range(count):
        prompt = workload.prompts[i % len(workload.prompts)][::-1]  # not a prefix of a measured prompt
        ids.add(manager.add_request(prompt, request_id=f"warmup-{i}", max_new_tokens=min(4, max(workload.outputs)),
                                    streaming=stream, record_timestamps=True, eos_token_id=-1))
    deadline = time.perf_counter() + 600
    while ids and time.perf_counter() < deadline:
        result = manager.get_result(timeout=0.5)
        if result is None:
            if not manager.is_running():
                raise SystemExit("the continuous batching engine stopped during warmup (see its log above)")
            continue
        if result.is_finished():
            if result.error:
                raise SystemExit(f"warmup request failed: {result.error}")
            ids.discard(result.request_id)


def run_workload(manager: Any, workload: Workload, stream: bool) -> tuple[list[Record], float]:
    """Submit every request at its Poisson arrival time while streaming results back; the records and t0."""
    n = len(workload.prompts)
    records = {f"req-{i}": Record(i, len(workload.prompts[i]), workload.outputs[i], float(workload.scheduled_s[i]))
               for i in range(n)}
    order = list(records.values())
    pending: set[str] = set()
    last_report = 0.0
    t0 = time.perf_counter()
    submitted = 0
    while submitted < n or pending:
        now = time.perf_counter() - t0
        if submitted < n and now >= workload.scheduled_s[submitted]:
            rec = order[submitted]
            rid = f"req-{submitted}"
            rec.arrival = time.perf_counter()
            manager.add_request(workload.prompts[submitted], request_id=rid, max_new_tokens=rec.output_tokens,
                                streaming=stream, record_timestamps=True, eos_token_id=-1)
            pending.add(rid)
            submitted += 1
            continue
        wait = min(workload.scheduled_s[submitted] - now, 0.05) if submitted < n else 0.5
        drain(manager, records, pending, wait)
        if now - last_report >= 2.0 or (submitted == n and not pending):
            last_report = now
            log(f"{now:7.1f}s  submitted {submitted}/{n}  finished {submitted - len(pending)}/{n}")
    return order, t0


# ---------------------------------------------------------------------------------------------------------- output


def request_rows(records: list[Record], t0: float) -> list[dict[str, Any]]:
    """One requests.csv row per request, in arrival order, times relative to the start of the run."""
    rows = []
    for rec in records:
        times = rec.token_times
        engine_clock = times is not None and len(times) == rec.generated and rec.generated > 0
        # A request the engine evicted and re-queued restarts its timestamps and lifespan: its first-token time is
        # then the first streamed output (unknown without streaming), and its first scheduling is lost.
        source = "engine" if engine_clock else "client" if rec.streamed > 1 or rec.generated == 1 else "unknown"
        first = times[0] if engine_clock else rec.first_received  # type: ignore[index]
        last = times[-1] if engine_clock else rec.last_received  # type: ignore[index]
        ttft = first - rec.arrival if source != "unknown" else None
        e2e = last - rec.arrival
        tpot = (e2e - ttft) / (rec.generated - 1) if rec.generated > 1 and ttft is not None else None
        queue = rec.first_scheduled - rec.arrival if engine_clock and not math.isnan(rec.first_scheduled) else None
        rows.append({
            "request_id": rec.index, "arrival_s": rec.arrival - t0, "input_tokens": rec.input_tokens,
            "output_tokens": rec.generated, "queue_s": queue, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
            "prefill_s": first - rec.first_scheduled if queue is not None else None,
            "decode_s": last - first if ttft is not None else None, "scheduled_arrival_s": rec.scheduled_s,
            "client_ttft_s": rec.first_received - rec.arrival if rec.streamed > 1 or rec.generated == 1 else None,
            "client_e2e_s": rec.last_received - rec.arrival, "time_source": source,
        })
    return rows


COLUMNS = ["request_id", "arrival_s", "input_tokens", "output_tokens", "queue_s", "ttft_s", "tpot_s", "e2e_s",
           "prefill_s", "decode_s", "scheduled_arrival_s", "client_ttft_s", "client_e2e_s", "time_source"]


def write_requests(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                             for k, v in row.items()})


def stats(values: Sequence[float | None], extra: bool = True) -> dict[str, float | None]:
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(x):
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    out = {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p90": float(np.percentile(x, 90)),
           "p99": float(np.percentile(x, 99))}
    if extra:
        out["max"] = float(x.max())
    return {k: round(v, 6) for k, v in out.items()}


def measured_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ends = [r["arrival_s"] + r["e2e_s"] for r in rows]
    makespan = max(ends) - min(r["arrival_s"] for r in rows)
    out_tokens = sum(r["output_tokens"] for r in rows)
    return {
        "num_requests": len(rows), "makespan_s": round(makespan, 6),
        "request_throughput_rps": round(len(rows) / makespan, 4) if makespan > 0 else None,
        "output_throughput_tok_s": round(out_tokens / makespan, 2) if makespan > 0 else None,
        "input_tokens": stats([r["input_tokens"] for r in rows]),
        "output_tokens": stats([r["output_tokens"] for r in rows]),
        **{m: stats([r[m] for r in rows]) for m in ("ttft_s", "tpot_s", "e2e_s", "queue_s")},
        "client_ttft_s": stats([r["client_ttft_s"] for r in rows]),
        "max_arrival_lag_s": round(max(r["arrival_s"] - r["scheduled_arrival_s"] for r in rows), 6),
        "note": "computed from requests.csv (percentiles: linear interpolation); tpot_s over requests with "
                "output_tokens > 1",
    }


def gpu_datasheet(device: torch.device, total_memory: int) -> tuple[str, dict[str, Any]]:
    """(device name, the gpu_datasheet block): known figures by name, nominal placeholders otherwise."""
    if device.type != "cuda":
        name = f"CPU ({platform.processor() or platform.machine() or 'unknown'})"
        return name, {"name": name, "memory_bytes": float(total_memory),
                      "hbm_bandwidth_bytes_per_s": NOMINAL_HBM_BYTES_PER_S,
                      "bf16_dense_flops_per_s": NOMINAL_FLOPS_PER_S,
                      "note": "run on the CPU: memory is the machine's RAM; bandwidth and FLOP/s are nominal "
                              "placeholders, not a datasheet (simulated times will not match the CPU)"}
    name = torch.cuda.get_device_name(device)
    key = name.upper().replace("-", " ")
    for markers, sheet_name, memory, hbm, flops in GPU_DATASHEETS:
        if all(m in key for m in markers):
            return name, {"name": sheet_name, "memory_bytes": memory, "hbm_bandwidth_bytes_per_s": hbm,
                          "bf16_dense_flops_per_s": flops,
                          "note": f"datasheet figures (dense bf16) matched on the device name {name!r}"}
    return name, {"name": name, "memory_bytes": float(total_memory),
                  "hbm_bandwidth_bytes_per_s": NOMINAL_HBM_BYTES_PER_S, "bf16_dense_flops_per_s": NOMINAL_FLOPS_PER_S,
                  "note": "unknown GPU: memory as torch reports it; bandwidth and FLOP/s are nominal placeholders; "
                          "edit them to the datasheet before replaying"}


def experiment(args: argparse.Namespace, out: Path, spec: Any, model: torch.nn.Module, device: torch.device,
               dtype: torch.dtype, facts: dict[str, Any], rows: list[dict[str, Any]], prompt: LengthDist,
               output: LengthDist, harness: ModuleType) -> dict[str, Any]:
    import transformers

    config = spec.config
    total_memory = int(harness.memory_bytes(device))
    device_name, sheet = gpu_datasheet(device, total_memory)
    preempted = sum(r["time_source"] != "engine" for r in rows)
    unknown = sum(r["time_source"] == "unknown" for r in rows)
    caveats = [
        "Random weights and random prompt token ids (timing does not depend on their values); outputs are pinned, "
        "EOS disabled.",
        "transformers' continuous batching is not vLLM: its scheduler (FIFO with a cache safety margin, chunked "
        "prefill by the token budget), its paged attention kernels and its per-step host overhead differ.",
        "max_num_seqs is transformers' max_requests_per_batch; max_num_batched_tokens its max_batch_tokens; "
        "block_size its page_size.",
    ]
    if device.type == "cpu":
        caveats.append("Run on the CPU: a smoke test of the pipeline, not a measurement of a GPU.")
    if preempted:
        caveats.append(f"{preempted} request(s) were evicted and re-queued by the engine: their times come from the "
                       "client's streamed outputs (time_source = client) and their queue_s and prefill_s are "
                       "empty.")
    if unknown:
        caveats.append(f"{unknown} re-queued request(s) ran without streaming: their ttft_s and tpot_s are unknown "
                       "(empty).")
    return {
        "id": args.id or out.name,
        "source": {"tool": TOOL, "command": shlex.join(["python", "calibration/serve_benchmark.py", *args.argv]),
                   "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
        "hardware": {"gpu": device_name, "num_gpus": 1, "device": device.type,
                     "device_total_memory_bytes": total_memory,
                     "cpu_threads": torch.get_num_threads() if device.type == "cpu" else None},
        "engine": {
            "name": ENGINE, "version": str(transformers.__version__), "torch_version": str(torch.__version__),
            "model": spec.name, "tensor_parallel_size": 1, "data_parallel_size": 1,
            "max_num_seqs": facts["max_num_seqs"], "max_num_batched_tokens": facts["max_num_batched_tokens"],
            "max_model_len": None, "dtype": str(dtype).removeprefix("torch."), "chunked_prefill": True,
            "prefix_caching": facts["prefix_caching"], "block_size": facts["block_size"],
            "kv_cache_num_blocks": facts["kv_cache_num_blocks"],
            "kv_cache_capacity_tokens": facts["kv_cache_capacity_tokens"],
            "attention_backend": facts["attention_backend"], "scheduler": facts["scheduler"],
            "scheduler_safety_margin": facts["safety_margin"], "use_cuda_graph": facts["use_cuda_graph"],
            "use_async_batching": facts["use_async_batching"], "max_memory_percent": facts["max_memory_percent"],
            "streaming": not args.no_stream,
            "note": "values read back from the engine's resolved ContinuousBatchingConfig and its PagedAttentionCache "
                    "(kv_cache_capacity_tokens = allocated blocks x page size)",
        },
        "workload": {
            "description": f"Poisson arrivals at {args.rate_per_s} req/s, {args.num_requests} requests, random prompt "
                           "token ids, output lengths pinned (max_new_tokens, EOS disabled)",
            "rate": args.rate_per_s, "seed": args.seed, "num_requests": args.num_requests,
            "warmup_requests": args.warmup_requests,
            "distributions": {"arrival": "Poisson (exponential gaps)", "prompt_tokens": prompt.describe(),
                              "output_tokens": output.describe()},
            "arrival_s": "when the request was handed to the engine (add_request), from the start of the run: replay "
                         "this; scheduled_arrival_s is the drawn Poisson time",
        },
        "metrics_definition": {
            "ttft_s": "engine timestamp of the first generated token - arrival_s (time.perf_counter, same process)",
            "tpot_s": "(last token timestamp - first token timestamp) / (output_tokens - 1); empty when 1 token",
            "e2e_s": "engine timestamp of the last generated token - arrival_s",
            "queue_s": "first scheduled (the engine's lifespan start) - arrival_s",
            "prefill_s": "first scheduled to first token", "decode_s": "first token to last token",
            "client_ttft_s": "first streamed output received by the client - arrival_s",
            "client_e2e_s": "final output received by the client - arrival_s",
            "time_source": "engine: per-token engine timestamps; client: streamed receipt times (a request the engine "
                           "re-queued loses its earlier timestamps); unknown: re-queued and not streamed",
        },
        "caveats": caveats,
        "measured_summary": measured_summary(rows),
        "model_architecture": {
            "num_layers": int(config["num_hidden_layers"]), "hidden_size": int(config["hidden_size"]),
            "num_attention_heads": spec.num_heads, "num_kv_heads": spec.num_kv_heads, "head_dim": spec.head_dim,
            "intermediate_size": int(config["intermediate_size"]), "vocab_size": int(config["vocab_size"]),
            "max_position_embeddings": int(config.get("max_position_embeddings") or 0) or None,
            "num_params": int(harness.count_params(model)),
            "bytes_per_param": torch.tensor([], dtype=dtype).element_size(),
            "source": "the config the benchmark built (random weights); num_params counted from the module",
        },
        "gpu_datasheet": sheet,
    }


# ------------------------------------------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str], models: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", choices=sorted(models), default=None, help="a built-in model config (default tiny)")
    source.add_argument("--config", help="path to a Hugging Face config.json (llama or qwen2 architecture)")
    parser.add_argument("--out", required=True, help="experiment folder to write")
    parser.add_argument("--id", help="experiment id (default: the folder name)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda if available")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--attn-implementation", default="sdpa",
                        help="sdpa, eager (run as paged|eager) or a flash implementation; with sdpa or eager "
                             "transformers switches to flash attention when it is installed, unless --no-flash")
    parser.add_argument("--no-flash", action="store_true", help="do not let transformers switch to flash attention")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--rate-per-s", type=float, default=4.0, help="Poisson arrival rate")
    parser.add_argument("--prompt-tokens", type=float, default=512, help="mean prompt length")
    parser.add_argument("--output-tokens", type=float, default=128, help="mean output length")
    parser.add_argument("--dist", choices=("lognormal", "uniform", "fixed"), default="lognormal",
                        help="length distribution of prompts and outputs")
    parser.add_argument("--cv", type=float, default=0.5,
                        help="coefficient of variation of the lengths (uniform: mean +- sqrt(3) cv mean)")
    parser.add_argument("--prompt-range", type=int, nargs=2, metavar=("LOW", "HIGH"),
                        help="uniform prompt lengths in [LOW, HIGH] (overrides --prompt-tokens/--dist)")
    parser.add_argument("--output-range", type=int, nargs=2, metavar=("LOW", "HIGH"),
                        help="uniform output lengths in [LOW, HIGH] (overrides --output-tokens/--dist)")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="most requests in one batch")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help=f"token budget of one step (default: engine-sized on CUDA, {CPU_MAX_BATCH_TOKENS} on CPU)")
    parser.add_argument("--block-size", type=int, default=None, help="KV page size in tokens (default: engine's, 256)")
    parser.add_argument("--num-blocks", type=int, default=None,
                        help=f"KV cache size in pages (default: engine-sized from free memory on CUDA, "
                             f"{CPU_KV_TOKENS} tokens on CPU)")
    parser.add_argument("--memory-fraction", type=float, default=None,
                        help="share of free GPU memory the engine may use for the cache (engine default 0.9)")
    parser.add_argument("--no-prefix-caching", action="store_true", help="disable block sharing")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument("--no-stream", action="store_true",
                        help="outputs only at the end of each request (times then from the engine timestamps only)")
    parser.add_argument("--warmup-requests", type=int, default=2, help="untimed requests before the run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(list(argv))
    if args.model is None and args.config is None:
        args.model = "tiny"
    if args.num_requests < 1 or args.rate_per_s <= 0 or args.prompt_tokens < 1 or args.output_tokens < 1:
        parser.error("--num-requests, --rate-per-s, --prompt-tokens and --output-tokens must be positive")
    for name in ("prompt_range", "output_range"):
        rng = getattr(args, name)
        if rng is not None and not 1 <= rng[0] <= rng[1]:
            parser.error(f"--{name.replace('_', '-')} needs 1 <= LOW <= HIGH")
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    harness = load_profile_module()
    args = parse_args(sys.argv[1:] if argv is None else argv, list(harness.MODELS))
    started = time.perf_counter()
    device = harness.resolve_device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(args.seed)
    name, family, kwargs = harness.load_config(args.model, args.config)
    spec = harness.shard_config(name, family, kwargs, None, 1)
    model = harness.build_model(spec, device, dtype)
    if args.attn_implementation != "sdpa":
        model.set_attn_implementation(args.attn_implementation)
    limit = int(spec.config.get("max_position_embeddings") or 4096)
    prompt = length_dist(args.dist, args.prompt_tokens, args.cv, args.prompt_range, limit // 2)
    output = length_dist(args.dist, args.output_tokens, args.cv, args.output_range, limit // 2)
    workload = make_workload(args, int(spec.config["vocab_size"]), prompt, output)
    log(f"{spec.name} on {device.type} ({str(dtype).removeprefix('torch.')}), {args.num_requests} requests at "
        f"{args.rate_per_s}/s, mean prompt {np.mean([len(p) for p in workload.prompts]):.0f} and output "
        f"{np.mean(workload.outputs):.0f} tokens")
    stream = not args.no_stream
    with torch.inference_mode():
        manager = start_manager(model, args, device, workload)
        try:
            warm_up(manager, workload, args.warmup_requests, stream)
            facts = engine_facts(manager, model)
            log(f"engine: {facts['attention_backend']}, KV {facts['kv_cache_num_blocks']} blocks x "
                f"{facts['block_size']} tokens, max {facts['max_num_seqs']} seqs / {facts['max_num_batched_tokens']} "
                f"tokens per step, prefix caching {facts['prefix_caching']}")
            records, t0 = run_workload(manager, workload, stream)
        finally:
            manager.stop(block=True, timeout=60)
            if hasattr(manager, "destroy"):
                manager.destroy()
    failed = [r for r in records if r.error or r.generated != r.output_tokens]
    if failed:
        first = failed[0]
        raise SystemExit(f"{len(failed)} request(s) did not generate their pinned length (e.g. request {first.index}: "
                         f"{first.generated} of {first.output_tokens} tokens, error {first.error!r})")
    rows = request_rows(records, t0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_requests(out / "requests.csv", rows)
    meta = experiment(args, out, spec, model, device, dtype, facts, rows, prompt, output, harness)
    (out / "experiment.json").write_text(json.dumps(meta, indent=2) + "\n")
    summary = meta["measured_summary"]
    print(f"{meta['id']}: {len(rows)} requests in {summary['makespan_s']:.2f}s on {meta['hardware']['gpu']} "
          f"({ENGINE} {meta['engine']['version']}, {facts['attention_backend']}); "
          f"wall {time.perf_counter() - started:.1f}s")
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        s = summary[metric]
        if s["mean"] is not None:
            print(f"  {metric:<7} mean {s['mean'] * 1e3:9.2f} ms  p50 {s['p50'] * 1e3:9.2f}  "
                  f"p90 {s['p90'] * 1e3:9.2f}  p99 {s['p99'] * 1e3:9.2f}")
    print(f"  wrote {out}/requests.csv, experiment.json")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
