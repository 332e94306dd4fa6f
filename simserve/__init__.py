"""simserve: a discrete-event simulator of reasoning-model serving clusters.

The public names are loaded on first use (PEP 562), so `import simserve` (and `simserve --help`) costs nothing
until a scenario is loaded or run."""

import importlib as _importlib
import typing as _typing

from simserve import _build

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
