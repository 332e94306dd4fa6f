"""Speed benchmark of the simserve engine: wall time and simulated events of a busy reasoning cluster.

What it measures (see docs/performance.md for recorded figures):

1. For each size in --requests: wall time of simserve.run (time.perf_counter around it), requests per wall
   second, simulated events (summary["num_events"], summary["events_per_request"]) and output tokens simulated.
2. For each size up to --exact-steps-up-to: the same run with engine.exact_steps=true (one event per step), the
   speed-up of fast-forwarding and the largest relative difference of per-request first_token_s and finish_s
   between the two modes (they should agree exactly).
3. Events per request against mean output length: --length-requests requests at each of --length-means output
   tokens, at --length-rates (one per mean) or, by default, at --rate x 4000 / mean (equal offered tokens/s,
   which overloads the cluster at long outputs; the recorded run uses --length-rates 28 7 0.3).

The process is pinned to one core (os.sched_setaffinity(0, {core})) unless --no-pin; the target is 100k
requests in under 20 s on one core of a 2-core machine (--target-s, checked at --target-requests).

    python bench/bench_core.py --requests 10000 100000 --repeat 3 --exact-steps-up-to 10000 \
        --length-requests 5000 --length-means 1000 4000 16000 --length-rates 28 7 0.3 --out /tmp/bench_results.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import sys
import time
from typing import Any

import numpy as np

import simserve

ANSWER_TOKENS = 150  # constant answer after the reasoning
BASE_MEAN_OUTPUT = 4000  # the rate given by --rate is for this mean output length


def scenario_dict(num_requests: int, rate_per_s: float, mean_output: float = BASE_MEAN_OUTPUT, *,
                  exact_steps: bool = False, seed: int = 1, replicas: int = 8,
                  perf: str = "roofline") -> dict[str, Any]:
    """The benchmark scenario: a reasoning workload on `replicas` x llama-3.1-8b / h100-sxm (roofline perf, or
    the calibrated op-level model with --perf calibrated)."""
    reasoning_mean = mean_output - ANSWER_TOKENS
    if reasoning_mean <= 0:
        raise ValueError(f"mean output {mean_output} must exceed the {ANSWER_TOKENS}-token answer")
    return {
        "name": f"bench-{num_requests}",
        "seed": seed,
        "model": "llama-3.1-8b",
        "cluster": {"pools": [{
            "name": "main", "gpu": "h100-sxm", "replicas": replicas, "tensor_parallel": 1,
            "max_num_seqs": 256, "max_num_batched_tokens": 8192,
        }]},
        "perf": {"kind": perf},
        "workload": {
            "num_requests": num_requests,
            "arrival": {"process": "poisson", "rate_per_s": rate_per_s},
            "mix": [{
                "query_type": "reasoning",
                "prompt_tokens": {"dist": "lognormal", "mean": 300, "cv": 0.5},
                "reasoning_tokens": {"dist": "lognormal", "mean": reasoning_mean, "cv": 0.8},
                "answer_tokens": {"dist": "constant", "value": ANSWER_TOKENS},
            }],
        },
        "slo": {"ttft_s": 2.0, "tpot_s": 0.08, "e2e_s": 600},
        "engine": {"exact_steps": exact_steps},
    }


def timed_run(data: dict[str, Any]) -> tuple[float, simserve.Results]:
    scenario = simserve.parse_scenario(data, source="bench")
    gc.collect()
    t0 = time.perf_counter()
    results = simserve.run(scenario)
    wall = time.perf_counter() - t0
    return wall, results


def figures(wall: float, res: simserve.Results) -> dict[str, Any]:
    s = res.summary
    n = int(s["num_requests"])
    return {
        "num_requests": n,
        "wall_s": wall,
        "requests_per_wall_s": n / wall,
        "num_events": int(s["num_events"]),
        "events_per_request": float(s["events_per_request"]),
        "output_tokens": int(s["output_tokens"]),
        "output_tokens_per_wall_s": s["output_tokens"] / wall,
        "num_completed": int(s["num_completed"]),
        "num_unfinished": int(s["num_unfinished"]),
        "num_rejected": int(s["num_rejected"]),
        "num_preemptions": int(s["num_preemptions"]),
        "goodput": float(s["goodput"]),
        "batch_size_mean": float(s["batch_size_mean"]),
        "queue_len_mean": float(s["queue_len_mean"]),
        "kv_utilization_mean": float(s["kv_utilization_mean"]),
        "ttft_s_p99": float(s["ttft_s_p99"]),
        "tpot_s_p99": float(s["tpot_s_p99"]),
        "makespan_s": float(s["makespan_s"]),
        "simulated_s_per_wall_s": float(s["makespan_s"]) / wall,
    }


def compare(fast: simserve.Results, exact: simserve.Results) -> dict[str, Any]:
    """Per-request agreement of the two modes (rows sorted by request_id in both)."""
    a = fast.requests.sort_values("request_id", ignore_index=True)
    b = exact.requests.sort_values("request_id", ignore_index=True)
    out: dict[str, Any] = {"same_request_ids": bool(np.array_equal(a["request_id"], b["request_id"]))}
    if not out["same_request_ids"]:
        return out
    out["same_status"] = bool((a["status"] == b["status"]).all())
    out["same_generated_tokens"] = bool(np.array_equal(a["generated_tokens"], b["generated_tokens"]))
    out["same_num_preemptions"] = bool(np.array_equal(a["num_preemptions"], b["num_preemptions"]))
    for col in ("first_token_s", "finish_s"):
        x, y = a[col].to_numpy(float), b[col].to_numpy(float)
        both_nan = np.isnan(x) & np.isnan(y)
        one_nan = np.isnan(x) ^ np.isnan(y)
        diff = np.where(both_nan, 0.0, np.abs(x - y))
        rel = np.where(both_nan, 0.0, diff / np.maximum(np.abs(y), 1e-300))
        out[f"{col}_nan_mismatches"] = int(one_nan.sum())
        out[f"{col}_max_abs_diff_s"] = float(np.nanmax(diff)) if len(diff) else 0.0
        out[f"{col}_max_rel_diff"] = float(np.nanmax(rel)) if len(rel) else 0.0
        out[f"{col}_num_different"] = int((diff > 0).sum() + one_nan.sum())
    return out


def machine_info(pinned: set[int] | None) -> dict[str, Any]:
    import pandas
    import simpy

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pandas": pandas.__version__,
        "simpy": simpy.__version__,
        "simserve": simserve.__version__,
        "pinned_to_cpus": sorted(pinned) if pinned is not None else None,
    }


def fmt_row(label: str, f: dict[str, Any]) -> str:
    return (f"{label:<28} {f['num_requests']:>8} {f['wall_s']:>9.2f} {f['requests_per_wall_s']:>10.0f} "
            f"{f['num_events']:>10} {f['events_per_request']:>7.2f} {f['output_tokens']:>13} "
            f"{f['num_unfinished']:>5} {f['goodput']:>7.3f} {f['batch_size_mean']:>6.1f} {f['num_preemptions']:>7}")


HEADER = (f"{'run':<28} {'requests':>8} {'wall_s':>9} {'req/wall_s':>10} {'events':>10} {'ev/req':>7} "
          f"{'output_tokens':>13} {'unfin':>5} {'goodput':>7} {'batch':>6} {'preempt':>7}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, nargs="*", default=[10000, 100000],
                   help="sizes to time in fast-forward mode (default: 10000 100000; none: skip)")
    p.add_argument("--rate", type=float, default=7.0,
                   help="Poisson arrivals per second at 4,000 mean output tokens (default 7.0: busy, stable)")
    p.add_argument("--exact-steps-up-to", type=int, default=10000, metavar="N",
                   help="also run sizes <= N with engine.exact_steps=true and compare (0: skip; default 10000)")
    p.add_argument("--exact-requests", type=int, nargs="*", default=None, metavar="N",
                   help="sizes for the exact-steps comparison (default: those of --requests <= --exact-steps-up-to)")
    p.add_argument("--length-requests", type=int, default=5000,
                   help="requests per run of the events-vs-output-length sweep (0: skip; default 5000)")
    p.add_argument("--length-means", type=float, nargs="*", default=[1000, 4000, 16000],
                   help="mean output tokens of the sweep (rate scaled by 4000/mean; default 1000 4000 16000)")
    p.add_argument("--length-rates", type=float, nargs="*", default=None,
                   help="explicit arrival rate for each of --length-means (default: --rate x 4000 / mean, which "
                        "keeps offered tokens/s equal but overloads the cluster at long outputs: attention cost "
                        "and KV footprint per token grow with context)")
    p.add_argument("--repeat", type=int, default=1, help="time each fast-forward size this many times (best kept)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--perf", choices=["roofline", "calibrated"], default="roofline", help="step-time model")
    p.add_argument("--cpu", type=int, default=0, help="core to pin to (default 0)")
    p.add_argument("--no-pin", action="store_true", help="do not pin the process to one core")
    p.add_argument("--target-s", type=float, default=20.0, help="wall-time target (default 20 s) ...")
    p.add_argument("--target-requests", type=int, default=100000, help="... for this many requests (default 100k)")
    p.add_argument("--out", metavar="FILE.json", help="write all figures here as JSON")
    args = p.parse_args(argv)
    if args.length_rates is not None and len(args.length_rates) != len(args.length_means):
        p.error("--length-rates needs one rate per --length-means value")

    pinned: set[int] | None = None
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
        pinned = os.sched_getaffinity(0)
    info = machine_info(pinned)
    print(f"# {info['cpu_model']}, nproc {info['nproc']}, pinned to {info['pinned_to_cpus']}; Python "
          f"{info['python']}, numpy {info['numpy']}, simpy {info['simpy']}, pandas {info['pandas']}")
    print(f"# rate {args.rate}/s at {BASE_MEAN_OUTPUT} mean output tokens, seed {args.seed}")
    report: dict[str, Any] = {"machine": info, "argv": sys.argv if argv is None else argv,
                              "rate_per_s": args.rate, "seed": args.seed,
                              "scenario": scenario_dict(1, args.rate, seed=args.seed, perf=args.perf),
                              "fast_forward": [], "exact_steps": [], "length_sweep": []}
    report["scenario"]["workload"]["num_requests"] = "varies"
    print(HEADER, flush=True)

    fast_by_size: dict[int, dict[str, Any]] = {}
    for n in args.requests:
        best: dict[str, Any] | None = None
        walls = []
        for _ in range(max(1, args.repeat)):
            wall, res = timed_run(scenario_dict(n, args.rate, seed=args.seed, perf=args.perf))
            f = figures(wall, res)
            walls.append(wall)
            if best is None or wall < best["wall_s"]:
                best = f
            del res
        assert best is not None
        best["wall_s_all"] = walls
        best["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        fast_by_size[n] = best
        report["fast_forward"].append(best)
        print(fmt_row("fast-forward", best), flush=True)

    exact_sizes = args.exact_requests
    if exact_sizes is None:
        exact_sizes = [n for n in args.requests if n <= args.exact_steps_up_to]
    for n in exact_sizes:
        wall_f, res_f = timed_run(scenario_dict(n, args.rate, seed=args.seed, perf=args.perf))
        wall_e, res_e = timed_run(scenario_dict(n, args.rate, seed=args.seed, exact_steps=True, perf=args.perf))
        ff, fe = figures(wall_f, res_f), figures(wall_e, res_e)
        cmp = compare(res_f, res_e)
        entry = {"num_requests": n, "fast_forward": ff, "exact": fe, "agreement": cmp,
                 "speedup_wall": wall_e / wall_f, "event_ratio": fe["num_events"] / ff["num_events"]}
        report["exact_steps"].append(entry)
        print(fmt_row("fast-forward (paired)", ff))
        print(fmt_row("exact_steps=true", fe))
        print(f"  speed-up {entry['speedup_wall']:.1f}x wall, {entry['event_ratio']:.1f}x events; "
              f"max rel diff first_token_s {cmp.get('first_token_s_max_rel_diff', math.nan):.3g}, "
              f"finish_s {cmp.get('finish_s_max_rel_diff', math.nan):.3g}; "
              f"requests differing: first_token_s {cmp.get('first_token_s_num_different', '?')}, "
              f"finish_s {cmp.get('finish_s_num_different', '?')}; same status {cmp.get('same_status')}, "
              f"same generated tokens {cmp.get('same_generated_tokens')}, "
              f"same preemptions {cmp.get('same_num_preemptions')}", flush=True)
        del res_f, res_e

    if args.length_requests > 0:
        for i, mean in enumerate(args.length_means):
            rate = args.length_rates[i] if args.length_rates is not None else args.rate * BASE_MEAN_OUTPUT / mean
            wall, res = timed_run(scenario_dict(args.length_requests, rate, mean, seed=args.seed, perf=args.perf))
            f = figures(wall, res)
            f["mean_output_target"] = mean
            f["rate_per_s"] = rate
            f["output_tokens_per_request"] = f["output_tokens"] / f["num_requests"]
            f["offered_output_tokens_per_s"] = rate * mean
            report["length_sweep"].append(f)
            print(fmt_row(f"mean output {mean:g} @ {rate:g}/s", f), flush=True)
            del res

    target = fast_by_size.get(args.target_requests)
    if target is not None:
        met = target["wall_s"] < args.target_s
        report["target"] = {"requests": args.target_requests, "limit_s": args.target_s,
                            "wall_s": target["wall_s"], "met": met, "pinned_to_one_core": pinned is not None
                            and len(pinned) == 1}
        print(f"# target: {args.target_requests} requests in < {args.target_s:g} s on one core: "
              f"{target['wall_s']:.2f} s -> {'MET' if met else 'NOT MET'}")

    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
