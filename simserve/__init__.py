"""simserve: a discrete-event simulator of reasoning-model serving clusters.

The public names are loaded on first use (PEP 562), so `import simserve` (and `simserve --help`) costs nothing
until a scenario is loaded or run."""

import importlib as _importlib
import os as _os
import typing as _typing

# OpenBLAS (numpy's BLAS) starts worker threads when numpy is imported, and each spins for about 0.1 s of CPU
# before it sleeps: a tenth of a short run's CPU, for nothing (simserve does no large linear algebra). Idle threads
# sleep at once with this; BLAS keeps its threads. Read when numpy is first imported; the user's setting wins.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from simserve import _build  # noqa: E402

_build.select()  # the compiled engine, or its source where that was edited since the build (simserve/_build.py)
engine_build = _build.engine_build

if _typing.TYPE_CHECKING:  # the names as type checkers see them; loaded on first use below
    from simserve.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
    from simserve.sim import Results, Simulation, run

__version__ = "0.1.0"

__all__ = ["Results", "Scenario", "ScenarioError", "Simulation", "engine_build", "load_scenario", "parse_scenario",
           "run"]

_HOMES = {"Results": "simserve.sim", "Simulation": "simserve.sim", "run": "simserve.sim",
          "Scenario": "simserve.scenario", "ScenarioError": "simserve.scenario", "load_scenario": "simserve.scenario",
          "parse_scenario": "simserve.scenario"}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'simserve' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
