"""Calibration: the profile schema and its errors, the importers, the fit (recovers known coefficients), the
op-level step model (exact over decode runs, MoE and MLA), the shipped fits, and end-to-end replay of real runs."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from simserve import ScenarioError, Simulation, load_scenario
from simserve.calibration import (
    ProfileError,
    fit_profile,
    fit_table,
    import_aiconfigurator,
    import_vidur,
    load_profile,
    validate_fit,
    write_profile,
)
from simserve.hardware import GPUS, MODELS, GpuDatasheet, datasheet_of, model_from_architecture
from simserve.perf import (
    SHIPPED_FITS_DIR,
    TABLES,
    Batch,
    CalibratedPerf,
    CalibratedPerfSpec,
    PerfContext,
    fit_for_gpu,
    load_fit,
    shipped_fits,
    step_quantities,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
AIC = DATA / "gpu-profiles" / "aiconfigurator"
VIDUR = DATA / "gpu-profiles" / "vidur"
E2E = DATA / "e2e-ground-truth"
needs_shared = pytest.mark.skipif(not DATA.exists(), reason=f"shared data not found: {DATA}")

SHEET = GpuDatasheet(name="synthetic", memory_bytes=80e9, hbm_bandwidth_bytes_per_s=2e12, peak_flops_per_s=500e12,
                     interconnect_bandwidth_bytes_per_s=300e9)
META = {"schema": "simserve-profile/1", "source": {"kind": "synthetic"}, "gpu": SHEET.model_dump()}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simserve.cli", *args], capture_output=True, text=True, cwd=ROOT)


# -- the fit recovers known coefficients ---------------------------------------------------------------------
def synthetic_tables() -> dict[str, pd.DataFrame]:
    g = np.array(np.meshgrid([1, 8, 64, 512, 4096], [256, 1024, 4096, 14336], [512, 4096, 8192])).reshape(3, -1)
    gemm = pd.DataFrame({"m": g[0], "n": g[1], "k": g[2]})
    c = np.array(np.meshgrid([1, 4, 16], [16, 256, 2048, 8192], [0, 1024], [8, 32], [8])).reshape(5, -1)
    ctx = pd.DataFrame({"batch_size": c[0], "new_tokens": c[1], "cached_tokens": c[2], "num_heads": c[3],
                        "num_kv_heads": c[4], "head_dim": 128})
    d = np.array(np.meshgrid([1, 8, 64, 256], [16, 512, 8192, 65536], [32, 64], [4, 8])).reshape(4, -1)
    gen = pd.DataFrame({"batch_size": d[0], "kv_tokens": d[1], "num_heads": d[2], "num_kv_heads": d[3],
                        "head_dim": 128})
    a = np.array(np.meshgrid([2, 4, 8], 2.0 ** np.arange(10, 30, 2))).reshape(2, -1)
    ar = pd.DataFrame({"num_gpus": a[0], "message_bytes": a[1]})
    e = np.array(np.meshgrid([1, 64, 4096], [4096, 14336])).reshape(2, -1)
    el = pd.DataFrame({"op": "rmsnorm", "num_tokens": e[0], "width": e[1]})
    return {"gemm": gemm, "context_attention": ctx, "generation_attention": gen, "allreduce": ar, "elementwise": el}


TRUE = {"gemm": [4e-6, 1.25, 1.3], "context_attention": [1.2e-5, 5e-8, 1.6, 2.0],
        "generation_attention": [1.1e-5, 4e-8, 0.5, 1.2], "allreduce": [6e-6, 2.5], "elementwise": [2e-6, 2.2]}


def test_fit_recovers_known_coefficients_of_every_table():
    for name, df in synthetic_tables().items():
        kind = TABLES[name]
        cols = {c: df[c].to_numpy(float) for c in df.columns if c != "op"}
        df = df.assign(latency_s=kind.features(cols, SHEET) @ np.array(TRUE[name]))
        fit = fit_table(name, df.drop(columns=["op"], errors="ignore"), SHEET)
        np.testing.assert_allclose(fit.coef, TRUE[name], rtol=0.01, err_msg=name)
        assert fit.stats["train"]["mape"] < 1e-6, name
        # Exact data leaves nothing for the correction grid.
        if fit.residual is not None:
            assert np.abs(fit.residual).max() < 1e-6


def test_steps_fit_recovers_roofline_coefficients():
    """BLIS-style terms of whole steps (constant, per sequence, weights, linear FLOPs, KV bytes, attention FLOPs).
    A mixture of experts, so the weight bytes a step reads vary and are not collinear with the constant."""
    model = MODELS["qwen3-30b-a3b"]
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(200):
        dec = rng.integers(16, 20000, rng.integers(0, 48))
        n_pre = int(rng.integers(0 if len(dec) else 1, 3))
        new, cached = rng.integers(16, 4096, n_pre), rng.integers(0, 8192, n_pre)
        q = step_quantities(model, Batch(dec, new, cached))
        rows.append({"num_seqs": q.num_seqs, "weight_bytes": q.weight_bytes, "linear_flops": q.linear_flops,
                     "kv_bytes": q.kv_bytes, "attention_flops": q.attention_flops})
    df = pd.DataFrame(rows)
    true = np.array([8e-4, 2e-5, 1.2, 1.4, 1.3, 1.8])
    x = TABLES["steps"].features({c: df[c].to_numpy(float) for c in df.columns}, SHEET)
    fit = fit_table("steps", df.assign(latency_s=x @ true), SHEET)
    np.testing.assert_allclose(fit.coef, true, rtol=0.01)


def test_fit_profile_reports_heldout_error_and_round_trips(tmp_path):
    tables = synthetic_tables()
    for name, df in tables.items():
        cols = {c: df[c].to_numpy(float) for c in df.columns if c != "op"}
        noise = np.exp(np.random.default_rng(1).normal(0, 0.02, len(df)))
        tables[name] = df.assign(latency_s=TABLES[name].features(cols, SHEET) @ np.array(TRUE[name]) * noise)
    write_profile(tmp_path / "p", META, tables)
    fit = fit_profile(load_profile(tmp_path / "p"))
    for name in ("gemm", "context_attention", "generation_attention"):
        held = fit.tables[name].stats["heldout"]
        assert held["n"] > 0 and held["mape"] < 0.05, (name, held)
    fit.save(tmp_path / "f.yaml")
    again = load_fit(tmp_path / "f.yaml")
    report = validate_fit(again, load_profile(tmp_path / "p"))
    assert set(report) >= {"gemm", "context_attention", "generation_attention", "allreduce", "overall"}
    assert report["overall"]["mape"] < 0.05
    for name, t in fit.tables.items():
        np.testing.assert_allclose(again.tables[name].coef, t.coef)


# -- profile errors ------------------------------------------------------------------------------------------
def test_corrupt_or_incomplete_profiles_get_clear_errors(tmp_path):
    good = synthetic_tables()["gemm"].assign(latency_s=1e-5)
    write_profile(tmp_path / "ok", META, {"gemm": good})
    cases = {
        "no metadata": (lambda p: (p / "metadata.yaml").unlink(), "metadata.yaml: missing"),
        "bad schema": (lambda p: (p / "metadata.yaml").write_text(yaml.safe_dump({**META, "schema": "x/2"})),
                       "schema: expected"),
        "no gpu bandwidth": (lambda p: (p / "metadata.yaml").write_text(yaml.safe_dump(
            {**META, "gpu": {k: v for k, v in SHEET.model_dump().items() if k != "hbm_bandwidth_bytes_per_s"}})),
            "gpu.hbm_bandwidth_bytes_per_s"),
        "missing column": (lambda p: good.drop(columns=["k"]).to_csv(p / "gemm.csv", index=False),
                           "missing column(s) k"),
        "unknown column": (lambda p: good.assign(extra=1).to_csv(p / "gemm.csv", index=False),
                           "unknown column(s) extra"),
        "text latency": (lambda p: good.astype({"latency_s": object}).assign(latency_s="fast").to_csv(
            p / "gemm.csv", index=False), "column latency_s: expected a number"),
        "negative": (lambda p: good.assign(m=-1).to_csv(p / "gemm.csv", index=False), "column m: expected a positive"),
        "bad status": (lambda p: good.assign(status="maybe").to_csv(p / "gemm.csv", index=False),
                       "column status"),
        "empty": (lambda p: (p / "gemm.csv").unlink(), "no measured rows"),
    }
    for name, (corrupt, message) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        shutil.copytree(tmp_path / "ok", folder)
        corrupt(folder)
        with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_profile(folder)
        out = run_cli("calibrate", "fit", str(folder), "--out", str(tmp_path / "f.yaml"))
        assert out.returncode == 2 and "Traceback" not in out.stderr and message.split(":")[0] in out.stderr, name


def test_oom_rows_are_kept_in_the_file_and_left_out_of_the_fit(tmp_path):
    df = synthetic_tables()["gemm"].assign(latency_s=1e-5, status="ok")
    df.loc[0, "latency_s"] = np.nan
    df.loc[0, "status"] = "oom"
    write_profile(tmp_path / "p", META, {"gemm": df})
    p = load_profile(tmp_path / "p")
    assert len(p["gemm"]) == len(df) - 1 and p.skipped_rows["gemm"] == 1


def test_steps_rows_are_checked(tmp_path):
    steps = pd.DataFrame({"decode_context_tokens": ["10 20", ""], "prefill_new_tokens": ["", "5 6"],
                          "prefill_cached_tokens": ["", "0"], "latency_s": [1e-3, 2e-3]})
    write_profile(tmp_path / "ok", META, {"steps": steps.iloc[:1]})
    with pytest.raises(ProfileError, match="prefill_new_tokens has 2 entries but prefill_cached_tokens 1"):
        write_profile(tmp_path / "bad", META, {"steps": steps})


# -- importers read the published formats exactly ------------------------------------------------------------
@needs_shared
def test_aiconfigurator_import_converts_units_exactly(tmp_path):
    src = tmp_path / "h100_sxm"
    src.mkdir()
    for f in ("gemm_perf", "context_attention_perf", "generation_attention_perf", "custom_allreduce_perf"):
        df = pd.read_csv(AIC / "h100_sxm" / f"{f}.csv")
        df.iloc[::400 if len(df) > 1000 else 7].to_csv(src / f"{f}.csv", index=False)
    meta, tables = import_aiconfigurator(src)
    assert meta["gpu"]["preset"] == "h100-sxm"
    raw = pd.read_csv(src / "generation_attention_perf.csv")
    gen = tables["generation_attention"]
    np.testing.assert_array_equal(gen.kv_tokens, raw.isl + raw.step)
    np.testing.assert_allclose(gen.latency_s, raw.latency / 1000)
    ar_raw = pd.read_csv(src / "custom_allreduce_perf.csv")
    ar_raw = ar_raw[ar_raw.backend == "vllm_graph"]
    np.testing.assert_array_equal(tables["allreduce"].message_bytes, ar_raw.message_size * 2)
    g_raw = pd.read_csv(src / "gemm_perf.csv")
    np.testing.assert_allclose(tables["gemm"].latency_s, g_raw.latency / 1000)
    assert (tables["context_attention"].new_tokens.to_numpy() ==
            pd.read_csv(src / "context_attention_perf.csv").isl.to_numpy()).all()
    write_profile(tmp_path / "out", meta, tables)
    assert set(load_profile(tmp_path / "out").tables) == {"gemm", "context_attention", "generation_attention",
                                                          "allreduce"}


@needs_shared
def test_vidur_import_derives_gemm_shapes_and_averages_repeats(tmp_path):
    src = tmp_path / "vidur" / "a100"
    (src / "Meta-Llama-3-8B").mkdir(parents=True)
    mlp = pd.read_csv(VIDUR / "a100" / "Meta-Llama-3-8B" / "mlp.csv")
    rows = mlp[(mlp.num_tensor_parallel_workers == 2) & (mlp.num_tokens.isin([1, 2048]))]
    rows.to_csv(src / "Meta-Llama-3-8B" / "mlp.csv", index=False)
    _, tables = import_vidur(src, "a100-80gb")
    gemm = tables["gemm"]
    # Llama-3-8B at TP 2: QKV n = (32 + 2 x 8) x 128 / 2 = 3072, k = 4096; gate+up n = 2 x 14336 / 2 = 14336.
    qkv = gemm[(gemm.n == 3072) & (gemm.k == 4096) & (gemm.m == 2048)]
    want = rows[rows.num_tokens == 2048]["time_stats.attn_pre_proj.median"].mean() / 1000
    assert len(qkv) == 1 and qkv.latency_s.iloc[0] == pytest.approx(want)
    assert set(map(tuple, gemm[["n", "k"]].to_numpy())) == {(3072, 4096), (4096, 2048), (14336, 4096), (4096, 7168)}
    assert set(tables["elementwise"].op) == {"rmsnorm", "rope", "silu_mul", "add"}


# -- the op-level step model ---------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name,tp", [("llama-3.1-8b", 1), ("llama-3.1-70b", 4), ("qwen3-30b-a3b", 1),
                                           ("deepseek-r1", 8), ("gpt-oss-120b", 2)])
def test_decode_runs_equal_single_steps(model_name, tp):
    perf = CalibratedPerfSpec().build(PerfContext(GPUS["h100-sxm"], MODELS[model_name], tp))
    ctx = np.array([17, 900, 4000, 12000])
    runs = perf.decode_run_times_s(ctx, 50)
    single = [perf.step_time_s(Batch(ctx + s, np.zeros(0, np.int64), np.zeros(0, np.int64))) for s in range(50)]
    np.testing.assert_array_equal(runs, single)  # to the last bit: fast-forward equals stepping
    assert (np.diff(runs) >= -1e-15).all()  # longer contexts never make a step faster


def test_step_time_grows_with_the_batch_and_is_plausible():
    perf = CalibratedPerfSpec().build(PerfContext(GPUS["h100-sxm"], MODELS["llama-3.1-8b"]))
    empty = np.zeros(0, np.int64)
    one = perf.step_time_s(Batch(np.array([1000]), empty, empty))
    many = perf.step_time_s(Batch(np.full(128, 1000), empty, empty))
    prefill = perf.step_time_s(Batch(empty, np.array([8192]), np.array([0])))
    # 16 GB of weights at ~3 TB/s: 5-9 ms per decode step; an 8k-token prefill is compute bound (~0.13 PFLOP).
    assert 0.004 < one < 0.009 and one < many < 3 * one and 0.1 < prefill < 0.4


def test_moe_reads_fewer_weight_bytes_at_batch_1_than_256():
    m = MODELS["qwen3-30b-a3b"]
    assert m.weight_bytes_read(1) < 0.2 * m.weight_bytes_read(256)
    assert m.weight_bytes_read(256) <= m.weight_bytes + 1
    assert m.weight_bytes_read(1) == pytest.approx(m.active_params * m.bytes_per_value, rel=0.1)
    perf = CalibratedPerfSpec().build(PerfContext(GPUS["h100-sxm"], m))
    costs = perf.token_costs_s(np.array([1.0, 256.0]))
    assert costs[0] < costs[1] / 3  # batch 1 touches 8 experts a layer, batch 256 nearly all 128
    ep = CalibratedPerfSpec().build(PerfContext(GPUS["h100-sxm"], MODELS["qwen3-235b-a22b"], 8, expert_parallel=True))
    assert ep.token_costs_s(np.array([64.0]))[0] > 0


def test_deepseek_r1_kv_bytes_follow_the_mla_formula():
    m = MODELS["deepseek-r1"]
    assert m.kv_bytes_per_token == 61 * (512 + 64) * 2  # layers x (latent + rotary key) x BF16
    gqa = MODELS["llama-3.1-70b"]
    assert gqa.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    assert m.weight_bytes == 671e9  # FP8


def test_shipped_fits_and_porting():
    assert set(shipped_fits()) >= {"a100-80gb", "h100-sxm"}
    h100 = fit_for_gpu(GPUS["h100-sxm"])
    assert h100.gpu.name == "h100-sxm" and h100.step_overhead_s > 0
    b200 = fit_for_gpu(GPUS["b200"])  # no fit: the nearest (H100) ported by datasheet
    assert b200.gpu.name == "b200" and b200.source["ported_from"] == "h100-sxm"
    empty = np.zeros(0, np.int64)
    batch = Batch(np.full(64, 4000), empty, empty)
    t_h100 = CalibratedPerf(h100, MODELS["llama-3.1-8b"], 1, 0.0).step_time_s(batch)
    t_b200 = CalibratedPerf(b200, MODELS["llama-3.1-8b"], 1, 0.0).step_time_s(batch)
    assert 1.5 < t_h100 / t_b200 < 2.6  # memory bound: about the bandwidth ratio 8 / 3.35
    a100 = CalibratedPerf(fit_for_gpu(GPUS["a100-80gb"]), MODELS["llama-3.1-8b"], 1, 0.0).step_time_s(batch)
    assert a100 > t_h100
    assert datasheet_of(GPUS["h200"]).hbm_bandwidth_bytes_per_s == 4.8e12


def test_scenario_with_a_missing_fit_file_is_a_clear_error(tmp_path):
    scen = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    scen["perf"] = {"kind": "calibrated", "fit": "nope.yaml"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scen))
    out = run_cli("check", str(path))
    assert out.returncode == 2 and "perf.fit" in out.stderr and "nope.yaml" in out.stderr



def test_a_fit_named_after_the_gpu_in_fits_dir_wins_over_the_shipped_one(tmp_path):
    """perf.fits_dir, relative to the scenario: `<gpu preset>.yaml` there is the pool's fit; a GPU with no file
    there keeps its shipped fit; a missing folder, or fits_dir beside fit, is a clear error."""
    mine = load_fit(shipped_fits()["h100-sxm"])
    mine.step_overhead_s = 0.0123
    mine.save(tmp_path / "my-fits" / "h100-sxm.yaml")
    scen = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    scen["cluster"]["pools"] = [{"name": "h100", "gpu": "h100-sxm"}, {"name": "a100", "gpu": "a100-80gb"}]
    scen["perf"] = {"kind": "calibrated", "fits_dir": "my-fits"}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scen))
    scenario = load_scenario(path)
    h100, a100 = (r.perf for r in Simulation(scenario, scenario.base_dir).replicas)
    assert isinstance(h100, CalibratedPerf) and isinstance(a100, CalibratedPerf)
    assert h100.overhead_s == 0.0123 and h100.fit.path == tmp_path / "my-fits" / "h100-sxm.yaml"
    assert a100.fit.path == shipped_fits()["a100-80gb"]
    assert yaml.safe_load(scenario.to_yaml())["perf"]["fits_dir"] == str(tmp_path / "my-fits")
    scen["perf"]["fits_dir"] = "nowhere"
    path.write_text(yaml.safe_dump(scen))
    with pytest.raises(ScenarioError, match="perf.fits_dir: .*nowhere: no such folder of fits"):
        load_scenario(path)
    scen["perf"]["fit"] = "my-fits/h100-sxm.yaml"
    path.write_text(yaml.safe_dump(scen))
    with pytest.raises(ScenarioError, match="not both"):
        load_scenario(path)


def test_calibrate_fit_refuses_to_write_into_the_installed_package(tmp_path):
    target = SHIPPED_FITS_DIR / "mine.yaml"
    out = run_cli("calibrate", "fit", "calibration/profiles/a100-80gb", "--out", str(target))
    assert out.returncode == 2 and "installed data folder" in out.stderr and "Traceback" not in out.stderr
    assert not target.exists()
    out = run_cli("calibrate", "fit", "calibration/profiles/a100-80gb", "--out", str(tmp_path / "f.yaml"), "--plot",
                  str(SHIPPED_FITS_DIR.parent / "chart.html"))
    assert out.returncode == 2 and "--plot" in out.stderr and not (tmp_path / "f.yaml").exists()
    out = run_cli("calibrate", "fit", "calibration/profiles/a100-80gb", "--out", str(tmp_path / "f.yaml"), "--plot",
                  str(tmp_path / "chart.pdf"))  # a chart is .html, .png or .svg, said before any fitting
    assert out.returncode == 2 and ".html, .png, .svg" in out.stderr and not (tmp_path / "f.yaml").exists()


# -- validation commands -------------------------------------------------------------------------------------
@needs_shared
def test_op_level_validate_command_writes_per_table_errors(tmp_path):
    out = run_cli("calibrate", "validate", str(shipped_fits()["a100-80gb"]), "--profiles",
                  "calibration/profiles/h100-sxm", "--gpu", "h100-sxm", "--out", str(tmp_path / "r.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    for table in ("gemm", "context_attention", "generation_attention", "allreduce", "overall"):
        assert set(report[table]) == {"n", "mape", "p90_ape"} and report[table]["n"] > 0
    assert report["gpu"] == "h100-sxm"


def test_shipped_fits_meet_the_in_gpu_heldout_error():
    h100 = load_fit(shipped_fits()["h100-sxm"])
    assert h100.source["heldout_overall"]["mape"] <= 0.05
    for name in ("gemm", "context_attention", "generation_attention"):
        assert h100.tables[name].stats["heldout"]["mape"] <= 0.05


@needs_shared
def test_experiment_missing_a_field_gets_a_clear_error(tmp_path):
    exp = tmp_path / "exp"
    shutil.copytree(E2E / "h100-llama2-7b-tp1-mixed", exp)
    meta = json.loads((exp / "experiment.json").read_text())
    del meta["engine"]["max_num_seqs"]
    (exp / "experiment.json").write_text(json.dumps(meta))
    out = run_cli("validate", str(exp), "--out", str(tmp_path / "v"))
    assert out.returncode == 2 and "engine.max_num_seqs: missing" in out.stderr and "Traceback" not in out.stderr
    meta["engine"]["max_num_seqs"] = 256
    del meta["model_architecture"]["num_layers"]
    (exp / "experiment.json").write_text(json.dumps(meta))
    out = run_cli("validate", str(exp), "--out", str(tmp_path / "v"))
    assert out.returncode == 2 and "model_architecture: missing field(s) num_layers" in out.stderr


@needs_shared
def test_e2e_replay_of_a_real_vllm_run(tmp_path):
    out = run_cli("validate", str(E2E / "rtxpro6000-llama31-8b-tp1"), "--out", str(tmp_path / "v"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "v" / "validation.json").read_text())
    for m in ("ttft_s", "tpot_s", "e2e_s"):
        for st in ("mean", "p50", "p90", "p99"):
            assert {f"{m}_{st}_real", f"{m}_{st}_sim", f"{m}_{st}_rel_error"} <= set(report)
    assert report["num_completed_sim"] == report["num_requests_real"] == 300
    # A GPU with no preset and no fit (RTX PRO 6000, from its datasheet block): still within 10% on TPOT and e2e.
    assert report["tpot_s_mean_rel_error"] < 0.10 and report["e2e_s_mean_rel_error"] < 0.10
    table = pd.read_csv(tmp_path / "v" / "per_request.csv")
    assert len(table) == 300 and table.e2e_s_sim.notna().all()
    chart = (tmp_path / "v" / "chart.html").read_text()  # self-contained: tests/test_charts.py renders such files
    assert "vegaEmbed(" in chart and not re.search(r"<script[^>]*src=[\"']?https?:", chart)
    assert "chart.html" in out.stdout


@needs_shared
def test_model_from_architecture_block():
    meta = json.loads((E2E / "h100-codellama34b-tp1-prefixheavy" / "experiment.json").read_text())
    m = model_from_architecture(meta["model_architecture"])
    assert (m.num_layers, m.hidden_size, m.num_kv_heads, m.ffn_size, m.vocab_size) == (48, 8192, 8, 22016, 32000)


def test_data_parallel_attention_for_mla():
    """DeepSeek-R1 on 8 x H200: TP attention replicates MLA's latent on every GPU; data-parallel attention keeps
    one copy per sequence (8x the KV capacity) and reads 8x less KV per GPU at decode."""
    from simserve.hardware import kv_capacity_blocks

    gpu, model = GPUS["h200"], MODELS["deepseek-r1"]
    tp_blocks = kv_capacity_blocks(gpu, model, 8, 0.9, 16, 4e9)
    dp_blocks = kv_capacity_blocks(gpu, model, 8, 0.9, 16, 4e9, data_parallel_attention=True)
    assert tp_blocks > 0 and dp_blocks // 8 == tp_blocks
    spec = CalibratedPerfSpec()
    tp = spec.build(PerfContext(gpu, model, 8))
    dp = spec.build(PerfContext(gpu, model, 8, data_parallel_attention=True))
    ctx = np.full(256, 20000)
    empty = np.zeros(0, np.int64)
    assert dp.step_time_s(Batch(ctx, empty, empty)) < tp.step_time_s(Batch(ctx, empty, empty))
    runs = dp.decode_run_times_s(ctx, 20)
    single = [dp.step_time_s(Batch(ctx + s, empty, empty)) for s in range(20)]
    np.testing.assert_array_equal(runs, single)  # to the last bit: fast-forward equals stepping


def test_pool_parallelism_options_reach_the_step_model(tmp_path):
    from simserve import parse_scenario
    from simserve.sim import Simulation

    scen = yaml.safe_load((ROOT / "scenarios" / "quickstart.yaml").read_text())
    scen["model"] = "deepseek-r1"
    scen["cluster"]["pools"][0].update(gpu="h200", tensor_parallel=8, data_parallel_attention=True,
                                       expert_parallel=True, replicas=1)
    scen["workload"]["num_requests"] = 20
    sim = Simulation(parse_scenario(scen))
    perf = sim.replicas[0].perf
    assert isinstance(perf, CalibratedPerf) and perf.data_parallel_attention and perf.expert_parallel
    res = sim.run()
    assert res.summary["num_completed"] == 20


def test_compute_scale_slows_compute_bound_steps_only(tmp_path):
    fit = load_fit(shipped_fits()["h100-sxm"])
    assert 1.0 <= fit.compute_scale < 1.3 and "prefill" in fit.source["compute_scale"]
    empty = np.zeros(0, np.int64)
    prefill, decode = Batch(empty, np.array([4096]), np.array([0])), Batch(np.full(8, 2000), empty, empty)
    times = {}
    for scale in (1.0, 1.2):
        fit.compute_scale = scale
        path = fit.save(tmp_path / f"f{scale}.yaml")
        perf = CalibratedPerf(load_fit(path), MODELS["llama-3.1-8b"], 1, 0.0)
        times[scale] = (perf.step_time_s(prefill), perf.step_time_s(decode))
    assert times[1.2][0] > 1.1 * times[1.0][0]  # compute bound: nearly the full factor
    assert times[1.2][1] < 1.02 * times[1.0][1]  # weight streaming: barely


@needs_shared
def test_overhead_and_compute_scale_are_recovered_from_a_real_run():
    """The two numbers kernel profiles cannot see, fitted on the H100 llama2-7b run (root finding, coarser than
    the shipped fit used): close to the shipped values, and the fitted overhead brings mean TPOT to the real one."""
    from simserve.calibration import fit_compute_scale, fit_step_overhead, validate_experiment

    exp = E2E / "h100-llama2-7b-tp1-mixed"
    fit = str(shipped_fits()["h100-sxm"])
    scale = fit_compute_scale(exp, fit, 0.00076, xtol=0.01)
    assert scale is not None and 1.0 < scale < 1.2
    overhead = fit_step_overhead(exp, fit, xtol_s=4e-5)
    assert 0.0005 < overhead < 0.001
    report, _, _ = validate_experiment(exp, "calibrated", overhead)
    assert report["tpot_s_mean_rel_error"] < 0.01


def test_shipped_a100_fit_meets_the_in_gpu_heldout_error():
    a100 = load_fit(shipped_fits()["a100-80gb"])
    assert a100.source["heldout_overall"]["mape"] <= 0.05


# -- a GPU's step model fitted on one served run (calibrate fit --from-run) --------------------------------------
def test_bandwidth_scale_slows_memory_bound_steps_only(tmp_path):
    """bandwidth_scale divides the memory bandwidth of every bytes term: a decode step of weight streaming slows
    by nearly the full factor, a 4096-token prefill (compute bound) barely; saved and loaded with the fit."""
    fit = load_fit(shipped_fits()["h100-sxm"])
    assert fit.bandwidth_scale == 1.0
    empty = np.zeros(0, np.int64)
    prefill, decode = Batch(empty, np.array([4096]), np.array([0])), Batch(np.full(8, 2000), empty, empty)
    times = {}
    for scale in (1.0, 1.25):
        fit.bandwidth_scale = scale
        loaded = load_fit(fit.save(tmp_path / f"b{scale}.yaml"))
        assert loaded.bandwidth_scale == scale
        perf = CalibratedPerf(loaded, MODELS["llama-3.1-8b"], 1, 0.0)
        times[scale] = (perf.step_time_s(prefill), perf.step_time_s(decode))
    assert times[1.25][1] > 1.2 * times[1.0][1]  # weight and KV streaming: nearly the full factor
    assert times[1.25][0] < 1.05 * times[1.0][0]  # compute bound: barely


def test_replay_schedules_asynchronously_from_vllm_0_14():
    """vLLM turned async scheduling on by default in 0.14.0: the replay of a run follows the run's version
    unless the run records the setting."""
    from simserve.calibration.replay import async_scheduling_of

    assert async_scheduling_of({"name": "vLLM", "version": "0.19.0"})
    assert async_scheduling_of({"name": "vLLM", "version": "0.14.0"})
    assert not async_scheduling_of({"name": "vLLM", "version": "0.11.0"})
    assert not async_scheduling_of({"name": "vLLM", "version": "0.19.0", "async_scheduling": False})
    assert async_scheduling_of({"name": "vLLM", "version": "0.11.0", "async_scheduling": True})
    assert not async_scheduling_of({"name": "sglang", "version": "0.4.0"})
    assert not async_scheduling_of({"name": "vLLM", "version": "main"})


SIM_SHEET = {"name": "test-gpu", "memory_bytes": 48e9, "hbm_bandwidth_bytes_per_s": 1.0e12,
             "bf16_dense_flops_per_s": 200e12}


def simulated_run(folder: Path, compute_scale: float, bandwidth_scale: float) -> Path:
    """An experiment folder whose 'measured' latencies are simserve's own replay of it with known factors on the
    nearest shipped fit, ported: long prompts (TTFT mostly prefill: compute) and a few hundred output tokens
    (TPOT mostly weight streaming: bandwidth), at a load that queues now and then."""
    from simserve.calibration import load_experiment, validate_experiment

    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    n = 60
    arch = MODELS["llama-3.1-8b"]
    meta = {"engine": {"name": "vLLM", "version": "0.11.0", "model": "llama", "max_num_seqs": 64,
                       "max_num_batched_tokens": 2048, "block_size": 16, "tensor_parallel_size": 1},
            "model_architecture": {"num_layers": arch.num_layers, "hidden_size": arch.hidden_size,
                                   "num_attention_heads": arch.num_attention_heads,
                                   "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim,
                                   "intermediate_size": arch.ffn_size, "vocab_size": arch.vocab_size,
                                   "num_params": arch.num_params, "bytes_per_param": 2},
            "gpu_datasheet": SIM_SHEET}
    (folder / "experiment.json").write_text(json.dumps(meta))
    req = pd.DataFrame({"request_id": np.arange(n), "arrival_s": np.cumsum(rng.exponential(0.6, n)),
                        "input_tokens": rng.integers(1500, 5000, n), "output_tokens": rng.integers(100, 400, n)})
    req[["ttft_s", "tpot_s", "e2e_s"]] = 0.0
    req.to_csv(folder / "requests.csv", index=False)
    _, table, _ = validate_experiment(load_experiment(folder), "calibrated", None, None, compute_scale,
                                      bandwidth_scale)
    for m in ("ttft_s", "tpot_s", "e2e_s"):
        req[m] = table[f"{m}_sim"].to_numpy()
    req.to_csv(folder / "requests.csv", index=False)
    return folder


def test_run_fit_recovers_known_factors_from_a_simulated_run(tmp_path):
    """A run simulated with compute_scale 1.3 and bandwidth_scale 0.8: fitting from the port's (1, 1) finds both
    within 3%, and its replay of the run matches mean TTFT and TPOT within 0.5%."""
    from simserve.calibration import fit_from_run, validate_with_fit

    run = simulated_run(tmp_path / "run", 1.3, 0.8)
    rf = fit_from_run(run)
    assert rf.fit.compute_scale == pytest.approx(1.3, rel=0.03)
    assert rf.fit.bandwidth_scale == pytest.approx(0.8, rel=0.03)
    assert rf.fit.source["run"] == "run" and rf.fit.source["ported_from"] == "a100-80gb"  # says where it came from
    report = validate_with_fit(run, rf.fit)
    assert report["ttft_s_mean_rel_error"] < 0.005 and report["tpot_s_mean_rel_error"] < 0.005


def test_calibrate_fit_from_run_command(tmp_path):
    """`simserve calibrate fit --from-run` writes a fit a scenario can use and reports in- and out-of-sample
    errors; a profile and a run together, or neither, are refused."""
    run = simulated_run(tmp_path / "run", 1.0, 1.2)
    other = simulated_run(tmp_path / "other", 1.0, 1.2)
    out = tmp_path / "fits" / "test-gpu.yaml"
    res = run_cli("calibrate", "fit", "--from-run", str(run), "--out", str(out), "--validate-on", str(other))
    assert res.returncode == 0, res.stderr
    assert "(fitted on)" in res.stdout and "(held out)" in res.stdout
    assert load_fit(out).bandwidth_scale == pytest.approx(1.2, rel=0.05)
    both = run_cli("calibrate", "fit", str(tmp_path), "--from-run", str(run), "--out", str(out))
    neither = run_cli("calibrate", "fit", "--out", str(out))
    assert both.returncode != 0 and "not both" in both.stderr
    assert neither.returncode != 0 and "--from-run" in neither.stderr


@needs_shared
def test_leave_one_run_out_errors_are_the_documented_ones():
    """Fit on one RTX 4090 run, replay the other (docs/calibration.md, `python bench/fit_from_runs.py`): the
    figures the page gives. A drift of a tenth of a point fails; say why on the page when it moves."""
    from simserve.calibration import fit_from_run, validate_with_fit

    fit = fit_from_run(E2E / "rtx4090-llama31-8b-tp1-seqs256").fit
    assert (round(fit.compute_scale, 3), round(fit.bandwidth_scale, 3)) == (0.829, 0.798)
    report = validate_with_fit(E2E / "rtx4090-llama31-8b-tp1-seqs128", fit)
    got = {k: round(100 * report[f"{k}_rel_error"], 1) for k in ("ttft_s_mean", "tpot_s_mean", "e2e_s_mean",
                                                                  "e2e_s_p99")}
    assert got == {"ttft_s_mean": 6.1, "tpot_s_mean": 2.5, "e2e_s_mean": 3.6, "e2e_s_p99": 3.4}
