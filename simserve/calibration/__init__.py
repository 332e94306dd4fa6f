"""Calibration: the op-level profile schema, importers of published measurements, fitting (scipy lives here, not
at run time) and replay of real serving runs. It builds on simserve.perf; nothing that runs a scenario imports it.
"""

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

__all__ = [
    "COLUMNS",
    "IMPORTERS",
    "SCHEMA",
    "Experiment",
    "ExperimentError",
    "Profile",
    "ProfileError",
    "ProfileMetadata",
    "columns_of",
    "experiment_scenario",
    "fit_compute_scale",
    "fit_profile",
    "fit_step_overhead",
    "fit_table",
    "import_aiconfigurator",
    "import_vidur",
    "load_experiment",
    "load_profile",
    "split_tables",
    "validate_experiment",
    "validate_fit",
    "write_profile",
]
