"""Network effects of reasoning-trace reuse (issue 18 items 4-5, seed 000): USD per query against users, one
provider with one cache against k providers with a cache each, and the sensitivity to the Zipf exponent and the
false-hit rate, all on scenarios/network-effects.yaml.

    python bench/network_effects.py                                   # prints the tables of docs/network-effects.md
    python bench/network_effects.py --chart docs/images/network-effects.svg

Traffic is proportional to users: each user sends one query per 1,000 s, so `num_users` U gives an arrival rate of
U / 1000 per second, `num_requests` 2 U (the same 2,000 s window at every scale) and max(1, round(U / 1000))
replicas (one 1 x H100 replica per 1,000 users). Every run is seeded, so the tables are deterministic.

Two costs per query: `fleet USD/query` prices the provisioned fleet over the run (GPU-hours x price / completed
queries; with replicas proportional to users it cannot fall much: reuse shows up there as a shorter queue); `work
USD/query` prices the tokens the fleet actually generated at the no-reuse base point's USD per generated token
(the cost of a fleet sized to the work), plus the minting jobs. Reuse lowers the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simserve import load_scenario, run  # noqa: E402

SCENARIO = ROOT / "scenarios" / "network-effects.yaml"
BASE_USERS = 1000
USERS = (1_000, 3_000, 10_000, 30_000)
K = 10
FRAGMENT_AT = (10_000, 30_000)
SENSITIVITY_USERS = 10_000
ZIPF = (0.6, 0.8, 1.0)
FALSE_HITS = (0.01, 0.05, 0.2)


def scaled(users: int, seed: int | None = None, extra: list[str] | None = None) -> list[str]:
    """Overrides for `users` users: rate, requests and replicas proportional to users (module docstring)."""
    ov = [f"workload.num_users={users}", f"workload.arrival.rate_per_s={users / 1000}",
          f"workload.num_requests={2 * users}", f"cluster.pools.0.replicas={max(1, round(users / 1000))}"]
    if seed is not None:
        ov.append(f"seed={seed}")
    return ov + (extra or [])


def simulate(overrides: list[str]) -> dict[str, Any]:
    s = run(load_scenario(SCENARIO, overrides)).summary
    return {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, bool) else v) for k, v in s.items()}


def reference_usd_per_token() -> tuple[float, dict[str, Any]]:
    """USD per generated token of the fleet at the base point with no reuse (no trace cache, no minting)."""
    s = simulate(scaled(BASE_USERS, extra=["workload.trace_cache=null", "workload.minting=null"]))
    return s["cost_usd"] / s["output_tokens"], s


def work_usd(s: dict[str, Any], usd_per_token: float) -> float:
    """USD of a fleet sized to the work: generated tokens at the reference price, plus the minting jobs."""
    return usd_per_token * s["output_tokens"] + s.get("minting_cost_usd", 0.0)


def row(users: int, s: dict[str, Any], ref: float) -> dict[str, Any]:
    done = s["num_completed"]
    work = work_usd(s, ref)
    return {"users": users, "queries": int(s["num_requests"]), "hit": s.get("trace_cache_hit_ratio", 0.0),
            "reasoning_per_query": s["reasoning_tokens_spent"] / s["num_requests"],
            "gpu_hours": s["gpu_hours"], "fleet_usd_q": s["cost_usd"] / done, "work_usd_q": work / done,
            "accuracy": s["accuracy"], "work_usd_right": work / s["num_correct"],
            "fleet_usd_right": s["usd_per_correct_answer"], "tta_p99": s["time_to_answer_s_p99"],
            "minting_usd_q": s.get("minting_cost_usd", 0.0) / done,
            "minted": int(s.get("minted_requests", 0)), "saturated": s["saturated"]}


def sweep(ref: float) -> list[dict[str, Any]]:
    return [row(u, simulate(scaled(u)), ref) for u in USERS]


def fragmented(users: int, ref: float, extra: list[str] | None = None) -> dict[str, Any]:
    """k providers, each with users / k of the users, its traffic, replicas and its own cache and minting store
    (independent seeds); costs and counts summed."""
    parts = [simulate(scaled(users // K, seed=1000 + i, extra=extra)) for i in range(K)]
    done = sum(p["num_completed"] for p in parts)
    lookups = sum(p["trace_cache_lookups"] for p in parts)
    work = sum(work_usd(p, ref) for p in parts)
    return {"hit": sum(p["trace_cache_hits"] for p in parts) / lookups,
            "reasoning_per_query": (sum(p["reasoning_tokens_spent"] for p in parts)
                                    / sum(p["num_requests"] for p in parts)),
            "gpu_hours": sum(p["gpu_hours"] for p in parts),
            "fleet_usd_q": sum(p["cost_usd"] for p in parts) / done, "work_usd_q": work / done,
            "accuracy": sum(p["num_correct"] for p in parts) / sum(p["num_answered"] for p in parts),
            "work_usd_right": work / sum(p["num_correct"] for p in parts),
            "tta_p99": max(p["time_to_answer_s_p99"] for p in parts),
            "minting_usd_q": sum(p.get("minting_cost_usd", 0.0) for p in parts) / done}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def sweep_table(rows: list[dict[str, Any]], base: dict[str, Any], ref: float) -> list[str]:
    lines = ["| users | queries | trace cache hit ratio | reasoning tokens per query | GPU-hours | fleet USD/query | "
             "work USD/query | of which minting | minted requests | accuracy | work USD per correct | "
             "fleet USD per correct | p99 time to answer (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    b = row(BASE_USERS, base, ref)
    lines.append(f"| {BASE_USERS:,} (no reuse) | {b['queries']:,} | - | {b['reasoning_per_query']:.0f} | "
                 f"{b['gpu_hours']:.2f} | {b['fleet_usd_q']:.5f} | {b['work_usd_q']:.5f} | - | - | "
                 f"{pct(b['accuracy'])} | "
                 f"{b['work_usd_right']:.5f} | {b['fleet_usd_right']:.5f} | {b['tta_p99']:.1f} |")
    for r in rows:
        lines.append(f"| {r['users']:,} | {r['queries']:,} | {pct(r['hit'])} | {r['reasoning_per_query']:.0f} | "
                     f"{r['gpu_hours']:.2f} | {r['fleet_usd_q']:.5f} | {r['work_usd_q']:.5f} | "
                     f"{r['minting_usd_q']:.5f} | {r['minted']} | {pct(r['accuracy'])} | "
                     f"{r['work_usd_right']:.5f} | {r['fleet_usd_right']:.5f} | {r['tta_p99']:.1f} |"
                     + (" saturated" if r["saturated"] else ""))
    return lines


def fragment_table(rows: list[dict[str, Any]], ref: float) -> list[str]:
    lines = ["| total users | provider(s) | trace cache hit ratio | reasoning tokens per query | GPU-hours | "
             "work USD/query | of which minting | accuracy | work USD per correct | worst p99 time to answer (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by_users = {r["users"]: r for r in rows}
    for u in FRAGMENT_AT:
        c, f = by_users[u], fragmented(u, ref)
        for label, r in ((f"1 x {u:,}", c), (f"{K} x {u // K:,}", f)):
            lines.append(f"| {u:,} | {label} | {pct(r['hit'])} | {r['reasoning_per_query']:.0f} | "
                         f"{r['gpu_hours']:.2f} | {r['work_usd_q']:.5f} | {r['minting_usd_q']:.5f} | "
                         f"{pct(r['accuracy'])} | {r['work_usd_right']:.5f} | {r['tta_p99']:.1f} |")
        lines.append(f"| {u:,} | consolidation saves | | | | {pct(1 - c['work_usd_q'] / f['work_usd_q'])} | | | "
                     f"{pct(1 - c['work_usd_right'] / f['work_usd_right'])} | |")
    return lines


def sensitivity_table(ref: float) -> list[str]:
    u = SENSITIVITY_USERS
    lines = [f"| Zipf exponent | false-hit rate | hit ratio (1 x {u:,}) | hit ratio ({K} x {u // K:,}) | accuracy | "
             f"work USD/query 1 x / {K} x | work USD per correct 1 x / {K} x | consolidation saves per correct |",
             "|---|---|---|---|---|---|---|---|"]
    cases = [(z, 0.05) for z in ZIPF] + [(0.8, f) for f in FALSE_HITS if f != 0.05]
    for z, f in cases:
        extra = [f"workload.mix.0.concepts.zipf_exponent={z}", f"workload.trace_cache.false_hit_rate={f}"]
        c = row(u, simulate(scaled(u, extra=extra)), ref)
        g = fragmented(u, ref, extra)
        lines.append(f"| {z} | {f} | {pct(c['hit'])} | {pct(g['hit'])} | {pct(c['accuracy'])} | "
                     f"{c['work_usd_q']:.5f} / {g['work_usd_q']:.5f} | "
                     f"{c['work_usd_right']:.5f} / {g['work_usd_right']:.5f} | "
                     f"{pct(1 - c['work_usd_right'] / g['work_usd_right'])} |")
    return lines


def chart(rows: list[dict[str, Any]], base: dict[str, Any], ref: float, path: Path) -> None:
    """USD per query against users (log x), fleet and work costs, and the no-reuse reference, as an SVG."""
    import altair as alt
    import pandas as pd
    import vl_convert as vlc

    b = row(BASE_USERS, base, ref)
    data = []
    for r in rows:
        data += [{"users": r["users"], "USD per query": r["work_usd_q"], "cost": "work (fleet sized to tokens)"},
                 {"users": r["users"], "USD per query": r["fleet_usd_q"], "cost": "fleet (replicas per 1k users)"},
                 {"users": r["users"], "USD per query": b["work_usd_q"], "cost": "no reuse"}]
    spec = alt.Chart(pd.DataFrame(data), width=420, height=260).mark_line(point=True).encode(
        x=alt.X("users:Q", scale=alt.Scale(type="log"), title="users (traffic proportional)"),
        y=alt.Y("USD per query:Q", scale=alt.Scale(zero=False)), color="cost:N").to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(vlc.vegalite_to_svg(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chart", type=Path, help="also write USD per query against users (SVG) here")
    args = parser.parse_args()
    ref, base = reference_usd_per_token()
    rows = sweep(ref)
    print("\n".join(sweep_table(rows, base, ref)))
    print()
    print("\n".join(fragment_table(rows, ref)))
    print()
    print("\n".join(sensitivity_table(ref)))
    if args.chart:
        chart(rows, base, ref, args.chart)
        print(f"\nwrote {args.chart}")


if __name__ == "__main__":
    main()
