"""simserve: a discrete-event simulator of reasoning-model serving clusters."""

from simserve.scenario import Scenario, ScenarioError, load_scenario, parse_scenario
from simserve.sim import Results, Simulation, run

__version__ = "0.1.0"

__all__ = ["Results", "Scenario", "ScenarioError", "Simulation", "load_scenario", "parse_scenario", "run"]
