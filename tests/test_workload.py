"""Workload layer: every distribution samples its analytic mean, shipped query types draw sane lengths, arrival
processes have the requested rate and burstiness, and generate_requests stops, orders and repeats as promised."""

from __future__ import annotations

import math
from itertools import islice

import numpy as np
import pytest
from scipy import integrate, stats

from simserve.workload import (
    QUERY_TYPES,
    STREAMS,
    Constant,
    DiurnalArrivals,
    Empirical,
    GammaArrivals,
    LengthSampler,
    Lognormal,
    PoissonArrivals,
    QueryType,
    Uniform,
    WorkloadSpec,
    generate_requests,
    lognormal_from_range,
)

N = 200_000  # samples per mean check
SIGMAS = 5.0  # tolerance, in standard errors
SERVEGEN = "builtin:servegen-deepseek-r1/"


def make_rngs(seed: int) -> dict[str, np.random.Generator]:
    """The RNG tree exactly as simserve.sim.Simulation builds it."""
    seeds = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(s) for name, s in zip(STREAMS, seeds, strict=True)}


def assert_mean(samples: np.ndarray, mean: float, sd: float, extra: float = 0.0) -> None:
    """Sample mean within SIGMAS standard errors (sd / sqrt(n)) of `mean`, plus `extra` (e.g. rounding)."""
    tol = SIGMAS * sd / math.sqrt(len(samples)) + extra
    assert abs(float(np.mean(samples)) - mean) <= tol, (float(np.mean(samples)), mean, tol)


def discrete_sd(values: np.ndarray, probabilities: np.ndarray) -> float:
    m = float(np.dot(values, probabilities))
    return math.sqrt(float(np.dot((values - m) ** 2, probabilities)))


# ----------------------------------------------------------------------------------------------- distributions


def test_constant():
    d = Constant(value=42)
    x = d.build().sample(np.random.default_rng(0), 1000)
    assert d.mean == 42.0
    assert x.shape == (1000,)
    assert np.all(x == 42.0)


@pytest.mark.parametrize(("low", "high"), [(0, 0), (1, 10), (100, 4000)])
def test_uniform_mean_and_support(low, high):
    d = Uniform(low=low, high=high)
    x = d.build().sample(np.random.default_rng(1), N)
    assert d.mean == (low + high) / 2
    assert x.min() == low and x.max() == high  # both ends included
    assert np.all(x == np.round(x))
    k = high - low + 1
    assert_mean(x, d.mean, math.sqrt((k * k - 1) / 12.0))


def test_uniform_rejects_reversed_bounds():
    with pytest.raises(ValueError, match="high"):
        Uniform(low=5, high=2)


@pytest.mark.parametrize(("mean", "cv"), [(300.0, 0.5), (4000.0, 0.8), (50.0, 1.5)])
def test_lognormal_mean(mean, cv):
    d = Lognormal(mean=mean, cv=cv)
    x = d.build().sample(np.random.default_rng(2), N)
    assert d.mean == mean
    assert np.all(x > 0)
    assert_mean(x, mean, mean * cv)
    # The coefficient of variation is the one asked for (loose: heavy tails make the sample sd noisy).
    assert np.std(x) / np.mean(x) == pytest.approx(cv, rel=0.1)


@pytest.mark.parametrize(("mean", "cv", "cap"), [(1000.0, 1.5, 1500.0), (4000.0, 0.8, 20000.0), (100.0, 0.5, 60.0)])
def test_lognormal_with_max(mean, cv, cap):
    d = Lognormal(mean=mean, cv=cv, max=cap)
    x = d.build().sample(np.random.default_rng(3), N)
    assert x.max() <= cap
    # Independent check of the capped mean: E[min(X, m)] by numerical integration of the survival function.
    dist = stats.lognorm(s=d.sigma, scale=math.exp(d.mu))
    expected = integrate.quad(dist.sf, 0.0, cap, limit=200)[0]
    assert d.mean == pytest.approx(expected, rel=1e-4)
    assert d.mean < mean
    assert_mean(x, d.mean, float(np.std(x)))


def test_lognormal_cap_changes_the_mean_measurably():
    # The cap at the median removes a lot of mass: the capped mean is far below the uncapped one.
    d = Lognormal(mean=1000, cv=1.0, max=700)
    x = d.sample(np.random.default_rng(4), N)
    assert d.mean < 0.8 * 1000
    assert_mean(x, d.mean, float(np.std(x)))
    assert abs(np.mean(x) - 1000) > 100


@pytest.mark.parametrize(
    ("values", "weights"),
    [([5.0], None), ([1.0, 2.0, 3.0], None), ([10.0, 1.0, 100.0, 50.0], [0.1, 0.2, 0.0, 0.7]),
     ([3.0, 3.0, 9.0], [1, 1, 2])],
)
def test_empirical_inline(values, weights):
    d = Empirical(values=values, weights=weights).build()
    w = np.ones(len(values)) if weights is None else np.asarray(weights, float)
    p = w / w.sum()
    expected = float(np.dot(values, p))
    assert d.mean == pytest.approx(expected)
    x = d.sample(np.random.default_rng(5), N)
    assert set(np.unique(x)) <= {v for v, pi in zip(values, p, strict=True) if pi > 0}
    assert_mean(x, expected, discrete_sd(np.asarray(values), p))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"values": []}, {"values": [1, 2], "weights": [1]}, {"values": [1, 2], "weights": [-1, 2]},
     {"values": [1, 2], "weights": [0, 0]}, {"values": [1], "file": "x.csv"}, {"file": "x.csv", "weights": [1]}],
)
def test_empirical_rejects_bad_specs(kwargs):
    with pytest.raises(ValueError):
        Empirical(**kwargs)


def test_empirical_from_csv_with_weights(tmp_path):
    (tmp_path / "lengths.csv").write_text("tokens,weight\n10,1\n20,3\n400,1\n")
    d = Empirical(file="lengths.csv").build(tmp_path)
    p = np.array([1, 3, 1]) / 5
    values = np.array([10.0, 20.0, 400.0])
    assert d.mean == pytest.approx(float(np.dot(values, p)))
    x = d.sample(np.random.default_rng(6), N)
    assert set(np.unique(x)) == {10.0, 20.0, 400.0}
    assert_mean(x, d.mean, discrete_sd(values, p))
    # The share of each value follows its weight.
    assert np.mean(x == 20.0) == pytest.approx(0.6, abs=SIGMAS * math.sqrt(0.6 * 0.4 / N))


def test_empirical_from_csv_values_only_absolute_path(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("value\n1\n2\n3\n10\n")
    d = Empirical(file=str(path)).build(None)
    assert d.mean == pytest.approx(4.0)
    x = d.sample(np.random.default_rng(7), N)
    assert_mean(x, 4.0, discrete_sd(np.array([1.0, 2, 3, 10]), np.full(4, 0.25)))


def test_empirical_missing_or_bad_csv(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        Empirical(file="nope.csv").build(tmp_path)
    (tmp_path / "words.csv").write_text("value\nabc\n")
    with pytest.raises(ValueError, match="cannot read"):
        Empirical(file="words.csv").build(tmp_path)


def _read_both(tmp_path, text: str):
    """The PMF reader's result (or error message) on `text`, and on the same text with a quoted header, which sends
    it down the csv/float path that the numpy fast path must agree with."""
    from simserve.workload.distributions import _read_pmf_csv

    header, newline, rest = text.partition("\n")
    first, comma, others = header.partition(",")
    out = []
    for name, body in (("plain.csv", text), ("quoted.csv", f'"{first}"{comma}{others}{newline}{rest}')):
        path = tmp_path / name
        path.write_bytes(body.encode())
        try:
            out.append(_read_pmf_csv(path))
        except ValueError as exc:
            out.append(str(exc))
    return out


@pytest.mark.parametrize("text", [
    "v,w\n1,2\n3,4\n", "v,w\r\n1,2\r\n3,4\r\n", "v,w\n1,2\n\n3,4\n\n", "v\n1\n2\n", "v,w\n", "v,w\n1,2\n3\n",
    "v,w\n1,a\n", "v,w\n 1 , 2\n3,4\n", "v,w\nnan,1\n", "v,w\n1,inf\n", "v,w\n1,2,3\n", "v,w\n#1,2\n1,2\n",
    "v,w\n1e3,2.5E-1\n", "v,w\n0x10,1\n", "v,w\n1_000,1\n", "v,w\n1,2\n   \n3,4\n", "a,b,c\n1,2,x\n3,4,y\n",
    "a,b,c\n1,2\n3,4,5,6\n", "v,w\n0.1,0.30000000000000004\n123456789012345678,1e-320\n",
])
def test_pmf_reader_fast_path_agrees_with_the_csv_path(tmp_path, text):
    """Plain numeric CSVs go through numpy's C reader; everything it gives (values, or the error) must be what the
    csv/float path gives for the same rows."""
    fast, slow = _read_both(tmp_path, text)
    if isinstance(slow, str):
        assert fast == slow
    else:
        assert not isinstance(fast, str), fast
        for a, b in zip(fast, slow, strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("name", ["prompt_tokens_pmf.csv.gz", "output_tokens_pmf.csv.gz",
                                  "reasoning_share_pmf.csv.gz"])
def test_pmf_reader_fast_path_on_shipped_files(tmp_path, name):
    import gzip
    from importlib import resources

    text = gzip.decompress((resources.files("simserve") / "data" / "servegen-deepseek-r1" / name).read_bytes())
    fast, slow = _read_both(tmp_path, text.decode())
    assert len(fast[0]) > 100
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)


def test_calibrated_grids_are_the_unique_values():
    from simserve.perf import calibrated as c

    for grid, high, num in ((c._KV_GRID, 1 << 20, 160), (c._NEW_GRID, 1 << 17, 120)):
        assert np.array_equal(grid, np.unique(np.round(np.geomspace(1, high, num))).astype(float))
    assert np.array_equal(c._CACHED_GRID[1:], np.unique(np.round(np.geomspace(1, 1 << 20, 120))))


@pytest.mark.parametrize(
    ("name", "documented_mean", "rel"),
    [("prompt_tokens_pmf.csv.gz", 1268.0, 1e-3), ("output_tokens_pmf.csv.gz", 1527.0, 1e-3),
     ("reasoning_share_pmf.csv.gz", 0.70, 0.01)],
)
def test_builtin_servegen_files(name, documented_mean, rel):
    d = Empirical(file=SERVEGEN + name).build(None)
    assert d.mean == pytest.approx(documented_mean, rel=rel)  # simserve/data/servegen-deepseek-r1/README.md
    assert d.probabilities.sum() == pytest.approx(1.0)
    x = d.sample(np.random.default_rng(8), N)
    assert_mean(x, d.mean, discrete_sd(d.values, d.probabilities))


# ----------------------------------------------------------------------------------------------- query types


@pytest.mark.parametrize("name", sorted(QUERY_TYPES))
def test_shipped_query_types_sample_sane_lengths(name):
    spec = QueryType(query_type=name)
    sampler = LengthSampler(spec, None)
    prompt, reasoning, answer = sampler.sample(np.random.default_rng(9), N)
    for a in (prompt, reasoning, answer):
        assert a.dtype.kind == "i" and a.shape == (N,)
    assert prompt.min() >= 1
    assert answer.min() >= 1
    assert reasoning.min() >= 0
    output = reasoning + answer
    # Rounding to integers (and the floors at 0 and 1) moves the mean by well under a token.
    assert_mean(output, sampler.mean_output_tokens, float(np.std(output)), extra=1.0)
    assert_mean(prompt, sampler.prompt.mean, float(np.std(prompt)), extra=1.0)


def test_shipped_query_type_names():
    assert set(QUERY_TYPES) == {"factual", "coding", "math_word", "competition_math", "proof",
                                "deepseek-r1-production"}


def test_deepseek_r1_production_lengths():
    sampler = LengthSampler(QueryType(query_type="deepseek-r1-production"), None)
    assert sampler.mean_output_tokens == pytest.approx(1527, abs=1.0)
    prompt, reasoning, answer = sampler.sample(np.random.default_rng(10), N)
    output = reasoning + answer
    assert_mean(output, 1527.4, float(np.std(output)), extra=1.0)
    assert reasoning.sum() / output.sum() == pytest.approx(0.70, abs=0.02)
    assert np.mean(prompt) == pytest.approx(1268, rel=0.03)
    assert output.max() <= 32768


def test_split_query_type_means_add_up():
    # factual: reasoning 200..500 and answer 50..100 read as p5..p95 of lognormals.
    sampler = LengthSampler(QueryType(query_type="factual"), None)
    r, a = lognormal_from_range(200, 500), lognormal_from_range(50, 100)
    assert sampler.mean_output_tokens == pytest.approx(r.mean + a.mean)
    _, reasoning, answer = sampler.sample(np.random.default_rng(11), N)
    assert_mean(reasoning, r.mean, r.mean * r.cv, extra=0.5)
    assert_mean(answer, a.mean, a.mean * a.cv, extra=0.5)


def test_share_query_type_splits_output():
    spec = QueryType(query_type="custom", prompt_tokens={"dist": "constant", "value": 10},
                     output_tokens={"dist": "constant", "value": 100},
                     reasoning_share={"dist": "empirical", "values": [0.0, 0.25, 1.0]})
    prompt, reasoning, answer = LengthSampler(spec, None).sample(np.random.default_rng(12), 3000)
    assert np.all(prompt == 10)
    assert np.all(reasoning + answer == 100)
    assert set(zip(reasoning.tolist(), answer.tolist(), strict=True)) == {(0, 100), (25, 75), (99, 1)}


def test_length_floors_and_rounding():
    # Prompt and answer are at least 1, reasoning at least 0; values are rounded to the nearest integer.
    zero = QueryType(query_type="z", prompt_tokens={"dist": "constant", "value": 0},
                     reasoning_tokens={"dist": "constant", "value": 0}, answer_tokens={"dist": "constant", "value": 0})
    prompt, reasoning, answer = LengthSampler(zero, None).sample(np.random.default_rng(0), 5)
    assert prompt.tolist() == [1] * 5 and reasoning.tolist() == [0] * 5 and answer.tolist() == [1] * 5
    frac = QueryType(query_type="f", prompt_tokens={"dist": "constant", "value": 2.6},
                     reasoning_tokens={"dist": "constant", "value": 7.4},
                     answer_tokens={"dist": "constant", "value": 1.2})
    prompt, reasoning, answer = LengthSampler(frac, None).sample(np.random.default_rng(0), 3)
    assert prompt.tolist() == [3] * 3 and reasoning.tolist() == [7] * 3 and answer.tolist() == [1] * 3


@pytest.mark.parametrize(("lo", "hi"), [(200, 500), (2000, 8000), (10000, 50000), (50, 100)])
def test_lognormal_from_range_percentiles(lo, hi):
    d = lognormal_from_range(lo, hi)
    dist = stats.lognorm(s=d.sigma, scale=math.exp(d.mu))
    assert dist.ppf(0.05) == pytest.approx(lo, rel=2e-3)
    assert dist.ppf(0.95) == pytest.approx(hi, rel=2e-3)
    x = d.sample(np.random.default_rng(13), N)
    assert np.percentile(x, 5) == pytest.approx(lo, rel=0.02)
    assert np.percentile(x, 95) == pytest.approx(hi, rel=0.02)


def test_lognormal_from_range_keeps_cap():
    d = lognormal_from_range(10000, 50000, 100000)
    assert d.max == 100000
    assert d.mean < d.mean_value


# ----------------------------------------------------------------------------------------------- arrivals


@pytest.mark.parametrize("rate", [0.5, 2.0, 40.0])
def test_poisson_gaps(rate):
    a = PoissonArrivals(rate_per_s=rate)
    gaps = a.gaps_s(np.random.default_rng(14), N)
    assert a.mean_gap_s == pytest.approx(1 / rate)
    assert_mean(gaps, 1 / rate, 1 / rate)
    # Exponential: cv 1; sd of the sample variance is sqrt((kurtosis + 2) / n) relative, kurtosis 6.
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, abs=SIGMAS * 0.5 * math.sqrt(8 / N) + 0.005)


@pytest.mark.parametrize(("rate", "cv"), [(2.0, 0.5), (16.0, 1.5), (0.12, 2.0)])
def test_gamma_gaps(rate, cv):
    a = GammaArrivals(rate_per_s=rate, cv=cv)
    gaps = a.gaps_s(np.random.default_rng(15), N)
    assert np.all(gaps >= 0)
    assert a.mean_gap_s == pytest.approx(1 / rate)
    assert_mean(gaps, 1 / rate, cv / rate)
    kurtosis = 6 * cv * cv  # excess kurtosis of a gamma with shape 1 / cv^2
    tol = SIGMAS * 0.5 * math.sqrt((kurtosis + 2) / N) + 0.005
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(cv, rel=tol)


@pytest.mark.parametrize("arrival", [{"process": "poisson", "rate_per_s": 3.0},
                                     {"process": "gamma", "rate_per_s": 3.0, "cv": 2.0}])
def test_poisson_and_gamma_arrival_times_are_the_draws_they_always_were(arrival):
    # Arrival times are the cumulated gaps of the `arrivals` stream, batch after batch (times_s from the last one):
    # the draws goldens and tests/fixtures were made with.
    reqs = list(generate_requests(spec(num_requests=5000, arrival=arrival), make_rngs(8)))
    rng = make_rngs(8)["arrivals"]
    a = spec(arrival=arrival).arrival
    assert a is not None
    first = np.cumsum(a.gaps_s(rng, 4096))
    second = first[-1] + np.cumsum(a.gaps_s(rng, 904))
    assert [r.arrival_s for r in reqs] == [*first.tolist(), *second.tolist()]


def _phase_counts(a: DiurnalArrivals, times: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Arrivals per phase bin over whole periods, and the integrated rate of each bin: rate x (bin length +
    amplitude P / (2 pi) x (sin at its end - sin at its start)) per period, times the periods."""
    periods = int(times[-1] // a.period_s)
    times = times[times < periods * a.period_s]
    phase = ((times - a.peak_s) % a.period_s) / a.period_s
    counts = np.bincount((phase * bins).astype(int), minlength=bins)
    edges = np.linspace(0.0, 1.0, bins + 1) * 2 * math.pi
    assert a.rate_per_s is not None
    expected = a.rate_per_s * (a.period_s / bins + a.amplitude * a.period_s / (2 * math.pi)
                               * np.diff(np.sin(edges))) * periods
    return counts, expected


@pytest.mark.parametrize(("amplitude", "peak_s"), [(0.0, 0.0), (0.6, 30.0), (0.95, 70.0)])
def test_diurnal_arrivals_follow_the_integrated_rate_in_every_phase(amplitude, peak_s):
    a = DiurnalArrivals(rate_per_s=4.0, amplitude=amplitude, period_s=100.0, peak_s=peak_s)
    rng = np.random.default_rng(21)
    chunks, t = [], 0.0
    for n in (1, 7, 4096, 50_000, 40_000):  # batch after batch, as generate_requests draws them
        chunks.append(a.times_s(rng, t, n))
        t = float(chunks[-1][-1])
    times = np.concatenate(chunks)
    assert np.all(np.diff(times) > 0) and times[0] > 0 and len(times) == 94_104
    counts, expected = _phase_counts(a, times, 20)
    chi2 = float((((counts - expected) ** 2) / expected).sum())
    assert stats.chi2.sf(chi2, 20) > 1e-3, (chi2, counts, expected)  # whole periods: totals are Poisson too
    assert abs(counts.sum() - expected.sum()) <= 5 * math.sqrt(expected.sum())
    if amplitude > 0:  # the peak bin holds (1 + a) / (1 - a) times the trough's, about
        assert counts.argmax() in (0, 19) and counts.argmin() in (9, 10)
    assert a.mean_gap_s == 0.25
    # Over whole periods the mean rate is rate_per_s: the expected span of n arrivals is n / rate_per_s.
    w = spec(num_requests=1000, arrival={"process": "diurnal", "rate_per_s": 4.0, "amplitude": 0.5})
    assert w.expected_span_s == 250.0


def test_rate_per_user_sets_the_arrival_rate_and_one_rate_is_required():
    per_user = spec_data(num_users=200, rate_per_user_per_s=0.025, arrival={"process": "poisson"})
    w = WorkloadSpec.model_validate(per_user)
    assert w.arrival_process.rate_per_s == 5.0 and w.expected_span_s == 100.0
    # The same draws as a rate of 200 x 0.025 = 5 given directly; users still uniform over num_users.
    direct = spec(num_users=200)
    got = list(generate_requests(w, make_rngs(4)))
    want = list(generate_requests(direct, make_rngs(4)))
    assert [(r.arrival_s, r.user_id) for r in got] == [(r.arrival_s, r.user_id) for r in want]
    users = np.array([r.user_id for r in generate_requests(
        WorkloadSpec.model_validate(per_user | {"num_requests": 20_000}), make_rngs(5))])
    assert users.min() >= 0 and users.max() < 200
    assert stats.chisquare(np.bincount(users, minlength=200)).pvalue > 1e-3
    with pytest.raises(ValueError, match="not both"):
        spec(rate_per_user_per_s=0.1)
    with pytest.raises(ValueError, match="required field is missing"):
        spec(arrival={"process": "gamma", "cv": 2.0})
    with pytest.raises(ValueError):
        spec(rate_per_user_per_s=0)
    with pytest.raises(ValueError, match="amplitude"):
        DiurnalArrivals(rate_per_s=1.0, amplitude=1.0)


# ----------------------------------------------------------------------------------------------- generate_requests


def spec(**over) -> WorkloadSpec:
    return WorkloadSpec.model_validate(spec_data(**over))


def spec_data(**over) -> dict:
    data = {
        "num_requests": 500,
        "arrival": {"process": "poisson", "rate_per_s": 5.0},
        "mix": [{"query_type": "a", "weight": 1.0, "prompt_tokens": {"dist": "lognormal", "mean": 100, "cv": 0.5},
                 "reasoning_tokens": {"dist": "uniform", "low": 0, "high": 50},
                 "answer_tokens": {"dist": "constant", "value": 7}}],
    }
    data.update(over)
    return data


def test_generate_stops_at_num_requests():
    reqs = list(generate_requests(spec(num_requests=123), make_rngs(0), batch=50))
    assert len(reqs) == 123
    assert [r.request_id for r in reqs] == list(range(123))
    times = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(times) > 0) and times[0] > 0


def test_generate_stops_at_duration():
    s = spec(num_requests=None, duration_s=100.0, arrival={"process": "poisson", "rate_per_s": 20.0})
    reqs = list(islice(generate_requests(s, make_rngs(1), batch=64), 10_000))  # islice: fail, don't hang
    times = np.array([r.arrival_s for r in reqs])
    assert np.all(np.diff(times) > 0)
    assert times.max() < 100.0
    # About rate x duration = 2000 arrivals (Poisson count, sd ~45), over many batches of 64.
    assert abs(len(reqs) - 2000) < SIGMAS * math.sqrt(2000)
    assert [r.request_id for r in reqs] == list(range(len(reqs)))


def test_generate_stops_at_whichever_comes_first():
    both = spec(num_requests=50, duration_s=1e6)
    assert len(list(generate_requests(both, make_rngs(2)))) == 50
    short = spec(num_requests=1000, duration_s=10.0)
    reqs = list(generate_requests(short, make_rngs(2)))
    assert 0 < len(reqs) < 200 and reqs[-1].arrival_s < 10.0


def test_generate_fields_and_lengths():
    s = spec(num_requests=300, num_users=7)
    reqs = list(generate_requests(s, make_rngs(3)))
    assert {r.query_type for r in reqs} == {"a"}
    assert all(0 <= r.user_id < 7 for r in reqs)
    assert len({r.user_id for r in reqs}) == 7
    assert all(r.answer_tokens == 7 and 0 <= r.reasoning_tokens <= 50 and r.prompt_tokens >= 1 for r in reqs)
    assert all(r.output_tokens == r.reasoning_tokens + r.answer_tokens for r in reqs)


def _key(reqs):
    return [(r.request_id, r.user_id, r.query_type, r.arrival_s, r.prompt_tokens, r.reasoning_tokens,
             r.answer_tokens) for r in reqs]


def test_generate_same_seed_same_requests():
    s = spec(num_requests=400)
    a = _key(generate_requests(s, make_rngs(42), batch=100))
    b = _key(generate_requests(s, make_rngs(42), batch=100))
    c = _key(generate_requests(s, make_rngs(43), batch=100))
    assert a == b
    assert a != c
    assert [x[3] for x in a] != [x[3] for x in c]


def test_generate_streams_are_separate():
    # Changing the lengths leaves arrival times, query types and users alone, and vice versa for the rate.
    base = list(generate_requests(spec(), make_rngs(5)))
    other_lengths = spec(mix=[{"query_type": "a", "prompt_tokens": {"dist": "constant", "value": 3},
                               "reasoning_tokens": {"dist": "constant", "value": 4},
                               "answer_tokens": {"dist": "constant", "value": 5}}])
    changed = list(generate_requests(other_lengths, make_rngs(5)))
    assert [(r.arrival_s, r.user_id) for r in base] == [(r.arrival_s, r.user_id) for r in changed]
    faster = list(generate_requests(spec(arrival={"process": "poisson", "rate_per_s": 10.0}), make_rngs(5)))
    assert [(r.prompt_tokens, r.reasoning_tokens, r.user_id) for r in base] == [
        (r.prompt_tokens, r.reasoning_tokens, r.user_id) for r in faster]
    assert [r.arrival_s / 2 for r in base] == pytest.approx([r.arrival_s for r in faster])


def test_generate_poisson_rate():
    reqs = list(generate_requests(spec(num_requests=20_000, arrival={"process": "poisson", "rate_per_s": 4.0}),
                                  make_rngs(6)))
    gaps = np.diff([0.0] + [r.arrival_s for r in reqs])
    assert_mean(gaps, 0.25, 0.25)


def test_generate_mix_proportions():
    mix = [
        {"query_type": "heavy", "weight": 3.0, "prompt_tokens": {"dist": "constant", "value": 1},
         "reasoning_tokens": {"dist": "constant", "value": 0}, "answer_tokens": {"dist": "constant", "value": 1}},
        {"query_type": "light", "weight": 1.0, "prompt_tokens": {"dist": "constant", "value": 2},
         "reasoning_tokens": {"dist": "constant", "value": 0}, "answer_tokens": {"dist": "constant", "value": 2}},
    ]
    n = 20_000
    reqs = list(generate_requests(spec(num_requests=n, mix=mix), make_rngs(7)))
    heavy = np.array([r.query_type == "heavy" for r in reqs])
    assert heavy.mean() == pytest.approx(0.75, abs=SIGMAS * math.sqrt(0.75 * 0.25 / n))
    # Each request's lengths come from its own query type.
    assert all(r.prompt_tokens == (1 if r.query_type == "heavy" else 2) for r in reqs)
    assert all(r.answer_tokens == r.prompt_tokens for r in reqs)


def test_generate_shipped_mix():
    s = spec(num_requests=2000, mix=[{"query_type": "factual", "weight": 1}, {"query_type": "proof", "weight": 1}])
    reqs = list(generate_requests(s, make_rngs(8)))
    fact = [r.reasoning_tokens for r in reqs if r.query_type == "factual"]
    proof = [r.reasoning_tokens for r in reqs if r.query_type == "proof"]
    assert fact and proof
    assert np.median(fact) < 600 < 15_000 < np.median(proof)
    assert max(proof) <= 120_000


def test_workload_spec_needs_a_stop_and_unique_types():
    with pytest.raises(ValueError, match="num_requests"):
        spec(num_requests=None)
    m = spec().mix[0].model_dump(by_alias=True, exclude_none=True)
    with pytest.raises(ValueError, match="unique"):
        spec(mix=[m, m])


def test_expected_span():
    assert spec(num_requests=100).expected_span_s == pytest.approx(20.0)
    assert spec(num_requests=100, duration_s=5.0).expected_span_s == pytest.approx(5.0)
    assert spec(num_requests=None, duration_s=7.0).expected_span_s == pytest.approx(7.0)
