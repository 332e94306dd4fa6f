"""Layer (d): golden summaries of the shipped scenarios. Regenerate after an intended change with
`python tests/test_golden.py --update` and explain the change in the commit."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from simserve import load_scenario, run

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
SCENARIOS = ["quickstart", "reasoning-mix", "deepseek-r1-production", "mixed-a100-h100", "disaggregated",
             "mooncake-replay", "azure-replay", "test-time-compute/medium-moderate",
             "test-time-compute/parallel-majority", "test-time-compute/parallel-best-of-n"]
VOLATILE = {"wall_time_s"}


def summary_of(name: str) -> dict:
    s = run(load_scenario(ROOT / "scenarios" / f"{name}.yaml")).summary
    return {k: v for k, v in s.items() if k not in VOLATILE}


@pytest.mark.parametrize("name", SCENARIOS)
def test_golden_summary(name):
    expected = json.loads((GOLDEN / f"{name.replace('/', '--')}_summary.json").read_text())
    got = summary_of(name)
    assert set(got) == set(expected)
    for key, want in expected.items():
        have = got[key]
        if isinstance(want, float) or isinstance(have, float):
            if want is None:
                assert math.isnan(have), key
            else:
                assert have == pytest.approx(want, rel=1e-6, abs=1e-12), key
        else:
            assert have == want, key


if __name__ == "__main__" and "--update" in sys.argv:
    GOLDEN.mkdir(exist_ok=True)
    for name in SCENARIOS:
        s = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary_of(name).items()}
        path = GOLDEN / f"{name.replace('/', '--')}_summary.json"
        path.write_text(json.dumps(s, indent=2) + "\n")
        print(f"wrote {path}")
