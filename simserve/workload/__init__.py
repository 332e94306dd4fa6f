"""Workloads: length distributions, synthetic query-type mixes and arrival processes, trace replay, sessions."""

from simserve.workload.concepts import (
    ConceptDrawer,
    ConceptSpec,
    ConceptSteps,
    MintingSpec,
    StepsSpec,
    TraceCacheSpec,
    ZipfSampler,
    zipf_probabilities,
)
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
    STREAMS,
    DiurnalArrivals,
    GammaArrivals,
    LengthSampler,
    PoissonArrivals,
    QueryType,
    SessionSpec,
    WorkloadSpec,
    build_sessions,
    generate_requests,
    rng_streams,
)
from simserve.workload.traces import TraceError, TraceSpec, replay, resolve_path

__all__ = [
    "QUERY_TYPES", "STREAMS", "ConceptDrawer", "ConceptSpec", "ConceptSteps", "Constant", "DiurnalArrivals",
    "Distribution", "Empirical", "EmpiricalSampler", "GammaArrivals", "LengthSampler", "Lognormal",
    "PoissonArrivals", "QueryType",
    "SessionSpec", "MintingSpec", "Sessions", "StepsSpec", "TraceCacheSpec", "TraceError", "TraceSpec", "Uniform",
    "WorkloadSpec", "ZipfSampler",
    "build_sessions", "generate_requests", "load_empirical", "lognormal_from_range", "prompt_keys", "replay",
    "resolve_path", "rng_streams", "zipf_probabilities",
]
