"""Calibration: the op-level profile schema, importers of published measurements, fitting (scipy lives here, not
at run time) and replay of real serving runs. It builds on simserve.perf; nothing that runs a scenario imports it.
Its names load on first use (PEP 562), so the calibrate commands' parser (`simserve --help`) imports neither
scipy nor pandas.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:  # the names as type checkers see them; loaded on first use below
    from simserve.calibration.fitting import columns_of, fit_profile, fit_table, split_tables, validate_fit
    from simserve.calibration.importers import IMPORTERS, import_aiconfigurator, import_vidur
    from simserve.calibration.profiles import (
        COLUMNS,
        SCHEMA,
        Profile,
        ProfileError,
        ProfileMetadata,
        load_profile,
        write_profile,
    )
    from simserve.calibration.replay import (
        Experiment,
        ExperimentError,
        experiment_scenario,
        fit_compute_scale,
        fit_step_overhead,
        load_experiment,
        validate_experiment,
    )
    from simserve.calibration.runfit import RunFit, fit_from_run, run_targets, validate_with_fit

__all__ = [
    "COLUMNS",
    "IMPORTERS",
    "SCHEMA",
    "Experiment",
    "ExperimentError",
    "Profile",
    "ProfileError",
    "ProfileMetadata",
    "RunFit",
    "columns_of",
    "experiment_scenario",
    "fit_compute_scale",
    "fit_from_run",
    "fit_profile",
    "fit_step_overhead",
    "fit_table",
    "import_aiconfigurator",
    "import_vidur",
    "load_experiment",
    "load_profile",
    "run_targets",
    "split_tables",
    "validate_experiment",
    "validate_fit",
    "validate_with_fit",
    "write_profile",
]

_MODULES = {
    "fitting": ("columns_of", "fit_profile", "fit_table", "split_tables", "validate_fit"),
    "importers": ("IMPORTERS", "import_aiconfigurator", "import_vidur"),
    "profiles": ("COLUMNS", "SCHEMA", "Profile", "ProfileError", "ProfileMetadata", "load_profile", "write_profile"),
    "replay": ("Experiment", "ExperimentError", "experiment_scenario", "fit_compute_scale", "fit_step_overhead",
               "load_experiment", "validate_experiment"),
    "runfit": ("RunFit", "fit_from_run", "run_targets", "validate_with_fit"),
}
_HOMES = {name: f"simserve.calibration.{module}" for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> _typing.Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'simserve.calibration' has no attribute {name!r}")
    value = getattr(_importlib.import_module(home), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
