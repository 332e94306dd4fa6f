"""The run summary as a capacity planner reads it, drawn with rich: what was simulated, whether the cluster kept
up (offered against achieved rate, GPU busy share), each SLO's target and attainment, latency percentiles
overall, per query type and per pool, answer accuracy and the cost of a right answer (when modelled), then
throughput, memory and cost. On a terminal it has colour and boxes; piped or captured, the same tables as plain
text. Part of the command line (with cli.py, the only modules that write to the terminal); it reads a summary dict
and the pools list, never the engine."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from simserve.hardware import GPUS

LATENCIES = (("ttft_s", "TTFT"), ("time_to_answer_s", "time to answer"), ("tpot_s", "TPOT"), ("e2e_s", "e2e"))
PLAIN_WIDTH = 120  # columns of the plain-text summary (no terminal to ask)
SCIENTIFIC_FROM = 1e9  # counts below this are written in full, with thousands separators


def count(n: float) -> str:
    """A count: 19,280 (thousands separators, no scientific notation below a billion); 1.00e+12 above."""
    if isinstance(n, float) and math.isnan(n):
        return "-"
    return f"{n:,.0f}" if abs(n) < SCIENTIFIC_FROM else f"{n:.2e}"


def number(x: float | None) -> str:
    """A measured quantity with about three significant digits: 1,246 / 12.3 / 1.23 / 0.0123; '-' if undefined."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    a = abs(x)
    if a >= SCIENTIFIC_FROM:
        return f"{x:.2e}"
    if a >= 100 or a == 0:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def share(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.1%}"


def gpu_name(name: str) -> str:
    return name.upper() if name in GPUS else name


def pool_line(p: Mapping[str, Any]) -> str:
    """'2 replicas x 1 H100-SXM each (llama-3.1-8b)'."""
    n, tp = p["replicas"], p["tensor_parallel"]
    gpus = f", {n * tp} GPUs" if n > 1 and tp > 1 else ""
    return (f"{n} replica{'s' if n != 1 else ''} x {tp} {gpu_name(p['gpu'])}{' each' if n > 1 else ''} "
            f"({p['model']}{gpus}), {count(p['kv_capacity_blocks'])} KV blocks per replica")


# rich's SIMPLE_HEAD (a rule under the header, nothing else) in ASCII, for plain text.
ASCII_SIMPLE_HEAD = box.Box("    \n    \n -- \n    \n    \n    \n    \n    \n", ascii=True)


def _table(title: str, *columns: str, plain: bool, header: bool = True, notes: bool = False) -> Table:
    """A table with a left-aligned title; the first column (names) left-aligned, the figures right-aligned, and
    with `notes` a last, left-aligned column of explanations."""
    t = Table(title=title, title_justify="left", box=ASCII_SIMPLE_HEAD if plain else box.SIMPLE_HEAD,
              title_style="" if plain else "bold", header_style="" if plain else "bold", pad_edge=False,
              show_edge=False, show_header=header)
    for i, c in enumerate(columns):
        last_note = notes and i == len(columns) - 1
        t.add_column(c, justify="left" if i == 0 or last_note else "right", no_wrap=i == 0,
                     style="dim" if last_note and not plain else "")
    return t


def _indent(r: RenderableType) -> Padding:
    return Padding(r, (0, 0, 0, 2))


def notices(s: Mapping[str, Any]) -> list[str]:
    """What the reader must see before any figure: a run stopped early, at its horizon or by Ctrl-C, requests
    that can never fit a replica, or a load the cluster cannot keep up with."""
    out = []
    if s.get("partial"):
        out.append(f"PARTIAL: stopped by Ctrl-C at {number(s['makespan_s'])} s simulated; the figures cover what "
                   "had finished by then (requests in flight are unfinished).")
    if s.get("stopped_at_horizon"):
        out.append(f"STOPPED AT THE HORIZON ({count(s['horizon_s'])} s, engine.horizon_s): "
                   f"{count(s['num_unfinished'])} requests still waiting or running, {count(s['num_not_arrived'])} "
                   "not arrived.")
    if s.get("num_rejected_too_long"):
        out.append(f"REJECTED: {count(s['num_rejected_too_long'])} requests can never fit a replica (prompt + output "
                   "over its KV capacity or max_model_len_tokens); requests.parquet gives each one's reason.")
    if s.get("saturated") and s.get("queue_growth_requests_per_s", 0) > 0:
        out.append(f"SATURATED: the waiting queue grew by {number(s['queue_growth_requests_per_s'])} requests/s over "
                   "the second half of the arrivals; the cluster cannot keep up with this load.")
    return out


def _header(name: str, seed: int, s: Mapping[str, Any], pools: list[dict[str, Any]]) -> list[str]:
    lines = [f"simserve: {name}  (seed {seed})"]
    lines.extend(f"  pool {p['pool']}: {pool_line(p)}" for p in pools)
    arrived = s["num_requests"] - s["num_not_arrived"]
    lines.append(f"  requests: {count(arrived)} arrived, {count(s['num_completed'])} completed, "
                 f"{count(s['num_rejected'])} rejected, {count(s['num_unfinished'])} unfinished"
                 + (f", {count(s['num_not_arrived'])} not arrived" if s["num_not_arrived"] else ""))
    lines.append(f"  simulated {number(s['makespan_s'])} s in {s['wall_time_s']:.2f} s wall, "
                 f"{count(s['num_events'])} events ({s['events_per_request']:.1f} per request)")
    return lines


def _load(s: Mapping[str, Any], plain: bool) -> Table:
    t = _table("load", "", "", "", plain=plain, header=False, notes=True)
    t.add_row("offered", f"{number(s['offered_requests_per_s'])} req/s", "arrivals/s over the second half of them")
    t.add_row("achieved", f"{number(s['achieved_requests_per_s'])} req/s", "completions/s over the same window")
    t.add_row("GPU busy", share(s["gpu_busy_share"]), "share of GPU time spent stepping")
    return t


def _slo(s: Mapping[str, Any], plain: bool) -> RenderableType:
    set_ = [(k, label) for k, label in LATENCIES if s.get(f"slo_{k}") is not None]
    if not set_:
        return Text("  no SLO set (slo: {ttft_s, tpot_s, time_to_answer_s, e2e_s} in the scenario)")
    t = _table("SLO", "", "target", "attained", "", plain=plain, notes=True)
    for i, (k, label) in enumerate(set_):
        t.add_row(label, f"{number(s[f'slo_{k}'])} s", share(s[f"slo_attainment_{k}"]),
                  "share of completed requests within the target" if i == 0 else "")
    t.add_row("goodput", "every SLO", share(s["goodput"]), "share of all requests within every target")
    return t


def _latency(s: Mapping[str, Any], plain: bool) -> Table:
    t = _table("latency (s)", "", "mean", "p50", "p90", "p99", plain=plain)
    for k, label in LATENCIES:
        t.add_row(label, *(number(s[f"{k}_{q}"]) for q in ("mean", "p50", "p90", "p99")))
    return t


def _groups(title: str, groups: Mapping[str, Mapping[str, Any]], plain: bool,
            pools: list[dict[str, Any]] | None = None) -> Table:
    """One row per query type or pool: counts, then the median and p99 of TTFT, time to answer and e2e (all
    three percentiles are in summary.json); for pools, their GPUs, busy share and cost first."""
    cols = ["requests", "completed"]
    if pools is not None:
        cols += ["GPUs", "GPU\nbusy", "cost\nUSD"]
    metrics = [("ttft_s", "TTFT"), ("time_to_answer_s", "answer"), ("e2e_s", "e2e")]
    cols += [f"{label}\np{q}" for _, label in metrics for q in (50, 99)]
    t = _table(title, "", *cols, plain=plain)
    info = {p["pool"]: p for p in pools or []}
    for g, row in groups.items():
        cells = [count(row["num_requests"]), count(row["num_completed"])]
        if pools is not None:
            p = info.get(g)
            cells += ([count(p["replicas"] * p["tensor_parallel"]), share(p.get("busy_share")),
                       f"{p['cost_usd']:,.2f}"] if p else ["-", "-", "-"])
        cells += [number(row[f"{k}_p{q}"]) for k, _ in metrics for q in (50, 99)]
        t.add_row(g or "(none)", *cells)
    return t


def _answers(s: Mapping[str, Any], plain: bool) -> Table:
    """Answer quality (docs/quality.md): accuracy overall and per query type, and what a right answer costs."""
    t = _table("answers (accuracy over completed requests)", "", "answered", "right", "accuracy", plain=plain)
    by = s.get("accuracy_by_query_type") or {}
    if len(by) > 1:
        for name, row in by.items():
            t.add_row(name, count(row["num_answered"]), count(row["num_correct"]), share(row["accuracy"]))
    t.add_row("all", count(s["num_answered"]), count(s["num_correct"]), share(s["accuracy"]))
    if "routing_accuracy" in s:
        t.add_row("", "", "", "")
        t.add_row("difficulty routing: classifier right", "", "", share(s["routing_accuracy"]))
        t.add_row("accuracy with every question on the reference pool", "", "", share(s["accuracy_reference"]))
        t.add_row("accuracy lost to routing", "", "", share(s["accuracy_lost"]))
    t.add_row("", "", "", "")
    t.add_row("USD per right answer", "", "", number(s["usd_per_correct_answer"]))
    t.add_row("tokens per right answer", "", "", number(s["tokens_per_correct_answer"]))
    return t


def _resources(s: Mapping[str, Any], pools: list[dict[str, Any]], plain: bool) -> Table:
    t = _table("throughput, memory, cost", "", "", plain=plain, header=False)
    rows = [
        ("output tokens/s", number(s["throughput_output_tokens_per_s"])),
        ("requests/s (whole run)", number(s["requests_per_s"])),
        ("KV utilisation mean / max", f"{share(s['kv_utilization_mean'])} / {share(s['kv_utilization_max'])}"),
        ("preemptions", count(s["num_preemptions"])),
        ("prefix cache hit ratio", share(s["prefix_cache_hit_ratio"])),
        ("mean batch size", number(s["batch_size_mean"])),
        ("mean queue length", number(s["queue_len_mean"])),
        ("longest wait before the first token (s)", number(s.get("max_wait_s"))),
        ("fairness across users (Jain, tokens served)", number(s.get("jain_fairness_users"))),
        ("GPU-hours", number(s["gpu_hours"])),
        ("cost USD", f"{s['cost_usd']:,.2f}"),
        ("cost USD per 1k completed", number(s["cost_usd_per_1k_completed"])),
    ]
    if s.get("swap_bytes"):
        rows.append(("KV swapped to host (GB)", number(s["swap_bytes"] / 1e9)))
    if s.get("kv_memory_efficiency") is not None:
        rows.append(("KV memory efficiency", share(s["kv_memory_efficiency"])))
    for name, value in rows:
        t.add_row(name, value)
    return t


def summary_renderable(name: str, seed: int, s: Mapping[str, Any], pools: list[dict[str, Any]],
                       by_query_type: Mapping[str, Mapping[str, Any]] | None = None,
                       by_pool: Mapping[str, Mapping[str, Any]] | None = None, *, plain: bool) -> Group:
    """The whole summary: header lines, notices, then the tables (group tables only when there is more than one
    group: one group repeats the overall figures)."""
    parts: list[RenderableType] = [Text("\n".join(_header(name, seed, s, pools)))]
    for line in notices(s):
        parts += [Text(""), _indent(Text(line, style="" if plain else "bold red"))]
    tables: list[RenderableType] = [_load(s, plain), _slo(s, plain), _latency(s, plain)]
    if by_query_type and len(by_query_type) > 1:
        tables.append(_groups("by query type (latencies in s over completed requests; answer: time to answer)",
                              by_query_type, plain))
    if by_pool and len(by_pool) > 1:
        tables.append(_groups("by pool (where requests ended; latencies in s over completed requests)", by_pool,
                              plain, pools))
    if "accuracy" in s:
        tables.append(_answers(s, plain))
    tables.append(_resources(s, pools, plain))
    for t in tables:
        parts += [Text(""), _indent(t)]
    return Group(*parts)


def console(file: Any = None, *, stderr: bool = False) -> Console:
    """A console that draws boxes and colour on a terminal and writes plain text (PLAIN_WIDTH columns)
    elsewhere."""
    c = Console(file=file, stderr=stderr, highlight=False, soft_wrap=False)
    if not c.is_terminal:
        c = Console(file=file, stderr=stderr, highlight=False, soft_wrap=False, width=PLAIN_WIDTH,
                    no_color=True, emoji=False)
    return c


def format_summary(name: str, seed: int, s: Mapping[str, Any], pools: list[dict[str, Any]],
                   by_query_type: Mapping[str, Mapping[str, Any]] | None = None,
                   by_pool: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """The summary as plain text."""
    buf = io.StringIO()
    c = Console(file=buf, width=PLAIN_WIDTH, highlight=False, no_color=True, emoji=False, force_terminal=False)
    c.print(summary_renderable(name, seed, s, pools, by_query_type, by_pool, plain=True))
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())
