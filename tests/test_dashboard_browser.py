"""The dashboard in a real browser: `streamlit run app.py` served on 127.0.0.1, driven by headless Chromium through
Playwright for Python. It loads the page, runs the quickstart (a small request count), waits for the charts to be
drawn, pins that setting as A, changes a knob (one replica instead of two), runs again and waits for the new
figures, compares A and B over three seeds, then uploads a bad scenario and waits for its message; a screenshot at
each step (the four in docs/images/dashboard-*.png are these).

It needs Playwright for Python (in the [test] extra) and a Chromium: the Debian package `chromium` (Playwright's
own browser download is not used: the executable is given, from SIMSERVE_CHROMIUM or `chromium` on the PATH). It
skips without them, unless SIMSERVE_REQUIRE_BROWSER=1 (as .ci/run sets, after installing chromium) makes that a
failure. About 20 s on the 2-core development machine; alone:

    python -m pytest -m browser tests/test_dashboard_browser.py

Screenshots go to SIMSERVE_SCREENSHOTS (docs/images for the documentation's) or a temporary folder."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("SIMSERVE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHART = "[data-testid='stVegaLiteChart'] canvas, [data-testid='stVegaLiteChart'] svg"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _needs(what: str) -> None:
    if os.environ.get("SIMSERVE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"SIMSERVE_REQUIRE_BROWSER=1 but {what}")
    pytest.skip(what)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    try:
        import playwright.sync_api  # noqa: F401
        import streamlit  # noqa: F401
    except ImportError:
        _needs("Playwright or Streamlit is not installed: pip install -e '.[test]'")
    if CHROMIUM is None:
        _needs("no Chromium: apt-get install chromium, or set SIMSERVE_CHROMIUM")
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless",
                             "true", "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"streamlit did not start:\n{out}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get("SIMSERVE_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _set_number(page: object, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True)  # type: ignore[attr-defined]
    box.fill(str(value))
    box.press("Enter")


def _wait_idle(page: object, timeout_ms: int = 120_000) -> None:
    """Until the script has finished (Streamlit's status widget says it is running while it runs)."""
    page.wait_for_function(  # type: ignore[attr-defined]
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def _open_tab(page: object, name: str, shows: str, timeout_s: float = 90) -> None:
    """Select a tab and wait until `shows` (text in it) is visible. A click that lands while the script reruns can be
    lost when Streamlit redraws the tab bar, leaving the old tab selected (CI saw it once: "Press Run" found but
    hidden); so click again until the tab's content shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout_s
    while True:
        _wait_idle(page)
        page.get_by_role("tab", name=name, exact=True).click()  # type: ignore[attr-defined]
        try:
            page.get_by_text(shows).first.wait_for(state="visible", timeout=5_000)  # type: ignore[attr-defined]
            return
        except PlaywrightTimeout:
            if time.monotonic() > deadline:
                raise


def test_the_dashboard_in_chromium(server: str, shots: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM is not None  # the server fixture skipped otherwise
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1500, "height": 2300})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server)
        page.get_by_text("simserve: what if?").wait_for(timeout=60_000)
        _set_number(page, "requests", 400)
        _set_number(page, "worker processes (compare, sweep, capacity)", 1)
        _wait_idle(page)
        page.get_by_role("button", name="Run", exact=True).click()
        page.locator(CHART).first.wait_for(timeout=120_000)
        _wait_idle(page)
        page.wait_for_timeout(1500)  # the charts' own drawing
        assert page.locator("[data-testid='stVegaLiteChart']").count() >= 4
        assert page.locator("[data-testid='stMetricLabel']", has_text="TTFT p99").count() == 1
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(shots / "dashboard-run.png"))
        before = page.locator("[data-testid='stMetricValue']").all_inner_texts()
        # Pin this setting as A, then one replica instead of two: not run yet, so no figures until Run is pressed.
        _open_tab(page, "Compare A vs B", "Pin the sidebar's setting as A")
        page.get_by_role("button", name="Pin the sidebar's setting as A").click()
        page.get_by_text("A: workload.num_requests=400 | B:").wait_for(timeout=30_000)
        _wait_idle(page)
        _set_number(page, "replicas", 1)
        _wait_idle(page)
        _open_tab(page, "Run", "Press Run")
        page.get_by_role("button", name="Run", exact=True).click()
        page.locator(CHART).first.wait_for(timeout=120_000)
        _wait_idle(page)
        page.wait_for_timeout(1500)
        after = page.locator("[data-testid='stMetricValue']").all_inner_texts()
        assert after and after != before  # the figures moved (one replica is busier: TTFT and cost change)
        page.screenshot(path=str(shots / "dashboard-one-replica.png"))
        # A (two replicas) against B (one) over three seeds, paired by seed.
        _open_tab(page, "Compare A vs B", "Pin the sidebar's setting as A")
        page.get_by_role("button", name="Compare", exact=True).click()
        page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=120_000)
        _wait_idle(page)
        page.wait_for_timeout(1000)
        assert page.get_by_text("cluster.pools.0.replicas=1").count() >= 1
        page.screenshot(path=str(shots / "dashboard-compare.png"))
        # A bad upload: one message naming the file and the field, no traceback.
        page.get_by_text("upload", exact=True).click()
        _wait_idle(page)
        bad = (ROOT / "scenarios" / "quickstart.yaml").read_text().replace("replicas: 2", "replicas: 0")
        page.locator("input[type=file]").set_input_files(
            files=[{"name": "my-cluster.yaml", "mimeType": "text/yaml", "buffer": bad.encode()}])
        page.get_by_text("cluster.pools.0.replicas: Input should be greater than 0").wait_for(timeout=30_000)
        page.get_by_text("my-cluster.yaml: invalid scenario (1 error)", exact=False).wait_for(timeout=5_000)
        assert page.locator("[data-testid='stException']").count() == 0
        page.screenshot(path=str(shots / "dashboard-bad-upload.png"))
        browser.close()
        assert not errors, errors
