"""Length distributions with analytic means: constant, uniform, lognormal (optionally capped) and empirical.

Every distribution exposes its analytic mean (tests compare samples with it) and draws from a numpy Generator
handed in by the caller (one named stream per source of randomness, owned by the Simulation).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from simserve.request import BUILTIN_PREFIX

_FROZEN = ConfigDict(frozen=True, extra="forbid", defer_build=True, allow_inf_nan=False)


def _norm_cdf(z: float) -> float:
    """Standard normal CDF (math.erf: no scipy at run time)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


class Constant(BaseModel):
    """Always `value`."""

    model_config = _FROZEN
    dist: Literal["constant"] = Field(default="constant", description="always the same value")
    value: float = Field(ge=0, description="the value (tokens, seconds, turns...)")

    def build(self, base_dir: Path | None = None) -> Constant:
        return self

    @property
    def mean(self) -> float:
        return float(self.value)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, float(self.value))


class Uniform(BaseModel):
    """Integers uniform on [low, high], both included."""

    model_config = _FROZEN
    dist: Literal["uniform"] = Field(default="uniform", description="integers uniform on [low, high]")
    low: int = Field(ge=0, description="smallest value, included")
    high: int = Field(ge=0, description="largest value, included")

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self

    def build(self, base_dir: Path | None = None) -> Uniform:
        return self

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.low, self.high, size=n, endpoint=True).astype(float)


class Lognormal(BaseModel):
    """Lognormal given by its mean and coefficient of variation, optionally capped at `max` (a token budget)."""

    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True, populate_by_name=True, allow_inf_nan=False)
    dist: Literal["lognormal"] = Field(default="lognormal", description="lognormal by mean and cv")
    mean_value: float = Field(gt=0, alias="mean", description="mean (before the cap)")
    cv: float = Field(gt=0, description="coefficient of variation: standard deviation / mean")
    max: float | None = Field(default=None, gt=0, description="cap: larger draws become max (a token budget)")

    @property
    def sigma(self) -> float:
        return math.sqrt(math.log1p(self.cv**2))

    @property
    def mu(self) -> float:
        return math.log(self.mean_value) - self.sigma**2 / 2.0

    def build(self, base_dir: Path | None = None) -> Lognormal:
        return self

    @property
    def mean(self) -> float:
        """E[min(X, max)]: the lognormal mean, reduced by the cap where there is one."""
        if self.max is None:
            return float(self.mean_value)
        mu, s, m = self.mu, self.sigma, float(self.max)
        z = (math.log(m) - mu) / s
        below = math.exp(mu + s * s / 2.0) * _norm_cdf(z - s)
        return float(below + m * _norm_cdf(-z))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.lognormal(self.mu, self.sigma, size=n)
        return x if self.max is None else np.minimum(x, self.max)


class Empirical(BaseModel):
    """A discrete distribution: inline `values` (and optional `weights`), or a CSV `file` whose first column is
    the value and optional second column the weight. `file` is relative to the scenario's folder, or
    `builtin:NAME` for data shipped with simserve (simserve/data/NAME)."""

    model_config = _FROZEN
    dist: Literal["empirical"] = Field(default="empirical", description="a discrete distribution")
    values: list[float] | None = Field(default=None, description="the values, inline (or give file)")
    weights: list[float] | None = Field(default=None, description="one weight per value; default: equal")
    file: str | None = Field(default=None, description="CSV of value[,weight] rows, relative to the scenario, or "
                             "builtin:NAME")

    @model_validator(mode="after")
    def _one_source(self) -> Empirical:
        if (self.values is None) == (self.file is None):
            raise ValueError("give exactly one of 'values' or 'file'")
        if self.values is not None:
            if not self.values:
                raise ValueError("'values' must not be empty")
            if self.weights is not None:
                if len(self.weights) != len(self.values):
                    raise ValueError("'weights' must have as many entries as 'values'")
                if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                    raise ValueError("'weights' must be >= 0 with a positive sum")
        elif self.weights is not None:
            raise ValueError("'weights' goes with 'values', not with 'file'")
        return self

    def build(self, base_dir: Path | None = None) -> EmpiricalSampler:
        if self.values is not None:
            w = np.ones(len(self.values)) if self.weights is None else np.asarray(self.weights, float)
            return EmpiricalSampler(np.asarray(self.values, float), w)
        return EmpiricalSampler(*load_empirical(self.file or "", str(base_dir or ".")))


class EmpiricalSampler:
    """Draws from a finite set of values with given probabilities (inverse CDF on one uniform per draw)."""

    def __init__(self, values: np.ndarray, weights: np.ndarray) -> None:
        order = np.argsort(values, kind="stable")
        self.values = values[order]
        p = weights[order] / weights.sum()
        self.probabilities = p
        self._cdf = np.cumsum(p)
        self._cdf[-1] = 1.0

    @property
    def mean(self) -> float:
        return float(np.dot(self.values, self.probabilities))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        idx = np.searchsorted(self._cdf, rng.random(n), side="right")
        return self.values[np.minimum(idx, len(self.values) - 1)]


@lru_cache(maxsize=32)
def load_empirical(file: str, base_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """Read (values, weights) from a CSV (optionally gzip): column 1 values, column 2 weights if present.
    Raises ValueError with the path on any problem, so callers can report it cleanly."""
    if file.startswith(BUILTIN_PREFIX):
        path = Path(str(resources.files("simserve") / "data" / file[len(BUILTIN_PREFIX):]))
    else:
        path = Path(file) if Path(file).is_absolute() else Path(base_dir) / file
    if not path.is_file():
        raise ValueError(f"empirical file not found: {path}")
    try:
        values, weights = _read_pmf_csv(path)
    except Exception as exc:  # unreadable, not UTF-8, not numbers: all mean "not a numeric CSV"
        raise ValueError(f"cannot read empirical file {path}: {exc}") from None
    if len(values) == 0 or np.any(weights < 0) or weights.sum() <= 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"empirical file {path} needs rows of finite values with weights >= 0 summing to > 0")
    return values, weights


def _read_pmf_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(values, weights) of a CSV with a header row (optionally gzip-compressed, by its .gz suffix): column 1,
    and column 2 if present (else weights of 1). Not pandas: importing pandas costs more than a whole short run.
    Plain comma-separated numbers (every shipped file) go through numpy's C reader, which like `float` parses
    decimal strings correctly rounded; anything it refuses, or whose rows differ in width, is read again with
    `csv` and `float`, so the result or the error is that reader's."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        text = f.read()
    if '"' not in text and "'" not in text:
        header, _, body = text.partition("\n")
        table = None
        if header.strip() and body.strip():
            try:
                table = np.loadtxt(io.StringIO(body), delimiter=",", comments=None, dtype=float, ndmin=2)
            except ValueError:  # not all numbers, or rows of different widths: the csv/float path decides
                pass
        if table is not None and table.shape[1] == len(header.split(",")):
            return table[:, 0].copy(), (table[:, 1].copy() if table.shape[1] > 1 else np.ones(len(table)))
        rows = [line.split(",") for line in text.splitlines() if line]
    else:  # quoting: the csv module's rules
        rows = [row for row in csv.reader(text.splitlines()) if row]
    if len(rows) < 2 or not rows[0]:
        raise ValueError("no data rows")
    width = len(rows[0])
    if any(len(row) != width for row in rows):
        raise ValueError("rows of different lengths")
    values = np.array(list(map(float, (row[0] for row in rows[1:]))))
    weights = np.array(list(map(float, (row[1] for row in rows[1:])))) if width > 1 else np.ones(len(values))
    return values, weights


Distribution = Annotated[Constant | Uniform | Lognormal | Empirical, Field(discriminator="dist")]


def lognormal_from_range(low: float, high: float, max_value: float | None = None) -> Lognormal:
    """A lognormal whose 5th and 95th percentiles are `low` and `high` (how we read a published range)."""
    mu = (math.log(low) + math.log(high)) / 2.0
    sigma = (math.log(high) - math.log(low)) / (2.0 * 1.6448536269514722)
    mean = math.exp(mu + sigma**2 / 2.0)
    cv = math.sqrt(math.expm1(sigma**2))
    return Lognormal(mean=round(mean, 1), cv=round(cv, 4), max=max_value)
