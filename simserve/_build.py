"""Which engine runs: the modules compiled by mypyc at install (setup.py), or their pure Python source.

A compiled module (`replica.cpython-311-x86_64-linux-gnu.so`) sits beside its `replica.py` and Python imports it
first. After an edit to the source, that would run the old code. So, when simserve is imported, `select()`
compares each compiled module's source with the digest the build recorded (simserve/_compiled.json). Where any
differs, where the compiled set is incomplete (a module or the shared library they load missing), or with
SIMSERVE_PURE=1, it puts a finder in front of Python's that imports all of ENGINE_MODULES from their .py files: the
compiled modules call one another directly, so they run all compiled or all pure; it warns, but for SIMSERVE_PURE.
The check reads nine small files (well under a millisecond) and only where compiled modules exist."""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# The modules setup.py compiles (it loads this file for them, the group's name and the digests; stdlib only here).
ENGINE_MODULES = ("simserve.request", "simserve.metrics", "simserve.perf.base", "simserve.perf.analytic",
                  "simserve.perf.calibrated", "simserve.engine.kv", "simserve.engine.decodes",
                  "simserve.engine.planner", "simserve.engine.replica")
GROUP_NAME = "simserve_engine"  # mypyc's group: one shared library, GROUP, that the compiled modules load
GROUP = f"{GROUP_NAME}__mypyc"
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_compiled.json"

_why_pure: str | None = None  # set by select(): why the source runs where compiled modules exist


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def source_key(module: str) -> str:
    """`module`'s source as the build names it: its path from the package's parent ('simserve/engine/kv.py')."""
    return source_path(module).relative_to(PACKAGE_DIR.parent).as_posix()


def source_digest(module: str) -> str:
    return hashlib.sha256(source_path(module).read_bytes()).hexdigest()


def source_digests(modules: Sequence[str] = ENGINE_MODULES) -> dict[str, str]:
    """{source_key: SHA-256 of the source}: what the build records in MANIFEST and `stale_reason` compares."""
    return {source_key(m): source_digest(m) for m in modules}


def compiled_path(module: str) -> Path | None:
    """The compiled module beside `module`'s source, if the build made one."""
    base = source_path(module).with_suffix("")
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if (found := base.with_name(base.name + suffix)).exists():
            return found
    return None


def stale_reason(manifest: Path = MANIFEST, modules: Sequence[str] = ENGINE_MODULES) -> str | None:
    """Why the compiled modules must not run (an edited source, a missing or unreadable digest), or None."""
    try:
        built = json.loads(manifest.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{manifest.name} (the compiled sources' digests) is missing or unreadable"
    for module in modules:
        key = source_key(module)
        try:
            now = source_digest(module)
        except OSError:
            return f"{key} is missing"
        if built.get(key) != now:
            return f"{key} changed since it was compiled"
    return None


class SourceFirst(importlib.abc.MetaPathFinder):
    """Imports the engine's modules from their .py files, ahead of the compiled ones beside them."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def select() -> None:
    """Called once by `import simserve`, before any engine module is imported."""
    global _why_pure
    found = [compiled_path(m) is not None for m in ENGINE_MODULES]
    if not any(found):
        return  # a pure Python install: nothing shadows the source
    if os.environ.get("SIMSERVE_PURE") == "1":
        _why_pure = "SIMSERVE_PURE=1"
    else:
        if not all(found) or importlib.util.find_spec(GROUP) is None:
            _why_pure = "the compiled engine is incomplete (a module or its shared library was not built)"
        else:
            _why_pure = stale_reason()
        if _why_pure is not None:
            warnings.warn(f"simserve: {_why_pure}; running the engine's pure Python source (slower). Rebuild the "
                          "compiled engine with `pip install -e .`, or set SIMSERVE_PURE=1 to silence this.",
                          RuntimeWarning, stacklevel=3)
    if _why_pure is not None and not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst(ENGINE_MODULES))


def engine_build() -> str:
    """'compiled' or 'pure' (with why, where compiled modules exist but do not run), for the modules loaded now
    (importing the engine if it is not yet)."""
    module = importlib.import_module("simserve.engine.replica")
    if Path(module.__file__ or "").suffix == ".py":
        return f"pure ({_why_pure})" if _why_pure else "pure"
    return "compiled"
