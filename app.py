"""simserve's what-if dashboard: `streamlit run app.py` (needs the [dashboard] extra). Widgets only: the knobs,
runs, figures and charts are simserve/dashboard.py and simserve/charts.py (docs/dashboard.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    import streamlit as st
except ImportError as exc:  # pragma: no cover - the message is the point
    raise SystemExit("the dashboard needs Streamlit: pip install 'simserve[dashboard]'") from exc

from simserve import dashboard as dash
from simserve.charts import knob_chart, pareto_chart, run_charts, sweep_chart
from simserve.output import CacheFolder
from simserve.scenario import ScenarioError, load_scenario
from simserve.sweep import HEADLINE, SweepError, seed_list

ROOT = Path(__file__).resolve().parent
ERRORS = (ScenarioError, SweepError)
CHART_TITLES = {"latency-cdf": "Latency CDFs by query type", "latency-over-time": "Latency and queue over time",
                "kv-over-time": "KV utilisation over time", "tokens-by-phase": "Tokens by phase",
                "cost": "Cost breakdown", "accuracy-vs-tokens": "Accuracy against tokens"}


@st.cache_resource
def store() -> dash.RunStore:
    """One store for every session of this server: figures in SIMSERVE_DASHBOARD_CACHE (a folder, shareable with
    the sweep commands' --cache) or in memory, the records of the last runs in memory."""
    folder = os.environ.get("SIMSERVE_DASHBOARD_CACHE")
    return dash.RunStore(CacheFolder(Path(folder)) if folder else dash.MemoryCache())


def pick_scenario() -> tuple[Path, str] | None:
    """The scenario file (shipped, or uploaded and saved under its own name) and an id that keys its widgets."""
    st.sidebar.header("Scenario")
    source = st.sidebar.radio("source", ["shipped", "upload"], horizontal=True, label_visibility="collapsed")
    if source == "shipped":
        rel = st.sidebar.selectbox("shipped scenario", dash.shipped_scenarios(ROOT))
        return ROOT / rel, rel
    up = st.sidebar.file_uploader("scenario YAML", type=["yaml", "yml"])
    pasted = st.sidebar.text_area("or paste one", key="pasted", height=120)
    folder = Path(st.session_state.setdefault("upload_dir", str(dash.upload_folder())))
    if up is not None:
        return dash.save_upload(up.name, up.getvalue(), folder), f"upload:{up.name}:{up.file_id}"
    if pasted.strip():
        return dash.save_upload("pasted.yaml", pasted.encode(), folder), f"pasted:{hash(pasted)}"
    st.info("Upload or paste a scenario YAML (the format of scenarios/*.yaml; `simserve schema` prints its schema).")
    return None


def widget(k: dash.Knob, sid: str) -> Any:
    key = f"{sid}:{k.key}"
    if k.kind == "select":
        return st.selectbox(k.label, k.options, index=k.options.index(k.value), key=key, help=k.help or None)
    if k.kind == "bool":
        return st.checkbox(k.label, value=bool(k.value), key=key, help=k.help or None)
    if k.kind == "int":
        return int(st.number_input(k.label, value=int(k.value), min_value=None if k.lo is None else int(k.lo),
                                   max_value=None if k.hi is None else int(k.hi), step=int(k.step or 1), key=key,
                                   help=k.help or None))
    return float(st.number_input(k.label, value=float(k.value), min_value=k.lo, max_value=k.hi,
                                 step=k.step or 0.1, format="%g", key=key, help=k.help or None))


def knob_panel(knobs: list[dash.Knob], sid: str) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    groups: dict[str, list[dash.Knob]] = {}
    for k in knobs:
        groups.setdefault(k.group, []).append(k)
    st.sidebar.header("Knobs")
    for name, ks in groups.items():
        with st.sidebar.expander(name, expanded=name in ("Workload", "Policies") or name.startswith("Pool")):
            for k in ks:
                chosen[k.key] = widget(k, sid)
    st.sidebar.caption("No knob yet for speculative decoding: set cluster.pools.N.speculative in the scenario "
                       "(docs/speculative.md).")
    return chosen


def batch_progress(total: int, label: str) -> Any:
    bar = st.progress(0.0, text=f"{label}: 0 of {total} runs")
    done = [0]

    def on_done(task: Any, result: Any, cached: bool) -> None:
        done[0] += 1
        bar.progress(min(done[0] / max(total, 1), 1.0), text=f"{label}: {done[0]} of {total} runs")

    return bar, on_done


def show_run(view: dash.RunView, cached: bool) -> None:
    st.caption(("Shown from the cache (this setting ran before). " if cached else "")
               + f"Scenario hash {view.key}: {view.summary['num_requests']:,} requests, "
               f"{view.summary['makespan_s']:,.0f} s simulated in {view.summary['wall_time_s']:.1f} s.")
    for line in dash.notices(view):
        st.warning(line)
    figures = dash.headline(view)
    for row in range(0, len(figures), 6):
        cols = st.columns(6)
        for col, (label, value, what) in zip(cols, figures[row:row + 6], strict=False):
            col.metric(label, value, help=what)
    for name, chart in run_charts(view.requests, view.replicas, view.summary, view.pools).items():
        st.subheader(CHART_TITLES[name])
        st.altair_chart(chart)
    if len(view.tables["by_query_type"]) > 1:
        st.subheader("By query type")
        st.dataframe(view.tables["by_query_type"])
    st.subheader("Download")
    c = st.columns(4)
    c[0].download_button("requests.parquet", dash.parquet_bytes(view.requests), "requests.parquet")
    c[1].download_button("requests.csv", dash.csv_bytes(view.requests), "requests.csv", mime="text/csv")
    c[2].download_button("replicas.parquet", dash.parquet_bytes(view.replicas), "replicas.parquet")
    c[3].download_button("scenario.yaml", view.scenario_yaml, f"{view.name}.yaml", mime="text/yaml")


def run_tab(path: Path, overrides: list[str], task: dash.Task) -> None:
    st.code("simserve run " + " ".join([str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
                                       *(f"--set '{o}'" for o in overrides)]), language="bash")
    pressed = st.button("Run", type="primary", key="run")
    view = store().view(task.key)
    if view is not None:
        show_run(view, cached=True)
        return
    if not pressed:
        st.info("Press Run to simulate this setting (a setting run before shows at once).")
        return
    bar = st.progress(0.0, text="starting")
    view, cached = dash.run_one(task, store(), lambda f, text: bar.progress(f, text=text))
    bar.empty()
    show_run(view, cached)


def compare_tab(path: Path, overrides: list[str], workers: int) -> None:
    st.markdown("**A** is the pinned setting, **B** the sidebar's. Both run over the same seeds and every figure "
                "is compared paired by seed (B - A, its 95% confidence interval, p of a paired t test).")
    pinned = st.session_state.setdefault("pinned_a", {}).get(str(path), [])
    c = st.columns(3)
    if c[0].button("Pin the sidebar's setting as A"):
        st.session_state["pinned_a"][str(path)] = pinned = list(overrides)
    st.write(f"A: {', '.join(pinned) or 'the scenario as written'} | "
             f"B: {', '.join(overrides) or 'the scenario as written'}")
    seeds = int(c[1].number_input("seeds", 1, 50, 3, key="compare_seeds"))
    if not c[2].button("Compare", type="primary"):
        return
    first = load_scenario(path, overrides).seed
    bar, on_done = batch_progress(2 * seeds, "compare")
    with dash.executor(workers) as pool:
        _, table = dash.compare(path, pinned, overrides, seed_list(first, seeds), pool, store(), on_done)
    bar.empty()
    rows = dash.compare_rows(table, HEADLINE)
    st.dataframe(rows, hide_index=True)
    st.session_state["compare_rows"] = rows


def sweep_tab(path: Path, overrides: list[str], knobs: list[dash.Knob], workers: int) -> None:
    st.markdown("Vary one knob over values and plot a figure against it, a line per value of a second knob, "
                "with the 95% confidence band over seeds (`simserve sweep`).")
    keys = [k.key for k in knobs if k.kind in ("int", "float", "select") and "." in k.key or k.key in (
        "router", "scheduler")]
    c = st.columns(2)
    x = c[0].selectbox("vary", keys, index=next((i for i, k in enumerate(keys) if k.endswith(".replicas")), 0))
    xs = c[1].text_input("values", "1,2,3", key="sweep_values")
    c2 = st.columns(2)
    by = c2[0].selectbox("per", ["(none)", *[k for k in keys if k != x]],
                         index=1 + next((i for i, k in enumerate(k for k in keys if k != x) if k == "router"), -1))
    bys = c2[1].text_input("values of 'per'", "round_robin,least_kv", key="sweep_by_values")
    c3 = st.columns(3)
    figure = c3[0].selectbox("figure", list(HEADLINE), index=list(HEADLINE).index("ttft_s_p99"))
    seeds = int(c3[1].number_input("seeds", 1, 50, 2, key="sweep_seeds"))
    if not c3[2].button("Run sweep", type="primary"):
        return
    axes = [(x, [v.strip() for v in xs.split(",") if v.strip()])]
    if by != "(none)":
        axes.append((by, [v.strip() for v in bys.split(",") if v.strip()]))
    total = seeds * len(axes[0][1]) * (len(axes[1][1]) if len(axes) > 1 else 1)
    first = load_scenario(path, overrides).seed
    bar, on_done = batch_progress(total, "sweep")
    with dash.executor(workers) as pool:
        _, summary, keys_ = dash.sweep(path, overrides, axes, seed_list(first, seeds), pool, store(), on_done)
    bar.empty()
    chart = sweep_chart(summary, keys_, figure)
    if chart is not None:
        st.altair_chart(chart)
    st.dataframe(summary[summary["figure"] == figure], hide_index=True)


def capacity_tab(path: Path, overrides: list[str], workers: int) -> None:
    st.markdown("The smallest setting of a knob that meets every SLO with confidence (one-sided 95% bound of the "
                "mean over seeds), per choice, and the cheapest (`simserve plan`, docs/capacity-planning.md).")
    c = st.columns(2)
    slos = c[0].text_area("SLOs, one a line", "ttft_s_p99<=2\ntpot_s_p99<=0.08", key="plan_slos")
    vary = c[1].text_area("knob LO..HI, then choices KEY=a,b", "cluster.pools.0.replicas=1..8\n"
                          "cluster.pools.0.gpu=h100-sxm,h200", key="plan_vary")
    c2 = st.columns(2)
    seeds = int(c2[0].number_input("seeds", 2, 20, 2, key="plan_seeds"))
    if not c2[1].button("Search", type="primary"):
        return
    first = load_scenario(path, overrides).seed
    bar, on_done = batch_progress(0, "capacity search")
    with dash.executor(workers) as pool:
        result = dash.capacity(path, overrides, [s for s in slos.splitlines() if s.strip()],
                               [v for v in vary.splitlines() if v.strip()], seed_list(first, seeds), pool, store(),
                               on_done=on_done)
    bar.empty()
    if result.cheapest is None:
        st.warning("No combination meets every SLO in the range.")
    else:
        best = {k: v for k, v in result.cheapest.items() if k == result.knob.key or k in result.choices}
        st.success(f"Cheapest: {best}, {result.objective} {result.cheapest['objective']:,.2f}")
    st.dataframe(result.answers, hide_index=True)
    for chart in (pareto_chart(result), knob_chart(result)):
        if chart is not None:
            st.altair_chart(chart)


def main() -> None:
    st.set_page_config(page_title="simserve what-if", layout="wide")
    st.title("simserve: what if?")
    picked = pick_scenario()
    if picked is None:
        return
    path, sid = picked
    try:
        scenario = load_scenario(path)
    except ScenarioError as exc:  # an uploaded file is named as the user named it, not by its temporary folder
        said = str(exc).replace(f"{path.parent}{os.sep}", "") if not path.is_relative_to(ROOT) else str(exc)
        st.error("This scenario cannot be used:\n\n" + said.replace("\n", "  \n"))
        return
    st.caption(scenario.description or f"{path.name}: {scenario.name}")
    knobs = dash.knobs(scenario)
    chosen = knob_panel(knobs, sid)
    workers = int(st.sidebar.number_input("worker processes (compare, sweep, capacity)", 1, 64,
                                          dash.default_workers(), key="workers"))
    overrides = dash.overrides_for(knobs, chosen)
    try:
        task = dash.task_for(path, overrides)  # every knob through the scenario's own validation
    except ERRORS as exc:
        st.error("This setting cannot be run:\n\n" + str(exc).replace("\n", "  \n"))
        return
    tabs = st.tabs(["Run", "Compare A vs B", "Sweep", "Capacity"])
    for tab, body in zip(tabs, (lambda: run_tab(path, overrides, task), lambda: compare_tab(path, overrides, workers),
                                lambda: sweep_tab(path, overrides, knobs, workers),
                                lambda: capacity_tab(path, overrides, workers)), strict=True):
        with tab:
            try:
                body()
            except ERRORS as exc:
                st.error(str(exc))


main()
