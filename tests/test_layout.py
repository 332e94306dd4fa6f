"""The perf and calibration wings' public surfaces and import direction (STYLE.md): each package's string __all__
matches what it exports; perf never imports calibration; scipy stays in calibration/fitting.py; running a scenario
loads no calibration module."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIMSERVE = ROOT / "simserve"


@pytest.mark.parametrize("name", ["simserve.perf", "simserve.calibration"])
def test_all_matches_the_exports(name: str) -> None:
    pkg = importlib.import_module(name)
    names = pkg.__all__
    assert all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
    assert [n for n in names if not hasattr(pkg, n)] == []
    # Everything public the package defines or re-exports from simserve is listed (not typing or pydantic helpers).
    public = {n for n, v in vars(pkg).items() if not n.startswith("_") and not isinstance(v, ModuleType)
              and str(getattr(v, "__module__", "")).startswith("simserve.")}
    assert public <= set(names), sorted(public - set(names))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


def test_perf_never_imports_calibration_or_scipy() -> None:
    for path in [*sorted((SIMSERVE / "perf").glob("*.py")), SIMSERVE / "hardware.py"]:
        bad = {m for m in imported_modules(path) if m.startswith(("simserve.calibration", "scipy"))}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_scipy_only_in_fitting() -> None:
    for path in sorted((SIMSERVE / "calibration").glob("*.py")):
        if path.name != "fitting.py":
            assert not any(m.startswith("scipy") for m in imported_modules(path)), path.name


def test_running_a_scenario_loads_no_calibration_module() -> None:
    code = ("import sys, simserve\n"
            "s = simserve.load_scenario('scenarios/quickstart.yaml', ['workload.num_requests=20'])\n"
            "simserve.run(s)\n"
            "print(sorted(m for m in sys.modules if m.startswith('simserve.calibration')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
