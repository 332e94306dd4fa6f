"""Network effects of reasoning-trace reuse (issue 18, seeds 000 and 001), on scenarios/network-effects.yaml: USD per
query and per correct answer against users (1k to 10M), one provider against k fragments on the same traffic, a
new provider's cold start, cache capacity, time to live, location and minting variants, and the sensitivity of the
conclusion to the Zipf exponent, the step-reuse share and the false-hit rate.

    python bench/network_effects.py --out docs/data/network-effects.json --charts docs/images   # about 30 min, 2 cores
    python bench/network_effects.py --tables docs/data/network-effects.json                     # the tables again

Traffic follows users: 0.1 queries per user per day (the scenario's rate_per_user_per_s), one served day after a
week of history (`reuse_history_s`), diurnal arrivals. The fleet is sized to each point's peak rate, ceil(peak / 8
queries/s) replicas of 1 x H100, at least 1 (one replica holds about 9/s of this traffic within the SLO).

Costs per query: `fleet` prices what is provisioned (GPU-hours x price, plus minting and cache), so a small provider
pays for an idle GPU; `work` prices only the tokens generated, at the GPU USD per generated token of the best-used
fleet measured (the 10M-user run without reuse), plus minting and cache: the cost of a fleet sized to the work,
which isolates what reuse saves from what utilisation saves. Every run is seeded: the tables are deterministic.
Runs are cached in .cache/network-effects/ by their resolved scenario (delete it, or --fresh, after a model change).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIO = ROOT / "scenarios" / "network-effects.yaml"
CACHE = ROOT / ".cache" / "network-effects"
DAY_S = 86_400.0
RATE_PER_USER_PER_DAY = 0.1
AMPLITUDE = 0.5
PER_REPLICA_PEAK_PER_S = 8.0
USERS = (1_000, 10_000, 100_000, 1_000_000, 10_000_000)
K = 10
FRAGMENT_AT = (100_000, 1_000_000)
FRAGMENT_AT_FULL = (100_000, 1_000_000, 10_000_000)
COLD_START = (100_000, 1_000_000)
COLD_DAYS = 7
SENSITIVITY_USERS = 100_000
SENSITIVITY = {  # parameter: (override key, values; the scenario's own value is the middle one)
    "Zipf exponent": ("workload.mix.0.concepts.zipf_exponent", (0.6, 0.8, 1.0)),
    "step-reuse share": ("workload.trace_cache.step_reuse_share", (0.1, 0.35, 0.6)),
    "false-hit rate": ("workload.trace_cache.false_hit_rate", (0.01, 0.05, 0.2)),
}
VARIANT_USERS = 1_000_000
VARIANTS = {  # label: overrides on the scenario at VARIANT_USERS
    "as shipped (semantic + step fallback, minting)": [],
    "no reuse": ["workload.trace_cache=null", "workload.minting=null", "workload.reuse_history_s=null"],
    "cache only (no minting)": ["workload.minting=null"],
    "minting only (no cache)": ["workload.trace_cache=null"],
    "exact cache (no false hits), no step fallback": ["workload.trace_cache.kind=exact",
                                                      "workload.trace_cache.step_fallback=false"],
    "capacity 10k traces": ["workload.trace_cache.capacity_entries=10000"],
    "capacity 100k traces, LFU": ["workload.trace_cache.capacity_entries=100000",
                                  "workload.trace_cache.eviction=lfu"],
    "time to live 1 day": ["workload.trace_cache.ttl_s=86400"],
    "remote index (30 ms, 1.7e-5 USD a lookup)": ["workload.trace_cache.location=remote"],
    "4 replicas, one cluster-wide cache": ["cluster.pools.0.replicas=4"],
    "4 replicas, a cache per replica": ["cluster.pools.0.replicas=4", "workload.trace_cache.scope=replica"],
    "minted 50 -> 10 (compression 0.2), 5-point penalty": ["workload.minting.compression=0.2",
                                                           "workload.minting.accuracy_penalty=0.05"],
    "no history (cold cache)": ["workload.reuse_history_s=null"],
}
NO_REUSE = VARIANTS["no reuse"]
CACHE_ONLY = VARIANTS["cache only (no minting)"]
CONFIGS = {"plain": ("none", NO_REUSE), "cache": ("cache only", CACHE_ONLY), "reuse": ("cache + minting", [])}
RESIZED_USERS = 10_000_000  # the largest point again with its fleet resized to the reuse load


def replicas(users: int) -> int:
    peak_per_s = users * RATE_PER_USER_PER_DAY / DAY_S * (1 + AMPLITUDE)
    return max(1, math.ceil(peak_per_s / PER_REPLICA_PEAK_PER_S))


def scaled(users: int, extra: list[str] | tuple[str, ...] = (), seed: int | None = None) -> list[str]:
    ov = [f"workload.num_users={users}", f"cluster.pools.0.replicas={replicas(users)}"]
    return ov + ([f"seed={seed}"] if seed is not None else []) + list(extra)


# ------------------------------------------------------------------------------------------ running, cached

KEEP = ("num_requests", "num_completed", "num_answered", "num_correct", "accuracy", "output_tokens",
        "reasoning_tokens_spent", "gpu_hours", "cost_usd", "gpu_busy_share", "time_to_answer_s_p99", "ttft_s_p99",
        "saturated", "trace_cache_hit_ratio", "trace_cache_lookups", "trace_cache_hits", "trace_cache_false_hits",
        "step_fallback_hits", "step_found_share_mean", "minted_requests", "minted_patterns", "minting_cost_usd",
        "trace_cache_lookup_cost_usd", "trace_cache_storage_cost_usd", "trace_cache_break_even_hit_ratio",
        "trace_cache_entries", "reused_reasoning_tokens", "reuse_history_requests", "reuse_history_hit_ratio",
        "revenue_usd", "margin_usd", "billed_output_tokens", "gpu_usd_per_generated_token")


REVENUE = ("revenue_usd", "margin_usd", "billed_output_tokens")


def _key(overrides: list[str], days: bool) -> str:
    from simserve import load_scenario

    text = load_scenario(SCENARIO, overrides).to_yaml() + f"\nby_day={days}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _simulate(job: tuple[list[str], bool]) -> dict[str, Any]:
    """One run: the summary's figures kept, and with `days` the hit ratio, reasoning and cost per served day."""
    from simserve import load_scenario, run

    overrides, days = job
    res = run(load_scenario(SCENARIO, overrides))
    s = res.summary
    out: dict[str, Any] = {k: (float(s[k]) if isinstance(s[k], int | float) and not isinstance(s[k], bool)
                               else s[k]) for k in KEEP if k in s}
    if days:
        df = res.requests
        df = df[df["status"] == "completed"]
        day = (df["arrival_s"] // DAY_S).astype(int)
        g = df.assign(day=day, hit=df["reuse"] != "none", whole=df["reuse"].isin(["exact", "semantic",
                                                                                  "semantic_false"]))
        by = g.groupby("day")
        out["by_day"] = [{"day": int(d), "queries": int(len(x)), "reuse_share": float(x["hit"].mean()),
                          "whole_hit_share": float(x["whole"].mean()),
                          "reasoning_per_query": float(x["reasoning_tokens_spent"].mean()),
                          "generated_per_query": float(x["generated_tokens"].mean()),
                          "accuracy": float(x["correct"].mean())} for d, x in by]
    return out


def run_all(jobs: list[tuple[list[str], bool]], workers: int, fresh: bool) -> list[dict[str, Any]]:
    CACHE.mkdir(parents=True, exist_ok=True)
    keys = [_key(ov, d) for ov, d in jobs]
    todo = [i for i, k in enumerate(keys) if fresh or not (CACHE / f"{k}.json").exists()]
    print(f"# {len(jobs)} runs, {len(todo)} to simulate ({len(jobs) - len(todo)} cached)", file=sys.stderr)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for n, (i, out) in enumerate(zip(todo, pool.map(_simulate, [jobs[i] for i in todo]), strict=True), 1):
            (CACHE / f"{keys[i]}.json").write_text(json.dumps(out))
            print(f"# done {n}/{len(todo)}: {' '.join(jobs[i][0])}", file=sys.stderr, flush=True)
    return [json.loads((CACHE / f"{k}.json").read_text()) for k in keys]


# ------------------------------------------------------------------------------------------ the study


def plan(full: bool, resized: bool = True) -> dict[str, tuple[list[str], bool]]:
    """Every run the study needs, by name."""
    jobs: dict[str, tuple[list[str], bool]] = {}
    for u in USERS:
        for kind, (_, extra) in CONFIGS.items():
            jobs[f"{kind}/{u}"] = (scaled(u, extra), False)
    if resized:
        jobs[f"resized/{RESIZED_USERS}"] = (scaled(RESIZED_USERS, ["cluster.pools.0.replicas=1"]), False)
    for u in (FRAGMENT_AT_FULL if full else FRAGMENT_AT):
        for i in range(K):
            jobs[f"fragment/{u}/{i}"] = (scaled(u // K, seed=1000 + i), False)
            jobs[f"fragment-cache/{u}/{i}"] = (scaled(u // K, CACHE_ONLY, seed=1000 + i), False)
    for u in COLD_START:
        jobs[f"cold/{u}"] = (scaled(u, ["workload.reuse_history_s=null", f"workload.duration_s={COLD_DAYS * DAY_S}"]),
                             True)
    for name, (key, values) in SENSITIVITY.items():
        for v in values:
            u = SENSITIVITY_USERS
            for tag, extra in (("sens", []), ("sens-cache", CACHE_ONLY)):
                jobs[f"{tag}/{name}/{v}"] = (scaled(u, [f"{key}={v}", *extra]), False)
                for i in range(K):
                    jobs[f"{tag}/{name}/{v}/{i}"] = (scaled(u // K, [f"{key}={v}", *extra], seed=1000 + i), False)
    for label, extra in VARIANTS.items():
        jobs[f"variant/{label}"] = (scaled(VARIANT_USERS, extra), False)
    return jobs


def study(workers: int, fresh: bool, full: bool, resized: bool) -> dict[str, Any]:
    jobs = plan(full, resized)
    results = run_all(list(jobs.values()), workers, fresh)
    runs = dict(zip(jobs, results, strict=True))
    for name, r in runs.items():  # revenue is reported for the users sweep only (the tables use it nowhere else)
        if name.split("/")[0] not in CONFIGS and not name.startswith("resized/"):
            for k in REVENUE:
                r.pop(k, None)
    ref = runs[f"plain/{USERS[-1]}"]
    return {"usd_per_generated_token": ref["cost_usd"] / ref["output_tokens"], "runs": runs,
            "overrides": {k: v[0] for k, v in jobs.items()}}


# ------------------------------------------------------------------------------------------ figures and tables


def cache_usd(s: dict[str, Any]) -> float:
    return s.get("trace_cache_lookup_cost_usd", 0.0) + s.get("trace_cache_storage_cost_usd", 0.0)


def work_usd(s: dict[str, Any], ref: float) -> float:
    """USD of a fleet sized to the work: generated tokens at the reference price, plus minting and the cache."""
    return ref * s["output_tokens"] + s.get("minting_cost_usd", 0.0) + cache_usd(s)


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """k providers' runs as one: counts and costs summed, the hit ratio over all lookups, the worst p99."""
    out: dict[str, Any] = {k: sum(p.get(k, 0.0) for p in parts) for k in (
        "num_requests", "num_completed", "num_answered", "num_correct", "output_tokens", "reasoning_tokens_spent",
        "gpu_hours", "cost_usd", "minting_cost_usd", "trace_cache_lookup_cost_usd", "trace_cache_storage_cost_usd",
        "trace_cache_lookups", "trace_cache_hits", "minted_requests", "revenue_usd", "margin_usd")}
    out["trace_cache_hit_ratio"] = out["trace_cache_hits"] / out["trace_cache_lookups"]
    out["accuracy"] = out["num_correct"] / out["num_answered"]
    out["time_to_answer_s_p99"] = max(p["time_to_answer_s_p99"] for p in parts)
    return out


def figures(s: dict[str, Any], ref: float) -> dict[str, Any]:
    done, right = s["num_completed"], s["num_correct"]
    work = work_usd(s, ref)
    return {"queries": s["num_requests"], "hit": s.get("trace_cache_hit_ratio", float("nan")),
            "minted_share": s.get("minted_requests", 0.0) / s["num_requests"],
            "reasoning_per_query": s["reasoning_tokens_spent"] / s["num_requests"],
            "fleet_q": s["cost_usd"] / done, "work_q": work / done, "fleet_right": s["cost_usd"] / right,
            "work_right": work / right, "minting_q": s.get("minting_cost_usd", 0.0) / done,
            "cache_q": cache_usd(s) / done, "accuracy": s["accuracy"], "tta_p99": s["time_to_answer_s_p99"],
            "margin": s.get("margin_usd", float("nan")) / max(s.get("revenue_usd", float("nan")), 1e-300),
            "busy": s.get("gpu_busy_share", float("nan"))}


def pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def usd(x: float) -> str:
    return f"{x:.2e}" if x < 1e-3 else f"{x:.4f}"


def best(options: dict[str, dict[str, Any]], ref: float) -> tuple[str, dict[str, Any]]:
    """The configuration a provider would pick: the lowest work USD per correct answer, and its figures."""
    label = min(options, key=lambda k: figures(options[k], ref)["work_right"])
    return label, figures(options[label], ref)


def fragments(runs: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The K fragments' runs named `prefix`/0 .. `prefix`/K-1, as one."""
    return combine([runs[f"{prefix}/{i}"] for i in range(K)])


def sweep_table(data: dict[str, Any]) -> list[str]:
    runs, ref = data["runs"], data["usd_per_generated_token"]
    lines = ["| users | queries a day | replicas | reuse | hit ratio (whole traces) | minted share | "
             "reasoning tokens per query | accuracy | fleet USD/query | work USD/query | of which minting | "
             "of which cache | fleet USD per correct | work USD per correct | margin at 0.2 USD/Mtok | "
             "p99 time to answer (s) |", "|" + "---|" * 16]

    def line(u: int, n: int, label: str, s: dict[str, Any]) -> str:
        f = figures(s, ref)
        return (f"| {u:,} | {f['queries']:,.0f} | {n} | {label} | {pct(f['hit'])} | {pct(f['minted_share'])} | "
                f"{f['reasoning_per_query']:.0f} | {pct(f['accuracy'])} | {usd(f['fleet_q'])} | {usd(f['work_q'])} | "
                f"{usd(f['minting_q'])} | {usd(f['cache_q'])} | {usd(f['fleet_right'])} | {usd(f['work_right'])} | "
                f"{pct(f['margin'])} | {f['tta_p99']:.1f} |")

    for u in USERS:
        pick, _ = best({label: runs[f"{kind}/{u}"] for kind, (label, _) in CONFIGS.items()}, ref)
        for kind, (label, _) in CONFIGS.items():
            lines.append(line(u, replicas(u), f"**{label}**" if label == pick else label, runs[f"{kind}/{u}"]))
    if f"resized/{RESIZED_USERS}" in runs:
        lines.append(line(RESIZED_USERS, 1, "cache + minting, fleet resized", runs[f"resized/{RESIZED_USERS}"]))
    return lines


def provider_options(runs: dict[str, Any], u: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The reuse configurations open to one provider of u users and to K providers of u / K: cache only, cache +
    minting (each side's runs; the K fragments' as one)."""
    return ({"cache only": runs[f"cache/{u}"], "cache + minting": runs[f"reuse/{u}"]},
            {"cache only": fragments(runs, f"fragment-cache/{u}"), "cache + minting": fragments(runs, f"fragment/{u}")})


def fragment_table(data: dict[str, Any]) -> list[str]:
    runs, ref = data["runs"], data["usd_per_generated_token"]
    lines = ["| total users | provider(s) | reuse | hit ratio (whole traces) | minted share | reasoning tokens per "
             "query | accuracy | fleet USD/query | work USD/query | of which minting | work USD per correct | "
             "fleet USD per correct | worst p99 time to answer (s) |", "|" + "---|" * 13]
    for u in FRAGMENT_AT_FULL:
        if f"fragment/{u}/0" not in runs:
            continue
        picked = []
        for side, options in zip((f"1 x {u:,}", f"{K} x {u // K:,}"), provider_options(runs, u), strict=True):
            pick, pf = best(options, ref)
            picked.append(pf)
            for label, s in options.items():
                f = figures(s, ref)
                shown = f"**{label}**" if label == pick else label
                lines.append(f"| {u:,} | {side} | {shown} | {pct(f['hit'])} | {pct(f['minted_share'])} | "
                             f"{f['reasoning_per_query']:.0f} | {pct(f['accuracy'])} | {usd(f['fleet_q'])} | "
                             f"{usd(f['work_q'])} | {usd(f['minting_q'])} | {usd(f['work_right'])} | "
                             f"{usd(f['fleet_right'])} | {f['tta_p99']:.1f} |")
        c, g = picked
        lines.append(f"| {u:,} | consolidation saves (best against best) | | | | | | "
                     f"{pct(1 - c['fleet_q'] / g['fleet_q'])} | {pct(1 - c['work_q'] / g['work_q'])} | | "
                     f"{pct(1 - c['work_right'] / g['work_right'])} | "
                     f"{pct(1 - c['fleet_right'] / g['fleet_right'])} | |")
    return lines


def cold_table(data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    lines = ["| users | day | queries | reused something | whole-trace hits | reasoning tokens per query | "
             "accuracy |", "|" + "---|" * 7]
    for u in COLD_START:
        for d in runs[f"cold/{u}"]["by_day"]:
            lines.append(f"| {u:,} | {d['day'] + 1} | {d['queries']:,} | {pct(d['reuse_share'])} | "
                         f"{pct(d['whole_hit_share'])} | {d['reasoning_per_query']:.0f} | {pct(d['accuracy'])} |")
    return lines


def sensitivity_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Per parameter value: each side's best configuration and its figures (1 provider, K fragments)."""
    runs, ref = data["runs"], data["usd_per_generated_token"]
    out = []
    for name, (_, values) in SENSITIVITY.items():
        for v in values:
            one = best({"cache only": runs[f"sens-cache/{name}/{v}"], "cache + minting": runs[f"sens/{name}/{v}"]},
                       ref)
            many = best({"cache only": fragments(runs, f"sens-cache/{name}/{v}"),
                         "cache + minting": fragments(runs, f"sens/{name}/{v}")}, ref)
            out.append({"parameter": name, "value": v, "one": one, "many": many})
    return out


def sensitivity_table(data: dict[str, Any]) -> list[str]:
    runs, ref, u = data["runs"], data["usd_per_generated_token"], SENSITIVITY_USERS
    lines = [f"| parameter | value | best reuse 1 x {u:,} / {K} x {u // K:,} | hit ratio 1 x / {K} x | accuracy 1 x | "
             f"work USD per correct 1 x / {K} x | 1 x against no reuse | consolidation saves per correct |",
             "|" + "---|" * 8]
    plain = figures(runs[f"plain/{u}"], ref)
    for r in sensitivity_rows(data):
        (lc, c), (lg, g) = r["one"], r["many"]
        lines.append(f"| {r['parameter']} | {r['value']} | {lc} / {lg} | {pct(c['hit'])} / {pct(g['hit'])} | "
                     f"{pct(c['accuracy'])} | {usd(c['work_right'])} / {usd(g['work_right'])} | "
                     f"{pct(c['work_right'] / plain['work_right'] - 1)} | "
                     f"{pct(1 - c['work_right'] / g['work_right'])} |")
    return lines


def variant_table(data: dict[str, Any]) -> list[str]:
    runs, ref = data["runs"], data["usd_per_generated_token"]
    lines = [f"| variant ({VARIANT_USERS:,} users) | hit ratio (whole traces) | minted share | reasoning tokens per "
             "query | accuracy | work USD/query | of which minting | of which cache | break-even hit ratio | "
             "work USD per correct | fleet USD per correct | p99 time to answer (s) |", "|" + "---|" * 12]
    for label in VARIANTS:
        s = runs[f"variant/{label}"]
        f = figures(s, ref)
        lines.append(f"| {label} | {pct(f['hit'])} | {pct(f['minted_share'])} | {f['reasoning_per_query']:.0f} | "
                     f"{pct(f['accuracy'])} | {usd(f['work_q'])} | {usd(f['minting_q'])} | {usd(f['cache_q'])} | "
                     f"{pct(s.get('trace_cache_break_even_hit_ratio', float('nan')))} | {usd(f['work_right'])} | "
                     f"{usd(f['fleet_right'])} | {f['tta_p99']:.1f} |")
    return lines


def tables(data: dict[str, Any]) -> str:
    out = [f"GPU USD per generated token (work pricing; 10M users, no reuse): {data['usd_per_generated_token']:.3e}",
           "", "### Users sweep", "", *sweep_table(data), "", "### Consolidated vs fragmented", "",
           *fragment_table(data), "", "### Cold start", "", *cold_table(data), "", "### Sensitivity", "",
           *sensitivity_table(data), "", "### Cache and minting variants", "", *variant_table(data)]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------ charts


def charts(data: dict[str, Any], folder: Path) -> list[Path]:
    import altair as alt
    import pandas as pd
    import vl_convert as vlc

    runs, ref = data["runs"], data["usd_per_generated_token"]
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(chart: Any, name: str) -> None:
        path = folder / name
        path.write_text(vlc.vegalite_to_svg(chart.to_dict()))
        written.append(path)

    rows = []
    for u in USERS:
        for kind, (label, _) in CONFIGS.items():
            f = figures(runs[f"{kind}/{u}"], ref)
            for cost in ("fleet", "work"):
                for per, key in (("query", f"{cost}_q"), ("correct answer", f"{cost}_right")):
                    rows.append({"users": u, "USD": f[key], "series": f"{cost}, {label}", "per": per})
    base = alt.Chart(pd.DataFrame(rows), width=300, height=240).mark_line(point=True).encode(
        x=alt.X("users:Q", scale=alt.Scale(type="log"), title="users (0.1 queries per user per day)"),
        y=alt.Y("USD:Q", scale=alt.Scale(type="log"), title="USD"), color="series:N")
    save(base.facet(column=alt.Column("per:N", title="USD per")), "network-effects.svg")

    rows = []
    for u in FRAGMENT_AT_FULL:
        if f"fragment/{u}/0" not in runs:
            continue
        one, many = (best(options, ref)[1] for options in provider_options(runs, u))
        for label, f in (("1 provider", one), (f"{K} providers", many)):
            for cost in ("work", "fleet"):
                rows.append({"total users": u, "provider(s)": label, "USD per correct answer": f[f"{cost}_right"],
                             "cost": cost})
    save(alt.Chart(pd.DataFrame(rows), width=300, height=240).mark_line(point=True).encode(
        x=alt.X("total users:Q", scale=alt.Scale(type="log")),
        y=alt.Y("USD per correct answer:Q", scale=alt.Scale(type="log")), color="provider(s):N",
        strokeDash="cost:N"), "network-effects-fragmented.svg")

    rows = [{"day": d["day"] + 1, "users": f"{u:,}", "share of queries": d[k], "reuse": label}
            for u in COLD_START for d in runs[f"cold/{u}"]["by_day"]
            for k, label in (("reuse_share", "reused something"), ("whole_hit_share", "whole-trace hit"))]
    save(alt.Chart(pd.DataFrame(rows), width=360, height=240).mark_line(point=True).encode(
        x="day:O", y=alt.Y("share of queries:Q", axis=alt.Axis(format="%")), color="users:N",
        strokeDash="reuse:N"), "network-effects-cold-start.svg")

    rows = [{"parameter": r["parameter"], "value": str(r["value"]),
             "consolidation saves per correct answer": 1 - r["one"][1]["work_right"] / r["many"][1]["work_right"]}
            for r in sensitivity_rows(data)]
    save(alt.Chart(pd.DataFrame(rows), width=120, height=200).mark_bar().encode(
        x=alt.X("value:N", sort=None), y=alt.Y("consolidation saves per correct answer:Q",
                                               axis=alt.Axis(format="%")),
        column="parameter:N"), "network-effects-sensitivity.svg")
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="write every run's figures here (JSON)")
    p.add_argument("--tables", type=Path, metavar="JSON", help="print the tables of a JSON written by --out; no runs")
    p.add_argument("--charts", type=Path, metavar="DIR", help="write the charts (SVG) into this folder")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--fresh", action="store_true", help="ignore the run cache")
    p.add_argument("--full", action="store_true", help="also fragment 10M users (10 more 1M-user runs)")
    p.add_argument("--no-resized", dest="resized", action="store_false",
                   help="skip the 10M-user run on a fleet resized to the reuse load (one 10M-user run)")
    args = p.parse_args()
    if args.tables:
        data = json.loads(args.tables.read_text())
    else:
        data = study(args.workers, args.fresh, args.full, args.resized)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(tables(data))
    if args.charts:
        for path in charts(data, args.charts):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
