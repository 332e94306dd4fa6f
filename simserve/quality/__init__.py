"""Answer quality and test-time compute: accuracy against reasoning tokens, per-question success rates, wrong
answers, voting, budgets, early exit and parallel sampling, KV compression's effect (docs/quality.md)."""

from simserve.quality.compression import RETENTION_FITS, KvCompressionSpec
from simserve.quality.model import (
    Answer,
    Curve,
    Draws,
    QualityModel,
    Resolved,
    defaults,
    majority_accuracy,
    plurality,
    resolve,
)
from simserve.quality.spec import DifficultyLevel, EarlyExitSpec, ParallelSpec, QualitySpec

__all__ = [
    "RETENTION_FITS", "KvCompressionSpec",
    "Answer", "Curve", "DifficultyLevel", "Draws", "EarlyExitSpec", "ParallelSpec", "QualityModel", "QualitySpec",
    "Resolved", "defaults", "majority_accuracy", "plurality", "resolve",
]
