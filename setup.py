"""Builds simserve. The engine's hot modules (ENGINE_MODULES) are compiled to C with mypyc when the build can: the
same source, with the same results to the bit; a saturated run takes two thirds to three quarters of the CPU time
(docs/performance.md, stage 6). Without a C compiler, or with SIMSERVE_COMPILE=0, simserve installs as pure Python.

A compiled module shadows its .py file. simserve/__init__.py therefore checks, at import, that every compiled
module was built from the source beside it (the digests this build writes to simserve/_compiled.json) and falls
back to the pure Python modules, all of them, where one was edited since (SIMSERVE_PURE=1 forces that).
`simserve.engine_build()` says which is running. Rebuild after editing: `pip install -e .` again."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
# Kept in step with simserve/_build.py's ENGINE_MODULES (a test checks).
ENGINE_MODULES = ("simserve/request.py", "simserve/metrics.py", "simserve/engine/kv.py",
                  "simserve/engine/decodes.py", "simserve/engine/planner.py", "simserve/engine/replica.py")
MANIFEST = "simserve/_compiled.json"


def _digest(path: str) -> str:
    return hashlib.sha256((ROOT / path).read_bytes()).hexdigest()


class BuildEngine(build_ext):
    """build_ext that writes the compiled sources' digests where simserve's import looks for them: beside the
    package in the build folder (a wheel) and in the source tree (an editable install, built in place)."""

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        built = {m: _digest(m) for m in ENGINE_MODULES}
        text = json.dumps({"modules": built}, indent=1, sort_keys=True) + "\n"
        for base in {Path(self.build_lib), ROOT} if self.inplace else {Path(self.build_lib)}:
            (base / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
            (base / MANIFEST).write_text(text)


def _extensions() -> list:
    if os.environ.get("SIMSERVE_COMPILE", "1") == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # built without the build requirements (--no-build-isolation without mypy): pure Python
        return []
    cwd = os.getcwd()
    os.chdir(ROOT)  # mypyc names modules by their paths from here
    try:
        extensions = mypycify(list(ENGINE_MODULES), opt_level="3", group_name="simserve_engine")
    except Exception as exc:  # mypyc could not translate the modules (a release it does not know): pure Python
        print(f"simserve: not compiling the engine ({type(exc).__name__}: {exc}); installing pure Python",
              file=sys.stderr)
        return []
    finally:
        os.chdir(cwd)
    for ext in extensions:
        ext.optional = True  # no compiler, or a failed compile: setuptools warns and installs the pure modules
        # The same bits as the interpreter: no contraction of a*b + c into one fused multiply-add (the default on
        # targets with FMA, such as aarch64).
        ext.extra_compile_args = [*ext.extra_compile_args, "-ffp-contract=off"]
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildEngine})
