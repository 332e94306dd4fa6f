"""What a scenario's workload will meet, found before it runs (`simserve check`, and `simserve run` before it
starts): a trace is read row by row, streaming (a large trace costs no memory), so a bad row is reported with its
file and line before any simulated time is spent; requests that can never fit a replica are counted."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from simserve.request import Request
from simserve.scenario import Scenario, ScenarioError
from simserve.workload import TraceError, generate_requests, rng_streams

MAX_DRAWS = 100_000  # requests drawn from a synthetic workload to count those that can never fit


@dataclass(frozen=True)
class WorkloadReport:
    """What reading (a trace) or drawing (a synthetic workload, up to MAX_DRAWS) the workload's requests found."""

    num_requests: int  # requests looked at
    complete: bool  # every request of the workload (false: a synthetic workload drawn up to the cap)
    span_s: float  # arrival time of the last one looked at
    num_too_long: int  # prompt + output over `max_tokens`: rejected on arrival, whatever the router does
    max_tokens: int  # the most tokens a request may reach on the replicas that would serve it


def max_request_tokens(scenario: Scenario) -> int:
    """The most tokens (prompt plus output) a request may have and still be served: the largest limit among the
    pools that take new requests, and, with prefill/decode disaggregation, among the decode pools too."""
    pools = scenario.cluster.pools
    entry = max(scenario.max_tokens_of(p) for p in pools if p.role != "decode")
    decode = [scenario.max_tokens_of(p) for p in pools if p.role == "decode"]
    return min(entry, max(decode)) if decode else entry


def _requests(scenario: Scenario, source: str) -> Iterator[Request]:
    """The workload's requests as the run draws them (first turns only: follow-up turns depend on the run)."""
    requests = generate_requests(scenario.workload, rng_streams(scenario.seed), scenario.base_dir,
                                 model=scenario.answer_model, kv_compression=scenario.answer_compression)
    while True:
        try:
            yield next(requests)
        except StopIteration:
            return
        except TraceError as exc:
            raise ScenarioError(f"{source}: workload.trace.path: {exc}") from None


def check_workload(scenario: Scenario, source: str, max_draws: int = MAX_DRAWS) -> WorkloadReport:
    """Read every row of a trace workload (ScenarioError naming the scenario, the trace file, the line and what
    was expected, for a bad one), or draw up to `max_draws` requests of a synthetic workload, and count those
    that can never fit a replica."""
    limit = max_request_tokens(scenario)
    is_trace = scenario.workload.trace is not None
    cap = math.inf if is_trace else max_draws
    n = too_long = 0
    span = 0.0
    complete = True
    for req in _requests(scenario, source):
        if n >= cap:
            complete = False
            break
        n += 1
        span = req.arrival_s
        too_long += req.total_tokens > limit
    return WorkloadReport(n, complete, span, too_long, limit)


def describe(report: WorkloadReport, scenario: Scenario) -> list[str]:
    """Lines for `simserve check`: what was read, and a warning for requests that can never fit."""
    trace = scenario.workload.trace
    n = f"{report.num_requests:,} requests"
    what = (f"trace {trace.path}: {n}, each row checked" if trace is not None
            else f"{n} drawn" if report.complete else f"the first {n} drawn")
    lines = [f"  workload: {what}, arriving over {report.span_s:,.1f} s"]
    if report.num_too_long:
        lines.append(f"  warning: {report.num_too_long:,} of {report.num_requests:,} requests can never fit a "
                     f"replica (prompt + output over {report.max_tokens:,} tokens: max_model_len_tokens or the KV "
                     "capacity); the run rejects them on arrival")
    return lines
