"""The compiled engine (setup.py compiles ENGINE_MODULES with mypyc at install; simserve/_build.py picks it or the
source at import): it gives the same results as the source to the bit, it is not run once its source was edited,
and CI runs it (SIMSERVE_REQUIRE_COMPILED=1 in .ci/run turns the skip where nothing was compiled into a failure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simserve import _build

ROOT = Path(__file__).resolve().parent.parent
COMPILED = all(_build.compiled_path(m) for m in _build.ENGINE_MODULES)


def _needs_compiled() -> None:
    if not COMPILED:
        if os.environ.get("SIMSERVE_REQUIRE_COMPILED") == "1":
            pytest.fail("SIMSERVE_REQUIRE_COMPILED=1 but the engine was not compiled at install")
        pytest.skip("the engine was not compiled here (no C compiler at install, or SIMSERVE_COMPILE=0)")


def _python(code: str, *args: str, **env: str) -> str:
    """stdout of `python -c code args` in a fresh process, SIMSERVE_PURE only as `env` says."""
    full = {k: v for k, v in os.environ.items() if k != "SIMSERVE_PURE"} | env
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_edited_source_is_stale(tmp_path):
    modules = _build.ENGINE_MODULES
    digests = _build.source_digests(modules)
    assert set(digests) == {_build.source_path(m).relative_to(ROOT).as_posix() for m in modules}
    manifest = tmp_path / "_compiled.json"
    manifest.write_text(json.dumps({"modules": digests}))
    assert _build.stale_reason(manifest, modules) is None
    digests["simserve/engine/kv.py"] = "0" * 64  # as if kv.py had been edited after the build
    manifest.write_text(json.dumps({"modules": digests}))
    assert _build.stale_reason(manifest, modules) == "simserve/engine/kv.py changed since it was compiled"
    assert "missing or unreadable" in str(_build.stale_reason(tmp_path / "absent.json", modules))
    manifest.write_text("{not json")
    assert "missing or unreadable" in str(_build.stale_reason(manifest, modules))


def test_ci_runs_the_compiled_engine():
    _needs_compiled()
    assert _build.stale_reason() is None
    assert _python("import simserve; print(simserve.engine_build())") == "compiled"
    assert _python("import simserve; print(simserve.engine_build())", SIMSERVE_PURE="1") == "pure (SIMSERVE_PURE=1)"


RUN = """
import hashlib, json, sys, simserve
from pathlib import Path
s = simserve.load_scenario(sys.argv[1], sys.argv[3:])
r = simserve.Simulation(s, s.base_dir, records_dir=Path(sys.argv[2])).run()
figures = {k: v for k, v in r.summary.items() if k != "wall_time_s"}
tables = {name: hashlib.sha256(df.to_csv(float_format="%r").encode()).hexdigest()
          for name, df in (("requests", r.requests), ("replicas", r.replicas))}
print(simserve.engine_build())
print(json.dumps([repr(figures), tables]))
"""


def _results(scenario: str, out: Path, overrides: list[str], **env: str) -> list[str]:
    return _python(RUN, scenario, str(out), *overrides, **env).splitlines()


@pytest.mark.parametrize("scenario, overrides", [
    ("bench/blis/blis-speed.yaml", ["workload.num_requests=600"]),  # saturated: preemptions, chained runs
    ("scenarios/reasoning-serving/all-optimizations.yaml", ["workload.num_requests=300"]),
    ("scenarios/deepseek-r1-mtp.yaml", ["workload.num_requests=150"]),  # speculative decoding's subclasses
])
def test_compiled_and_source_give_the_same_results_to_the_bit(tmp_path, scenario, overrides):
    _needs_compiled()
    compiled = _results(scenario, tmp_path / "c", overrides)
    pure = _results(scenario, tmp_path / "p", overrides, SIMSERVE_PURE="1")
    assert compiled[0] == "compiled" and pure[0] == "pure (SIMSERVE_PURE=1)"
    assert compiled[1] == pure[1]
