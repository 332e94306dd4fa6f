"""Public surfaces and the import direction (STYLE.md, docs/architecture.md): each package's string __all__ matches
what it exports; data, perf and engine never import the layers above them; scipy stays in calibration/fitting.py;
running a scenario loads neither a calibration module nor scipy."""

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


@pytest.mark.parametrize("name", ["simserve.perf", "simserve.calibration", "simserve.engine", "simserve.workload",
                                  "simserve.quality"])
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


# What each layer may not import: nothing above it (docs/architecture.md).
ABOVE = {
    "request.py": ("simserve.",),
    "hardware.py": ("simserve.workload", "simserve.perf", "simserve.engine", "simserve.sim", "simserve.scenario",
                    "simserve.cli", "simserve.calibration", "simserve.routing", "simserve.schedulers"),
    "quality": ("simserve.workload", "simserve.perf", "simserve.engine", "simserve.sim", "simserve.scenario",
                "simserve.cli", "simserve.calibration", "simserve.routing", "simserve.schedulers", "simserve.metrics",
                "simserve.request", "simserve.hardware"),
    "workload": ("simserve.perf", "simserve.engine", "simserve.sim", "simserve.scenario", "simserve.cli",
                 "simserve.calibration", "simserve.routing", "simserve.schedulers"),
    "perf": ("simserve.engine", "simserve.sim", "simserve.scenario", "simserve.cli", "simserve.calibration",
             "simserve.routing", "simserve.schedulers"),
    "engine": ("simserve.sim", "simserve.scenario", "simserve.cli", "simserve.calibration", "simserve.routing"),
    "metrics.py": ("simserve.engine", "simserve.sim", "simserve.scenario", "simserve.cli", "simserve.perf"),
    "sim.py": ("simserve.scenario", "simserve.cli", "simserve.calibration"),
    "preflight.py": ("simserve.cli", "simserve.calibration"),
    # The many-run library: scenarios and runs in, tables out; no terminal, no result files, no command line.
    "sweep.py": ("simserve.cli", "simserve.calibration", "simserve.report", "simserve.progress", "simserve.output",
                 "simserve.sweep_cli", "simserve.plan", "simserve.charts"),
    "plan.py": ("simserve.cli", "simserve.calibration", "simserve.report", "simserve.progress", "simserve.output",
                "simserve.sweep_cli", "simserve.charts"),
}


def runtime_imports(path: Path) -> set[str]:
    """Modules a file imports at run time (imports under `if TYPE_CHECKING:` are for annotations only)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_no_layer_imports_one_above_it(layer: str) -> None:
    target = SIMSERVE / layer
    paths = sorted(target.glob("*.py")) if target.is_dir() else [target]
    for path in paths:
        bad = {m for m in runtime_imports(path) if m.startswith(ABOVE[layer])}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_scipy_only_in_fitting() -> None:
    for path in sorted((SIMSERVE / "calibration").glob("*.py")):
        if path.name != "fitting.py":
            assert not any(m.startswith("scipy") for m in imported_modules(path)), path.name


def test_running_a_scenario_loads_no_calibration_module() -> None:
    code = ("import sys, simserve\n"
            "s = simserve.load_scenario('scenarios/quickstart.yaml', ['workload.num_requests=20'])\n"
            "simserve.run(s)\n"
            "print(sorted(m for m in sys.modules if m.startswith(('simserve.calibration', 'scipy'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_command_line_parts_are_used_only_by_the_command_line() -> None:
    """report.py, progress.py, output.py and charts.py sit above everything (docs/architecture.md): only the
    commands and the dashboard's logic (dashboard.py, for app.py) import them (and output.py's OutputError,
    json_safe and save_chart serve the calibrate commands too); nothing in simserve imports the dashboard."""
    parts = ("simserve.report", "simserve.progress", "simserve.output", "simserve.charts", "simserve.sweep_cli",
             "simserve.dashboard")
    users = {"cli.py", "sweep_cli.py", "report.py", "progress.py", "output.py", "charts.py", "dashboard.py"}
    for path in sorted(SIMSERVE.rglob("*.py")):
        rel = path.relative_to(SIMSERVE).as_posix()
        bad = {m for m in imported_modules(path) if m.startswith(parts)}
        if rel == "calibration/cli.py":
            bad -= {"simserve.output"}
        assert rel in users or not bad, f"{rel} imports {sorted(bad)}"
