"""Every chart simserve writes renders offline: `simserve validate`'s chart.html and `simserve calibrate fit`'s
plot carry the Vega libraries inline (no script from a CDN) or are images, and the chart they hold renders."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simserve.calibration import fit_profile, load_profile, write_profile
from simserve.calibration.cli import fit_chart, save_chart
from simserve.calibration.replay import METRICS, comparison_chart
from simserve.hardware import GpuDatasheet

vl_convert = pytest.importorskip("vl_convert")

# A script fetched from the network: <script src="http...">, an ES import from http(s), or a dynamic import.
REMOTE_SCRIPT = re.compile(r"""<script[^>]*\bsrc\s*=\s*["']?(https?:)?//|\bfrom\s*["']https?://|"""
                           r"""\bimport\s*\(\s*["']https?://""", re.IGNORECASE)


def assert_renders_offline(path: Path, num_points: int) -> None:
    """The HTML file loads nothing from the network, and the Vega-Lite spec it embeds renders (by vl-convert, the
    Vega libraries run locally) to an SVG with one symbol per data point."""
    html = path.read_text()
    assert not REMOTE_SCRIPT.search(html), REMOTE_SCRIPT.search(html)
    assert "vegaEmbed(" in html and "vega-embed" in html  # the library itself is in the file
    spec = json.loads(re.search(r"const spec = (\{.*\});\n", html).group(1))  # type: ignore[union-attr]
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")
    svg = vl_convert.vegalite_to_svg(spec)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert svg.count('class="mark-symbol') >= 1 and svg.count("<path") >= num_points


def test_validation_chart_renders_offline(tmp_path):
    rng = np.random.default_rng(0)
    n = 40
    table = pd.DataFrame({"request_id": range(n), "input_tokens": 100, "output_tokens": 50})
    for m in METRICS:
        table[f"{m}_real"] = rng.uniform(0.01, 1.0, n)
        table[f"{m}_sim"] = table[f"{m}_real"] * rng.uniform(0.8, 1.2, n)
    path = save_chart(comparison_chart(table, "test"), tmp_path / "chart.html")
    assert path == tmp_path / "chart.html"
    assert_renders_offline(path, n * len(METRICS))
    png = save_chart(comparison_chart(table, "test"), tmp_path / "chart.png")
    assert png is not None and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_fit_chart_renders_offline(tmp_path):
    sheet = GpuDatasheet(name="synthetic", memory_bytes=80e9, hbm_bandwidth_bytes_per_s=2e12,
                         peak_flops_per_s=500e12, interconnect_bandwidth_bytes_per_s=300e9)
    m, n, k = (a.ravel() for a in np.meshgrid([1, 8, 64, 512], [256, 1024, 4096], [512, 4096]))
    gemm = pd.DataFrame({"m": m, "n": n, "k": k})
    gemm["latency_s"] = 3e-6 + 2 * m * n * k / 400e12 + 2 * (m * k + n * k + m * n) / 1.6e12
    write_profile(tmp_path / "p", {"schema": "simserve-profile/1", "source": {"kind": "synthetic"},
                                   "gpu": sheet.model_dump()}, {"gemm": gemm})
    profile = load_profile(tmp_path / "p")
    path = save_chart(fit_chart(fit_profile(profile, heldout_fraction=0), profile), tmp_path / "fit.html")
    assert path is not None
    assert_renders_offline(path, len(gemm))
    svg = save_chart(fit_chart(fit_profile(profile, heldout_fraction=0), profile), tmp_path / "fit.svg")
    assert svg is not None and ET.fromstring(svg.read_text()).tag.endswith("svg")
