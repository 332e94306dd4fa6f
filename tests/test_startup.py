"""Start-up: `simserve --help`, `--version` and `check` load no heavy library (pandas, scipy, pyarrow), so they
answer in well under a second; the lazy public surfaces still hold every name they list."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "scipy", "pyarrow", "altair", "simpy", "rich.table")


def loaded_after(code: str) -> set[str]:
    """Top-level modules (and rich.table) in sys.modules after running `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             "print(' '.join(sorted(m for m in sys.modules if '.' not in m or m == 'rich.table')))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def cli_code(*args: str) -> str:
    return ("from simserve.cli import main\n"
            f"try:\n    main({list(args)!r})\nexcept SystemExit:\n    pass")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["calibrate", "fit", "--help"]])
def test_help_and_version_import_no_heavy_library(args):
    loaded = loaded_after(cli_code(*args))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
    assert not any(m.startswith("simserve.scenario") for m in loaded)


def test_check_imports_neither_scipy_nor_pyarrow_nor_pandas():
    loaded = loaded_after(cli_code("check", "scenarios/quickstart.yaml"))
    assert not loaded & {"pandas", "scipy", "pyarrow", "simpy"}, sorted(loaded & {"pandas", "scipy", "pyarrow"})


def test_parsing_a_scenario_imports_no_numpy_submodule_it_does_not_use():
    """numpy.ma (15 ms: `np.unique` imports it) and numpy.polynomial (3-6 ms) were imported at start-up by
    module-level constants; they are made without them, or on first use."""
    probe = ("import sys, simserve\n"
             "simserve.load_scenario('bench/blis/blis-speed.yaml')\n"
             "simserve.load_scenario('scenarios/quickstart.yaml')\n"
             "unused = (['numpy', 'ma'], ['numpy', 'polynomial'])\n"
             "print(' '.join(m for m in sys.modules if m.split('.')[:2] in unused))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == []


def test_help_time_is_well_under_a_second():
    """The whole process, interpreter start included (0.04 s measured; 2.4 s before start-up was trimmed)."""
    best = min(_timed([sys.executable, "-m", "simserve.cli", "--help"]) for _ in range(3))
    assert best < 0.5, best


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=60)
    return time.perf_counter() - t0


def test_version():
    out = subprocess.run([sys.executable, "-m", "simserve.cli", "--version"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    import simserve

    assert out.returncode == 0
    assert out.stdout.strip() == f"simserve {simserve.__version__}"


@pytest.mark.parametrize("name", ["simserve", "simserve.calibration"])
def test_lazy_names_all_load(name):
    pkg = importlib.import_module(name)
    assert [n for n in pkg.__all__ if getattr(pkg, n, None) is None] == []
    with pytest.raises(AttributeError):
        pkg.not_a_name  # noqa: B018


def test_importer_names_match_the_importers():
    from simserve.calibration.cli import IMPORTER_NAMES
    from simserve.calibration.importers import IMPORTERS

    assert IMPORTER_NAMES == tuple(IMPORTERS)


def test_input_errors_name_real_exception_classes():
    from simserve.cli import INPUT_ERRORS

    for module, name in INPUT_ERRORS.items():
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, Exception), (module, name)


def _blas_thread_cpu_ticks(env: dict[str, str]) -> tuple[str, int]:
    """OPENBLAS_THREAD_TIMEOUT after `import simserve` and a short run, and the CPU clock ticks of every thread but
    the main one (OpenBLAS's workers, once idle), in a fresh interpreter."""
    probe = ("import os, time, simserve\n"
             "simserve.run(simserve.load_scenario('scenarios/quickstart.yaml', ['workload.num_requests=50']))\n"
             "time.sleep(0.3)\n"
             "ticks = [int(open(f'/proc/self/task/{t}/stat').read().split(')')[1].split()[11])\n"
             "         for t in os.listdir('/proc/self/task') if int(t) != os.getpid()]\n"
             "print(os.environ['OPENBLAS_THREAD_TIMEOUT'], sum(ticks))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in {**os.environ, **env}.items() if v})
    assert out.returncode == 0, out.stderr
    value, ticks = out.stdout.split()
    return value, int(ticks)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads per-thread CPU from /proc (Linux)")
def test_numpys_idle_blas_threads_sleep_at_once_unless_the_user_says_otherwise():
    # Spinning, OpenBLAS's idle workers take about 10 ticks (0.1 s) of CPU each after numpy is imported.
    value, ticks = _blas_thread_cpu_ticks({"OPENBLAS_THREAD_TIMEOUT": ""})
    assert value == "4" and ticks <= 2, ticks
    assert _blas_thread_cpu_ticks({"OPENBLAS_THREAD_TIMEOUT": "28"})[0] == "28"  # the user's setting wins


def test_a_run_and_its_result_files_import_neither_pandas_nor_pyarrow_compute(tmp_path):
    """`simserve run` (the records written and read back for summary.json's tables) goes without pandas and
    pyarrow.compute: 0.2 s of a short run's process (docs/performance.md); pyarrow converts through its pandas shim,
    which imports pandas, so simserve.metrics reads and writes the columns' buffers."""
    probe = ("import sys\nfrom simserve.cli import main\n"
             f"rc = main(['run', 'scenarios/quickstart.yaml', '--out', {str(tmp_path / 'out')!r}, "
             "'--set', 'workload.num_requests=200'])\n"
             "print(rc, ' '.join(m for m in ('pandas', 'pyarrow.compute') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1:] == ["0"], out.stdout[-500:]
    assert (tmp_path / "out" / "summary.json").exists()
