"""The what-if dashboard (app.py, simserve/dashboard.py) and `simserve run --report`.

- Knobs: the untouched page is the scenario as written (no overrides) for every shipped scenario; each feature knob
  makes `--set` overrides the scenario accepts, and a bad setting is the CLI's path-named error.
- Runs: one run is keyed by its resolved scenario's hash (the sweep cache's key), a second time comes from the store,
  and compare reuses its figures.
- The page under Streamlit's AppTest: it loads, runs the quickstart, shows the headline figures and charts, shows a
  setting run before at once, compares A vs B, runs a small sweep and a capacity search, and a bad scenario is a
  message, not a traceback.
- The report: report.html loads nothing from the network and holds every chart; the charts are PNGs.

About 15 s on the 2-core development machine (11 s measured). The browser test is tests/test_dashboard_browser.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from simserve import dashboard as dash
from simserve.cli import main
from simserve.scenario import ScenarioError, load_scenario
from simserve.sweep import SweepError, Tally, make_task, run_tasks

ROOT = Path(__file__).resolve().parent.parent
QUICK = ROOT / "scenarios" / "quickstart.yaml"
SMALL = ["workload.num_requests=120"]


@pytest.mark.parametrize("path", dash.shipped_scenarios(ROOT))
def test_untouched_knobs_are_the_scenario_as_written(path: str) -> None:
    scenario = load_scenario(ROOT / path)
    ks = dash.knobs(scenario)
    assert ks and len({k.key for k in ks}) == len(ks)
    assert dash.overrides_for(ks, dash.defaults_of(ks)) == []


FEATURES = {
    "cluster.pools.0.gpu": "h200", "cluster.pools.0.replicas": 3, "cluster.pools.0.tensor_parallel": 2,
    "cluster.pools.0.prefix_caching": False, "workload.arrival.rate_per_s": 3.0, "workload.mix.0.weight": 2.0,
    "scheduler": "reasoning_aware", "router": "least_kv", "workload.mix.0.max_reasoning_tokens": 2048,
    "workload.mix.0.early_exit.probe_every_tokens": 500, "workload.mix.0.parallel.n": 4,
    "workload.mix.0.parallel.aggregate": "first_finished", "kv_compression.method": "snapkv",
    "kv_compression.budget_share": 0.25, "workload.trace_cache": "semantic", "workload.minting": True,
}


# Knobs that act with another one: the share of a KV compression, the aggregation of n > 1 samples.
WITH = {"kv_compression.budget_share": {"kv_compression.method": "rkv"},
        "workload.mix.0.parallel.aggregate": {"workload.mix.0.parallel.n": 2}}


@pytest.mark.parametrize("key", sorted(FEATURES))
def test_each_knob_is_an_override_the_scenario_accepts(key: str) -> None:
    ks = dash.knobs(load_scenario(QUICK))
    chosen = {**dash.defaults_of(ks), **WITH.get(key, {}), key: FEATURES[key]}
    overrides = dash.overrides_for(ks, chosen)
    assert overrides and all("=" in o for o in overrides)
    resolved = load_scenario(QUICK, overrides).to_yaml()
    assert resolved != load_scenario(QUICK).to_yaml()
    if key in WITH:  # and differently from its partner alone
        alone = dash.overrides_for(ks, {**dash.defaults_of(ks), **WITH[key]})
        assert load_scenario(QUICK, alone).to_yaml() != resolved


def test_every_knob_at_once_runs() -> None:
    ks = dash.knobs(load_scenario(QUICK))
    overrides = dash.overrides_for(ks, {**dash.defaults_of(ks), **FEATURES})
    s = load_scenario(QUICK, [*overrides, "workload.num_requests=40"])
    assert s.cluster.pools[0].gpu == "h200" and s.router.kind == "least_kv"
    mix = s.workload.mix[0]  # type: ignore[index]
    assert mix.parallel is not None and (mix.parallel.n, mix.parallel.aggregate) == (4, "first_finished")
    assert mix.early_exit is not None and mix.early_exit.probe_every_tokens == 500
    assert mix.max_reasoning_tokens == 2048 and mix.concepts is not None
    assert s.workload.trace_cache is not None and s.workload.trace_cache.kind == "semantic"
    assert s.cluster.pools[0].kv_compression is not None and s.cluster.pools[0].kv_compression.method == "snapkv"
    view, cached = dash.run_one(dash.task_for(QUICK, [*overrides, "workload.num_requests=40"]), dash.RunStore())
    assert not cached and view.summary["num_completed"] > 0 and "accuracy" in view.summary


def test_a_bad_setting_is_the_clis_path_named_error() -> None:
    said = r"quickstart.yaml: cluster\.pools\.0\.tensor_parallel: 3 does not divide"
    with pytest.raises((ScenarioError, SweepError), match=said):
        dash.task_for(QUICK, ["cluster.pools.0.tensor_parallel=3"])


def test_a_bad_upload_names_its_file_and_field(tmp_path: Path) -> None:
    text = QUICK.read_text().replace("replicas: 2", "replicas: 0")
    path = dash.save_upload("../../mine.yaml", text.encode(), tmp_path)
    assert path == tmp_path / "mine.yaml"
    with pytest.raises(ScenarioError, match=r"(?s)mine.yaml: .*cluster\.pools\.0\.replicas"):
        load_scenario(path)


def test_one_run_is_cached_by_the_sweep_key_and_compare_reuses_it() -> None:
    store = dash.RunStore()
    task = dash.task_for(QUICK, SMALL)
    assert task.key == make_task(QUICK, SMALL, dash.Point(()), 1).key  # the scenario's own seed
    progress: list[float] = []
    view, cached = dash.run_one(task, store, lambda f, text: progress.append(f))
    assert not cached and view.key == task.key and len(view.requests) == 120
    again, cached = dash.run_one(task, store)
    assert cached and again is view
    tally = Tally()
    run_tasks([task], None, store, tally=tally)
    assert (tally.ran, tally.cached) == (0, 1)  # the figures are in the sweep cache
    labels = {label for label, _, _ in dash.headline(view)}
    assert {"throughput (tok/s)", "goodput", "TTFT p99", "USD per hour", "SLO TTFT <= 2.00 s"} <= labels


def test_the_store_keeps_the_last_views() -> None:
    store = dash.RunStore(max_views=1)
    a, _ = dash.run_one(dash.task_for(QUICK, ["workload.num_requests=30"]), store)
    b, _ = dash.run_one(dash.task_for(QUICK, ["workload.num_requests=31"]), store)
    assert store.view(a.key) is None and store.view(b.key) is b
    assert store.get(a.key) is not None  # figures stay


# ------------------------------------------------------------------------------------------ the page (AppTest)

testing = pytest.importorskip("streamlit.testing.v1")


def page() -> object:
    at = testing.AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    assert not at.exception, at.exception
    at.sidebar.number_input(key="workers").set_value(1)
    return at


def set_knob(at: object, key: str, value: object) -> None:
    at.sidebar.number_input(key=f"scenarios/quickstart.yaml:{key}").set_value(value)  # type: ignore[attr-defined]


def test_the_page_runs_the_quickstart_and_shows_figures_and_charts() -> None:
    at = page()
    assert at.title[0].value.startswith("simserve")  # type: ignore[attr-defined]
    set_knob(at, "workload.num_requests", 150)
    at.run()  # type: ignore[attr-defined]
    assert any("Press Run" in i.value for i in at.info)  # type: ignore[attr-defined]
    at.button(key="run").click().run()  # type: ignore[attr-defined]
    assert not at.exception and not at.error, (at.exception, at.error)  # type: ignore[attr-defined]
    labels = [m.label for m in at.metric]  # type: ignore[attr-defined]
    assert {"throughput (tok/s)", "goodput", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "time to answer p50",
            "time to answer p99", "accuracy", "USD per hour", "USD per 1k requests",
            "USD per right answer"} <= set(labels)
    assert len(at.get("vega_lite_chart")) >= 4  # type: ignore[attr-defined]
    assert len(at.get("download_button")) == 4  # type: ignore[attr-defined]
    # Another setting, then back: the earlier run shows at once, without pressing Run.
    set_knob(at, "cluster.pools.0.replicas", 3)
    at.run()  # type: ignore[attr-defined]
    assert not at.metric  # type: ignore[attr-defined]
    set_knob(at, "cluster.pools.0.replicas", 2)
    at.run()  # type: ignore[attr-defined]
    assert any("from the cache" in c.value for c in at.caption) and at.metric  # type: ignore[attr-defined]


def test_the_page_compares_a_and_b_and_sweeps() -> None:
    at = page()
    set_knob(at, "workload.num_requests", 100)
    at.run()  # type: ignore[attr-defined]
    next(b for b in at.button if b.label.startswith("Pin")).click().run()  # type: ignore[attr-defined]
    set_knob(at, "cluster.pools.0.replicas", 1)
    at.number_input(key="compare_seeds").set_value(2)  # type: ignore[attr-defined]
    at.run()  # type: ignore[attr-defined]
    next(b for b in at.button if b.label == "Compare").click().run()  # type: ignore[attr-defined]
    assert not at.exception and not at.error, (at.exception, at.error)  # type: ignore[attr-defined]
    table = at.dataframe[0].value  # type: ignore[attr-defined]
    assert "ttft_s_p99" in set(table["figure"]) and set(table["significant"]) <= {"yes", "no"}
    row = table.set_index("figure").loc["gpu_busy_share"]
    assert float(row["B"].rstrip("%")) > float(row["A"].rstrip("%"))  # one replica is busier than two
    # A sweep of the replicas per router, one seed.
    at.text_input(key="sweep_values").set_value("1,2")  # type: ignore[attr-defined]
    at.number_input(key="sweep_seeds").set_value(1)  # type: ignore[attr-defined]
    at.run()  # type: ignore[attr-defined]
    next(b for b in at.button if b.label == "Run sweep").click().run()  # type: ignore[attr-defined]
    assert not at.exception and not at.error, (at.exception, at.error)  # type: ignore[attr-defined]
    assert at.get("vega_lite_chart")  # type: ignore[attr-defined]
    summary = at.dataframe[-1].value  # type: ignore[attr-defined]
    assert len(summary) == 4 and set(summary["figure"]) == {"ttft_s_p99"}


def test_the_page_searches_capacity() -> None:
    at = page()
    set_knob(at, "workload.num_requests", 80)
    at.text_area(key="plan_vary").set_value("cluster.pools.0.replicas=1..2")  # type: ignore[attr-defined]
    at.run()  # type: ignore[attr-defined]
    next(b for b in at.button if b.label == "Search").click().run()  # type: ignore[attr-defined]
    assert not at.exception and not at.error, (at.exception, at.error)  # type: ignore[attr-defined]
    assert at.success or at.warning  # type: ignore[attr-defined]
    assert at.get("vega_lite_chart")  # type: ignore[attr-defined]


def test_a_bad_scenario_is_a_message_not_a_traceback() -> None:
    at = page()
    at.sidebar.radio[0].set_value("upload").run()  # type: ignore[attr-defined]
    assert any("Upload or paste" in i.value for i in at.info)  # type: ignore[attr-defined]
    at.sidebar.text_area(key="pasted").set_value(QUICK.read_text().replace("replicas: 2", "replicas: 0")).run()  # type: ignore[attr-defined]
    assert not at.exception  # type: ignore[attr-defined]
    (message,) = [e.value for e in at.error]  # type: ignore[attr-defined]
    said = r"^This scenario cannot be used:\n\npasted\.yaml: .*cluster\.pools\.0\.replicas: Input should be greater"
    assert re.search(said, message, re.S), message


# ------------------------------------------------------------------------------------------ simserve run --report

REMOTE = re.compile(r"""<script[^>]*\bsrc\s*=|\bfrom\s*["']https?://|\bimport\s*\(\s*["']https?://""", re.I)


def test_run_report_is_self_contained_with_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r"
    assert main(["run", str(QUICK), "--set", "workload.num_requests=100", "--report", "--out", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert not REMOTE.search(html)
    assert "window.vegaEmbed" in html and html.count("vegaEmbed('#chart-") == 5
    assert "simserve: quickstart" in html and "TTFT" in html
    pngs = sorted(p.name for p in out.glob("chart-*.png"))
    assert pngs == ["chart-cost.png", "chart-kv-over-time.png", "chart-latency-cdf.png",
                    "chart-latency-over-time.png", "chart-tokens-by-phase.png"]
    assert all((out / p).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    # The folder can be replaced by the next run (report files are simserve's own).
    assert main(["run", str(QUICK), "--set", "workload.num_requests=50", "--out", str(out)]) == 0
    assert not (out / "report.html").exists()
