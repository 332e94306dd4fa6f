"""Workloads: length distributions, synthetic query-type mixes and arrival processes, trace replay, sessions."""

from simserve.workload.distributions import (
    Constant,
    Distribution,
    Empirical,
    EmpiricalSampler,
    Lognormal,
    Uniform,
    load_empirical,
    lognormal_from_range,
)
from simserve.workload.sessions import Sessions, prompt_keys
from simserve.workload.synthetic import (
    QUERY_TYPES,
    GammaArrivals,
    LengthSampler,
    PoissonArrivals,
    QueryType,
    SessionSpec,
    WorkloadSpec,
    build_sessions,
    generate_requests,
)
from simserve.workload.traces import TraceError, TraceSpec, replay, resolve_path

__all__ = [
    "QUERY_TYPES", "Constant", "Distribution", "Empirical", "EmpiricalSampler", "GammaArrivals", "LengthSampler",
    "Lognormal", "PoissonArrivals", "QueryType", "SessionSpec", "Sessions", "TraceError", "TraceSpec", "Uniform",
    "WorkloadSpec", "build_sessions", "generate_requests", "load_empirical", "lognormal_from_range", "prompt_keys",
    "replay", "resolve_path",
]
