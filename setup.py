"""Builds simserve. The engine's hot modules (simserve/_build.py's ENGINE_MODULES) are compiled to C with mypyc when
the build can: the same source, with the same results to the bit; a saturated run takes two thirds to three quarters
of the CPU time (docs/performance.md, stage 6). Without a C compiler, or with SIMSERVE_COMPILE=0, simserve installs
as pure Python.

A compiled module shadows its .py file. simserve/__init__.py therefore checks, at import, that every compiled
module was built from the source beside it (the digests this build writes to simserve/_compiled.json) and falls
back to the pure Python modules, all of them, where one was edited since (SIMSERVE_PURE=1 forces that).
`simserve.engine_build()` says which is running. Rebuild after editing: `pip install -e .` again."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _load_build():  # simserve/_build.py by its path (stdlib only), without importing simserve or its dependencies
    spec = importlib.util.spec_from_file_location("_simserve_build", ROOT / "simserve" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_build = _load_build()


class BuildEngine(build_ext):
    """build_ext that writes the compiled sources' digests where simserve's import looks for them: beside the
    package in the build folder (a wheel) and in the source tree (an editable install, built in place)."""

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        text = json.dumps({"modules": _build.source_digests()}, indent=1, sort_keys=True) + "\n"
        where = _build.MANIFEST.relative_to(ROOT)
        for base in {Path(self.build_lib), ROOT} if self.inplace else {Path(self.build_lib)}:
            (base / where).parent.mkdir(parents=True, exist_ok=True)
            (base / where).write_text(text)


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
        extensions = mypycify([_build.source_key(m) for m in _build.ENGINE_MODULES], opt_level="3",
                              group_name=_build.GROUP_NAME)
    except (Exception, SystemExit) as exc:  # mypyc could not translate the modules (a type error, or an internal
        # error of a release it does not know: mypyc reports those with sys.exit): pure Python
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
