"""Hunt for differences between fast-forward and exact steps beyond what CI's hypothesis runs draw: many examples of
the test suite's scenario strategies (plain, saturated, answer quality; with and without forked samples), each run in
both modes and compared as the tests compare them (tests/test_invariants.check_same_results: statuses, tokens,
preemptions, and times equal as floats). Prints the first failing scenario as JSON (and writes it to --save), or
"none". Needs the test dependencies (hypothesis) and the tests folder beside this one.

    python bench/hunt_exactness.py --examples 1500
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=500, help="hypothesis examples to draw")
    ap.add_argument("--save", type=Path, default=Path("hunt_failure.json"), help="where a failing case goes")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from helpers import scenario
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_answers_invariants import quality_scenarios
    from test_chains import saturated
    from test_invariants import _ForkingSimulation, check_same_results, scenarios

    from simserve import Simulation

    found: list[tuple[dict, bool, str]] = []

    @settings(max_examples=args.examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(scenarios(), saturated(), quality_scenarios()), st.booleans())
    def hunt(data: dict, forks: bool) -> None:
        if found:
            return
        make = _ForkingSimulation if forks and "parallel" not in json.dumps(data) else Simulation
        try:
            ff = make(scenario(data, check_invariants=True)).run()
            ex = make(scenario(data, check_invariants=True, exact_steps=True)).run()
            check_same_results(ff, ex)
        except Exception:  # noqa: BLE001 - any difference or failure is what the hunt looks for
            found.append((data, forks, traceback.format_exc()[-2000:]))

    hunt()
    if not found:
        print(f"none in {args.examples} examples")
        return 0
    data, forks, error = found[0]
    print(error)
    args.save.write_text(json.dumps({"data": data, "forks": forks}, indent=1, default=str))
    print(f"the failing scenario: {args.save}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
