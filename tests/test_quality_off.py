"""A scenario without answer-quality settings runs exactly as before answer quality existed: its records and
summary equal those the engine wrote before it (tests/fixtures/pre_quality: written by commit 63867f6 running each
scenario cut to 200 requests, as below), byte for byte where the Parquet writer is the same version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import assert_same_records, assert_same_summary

from simserve import Simulation, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_quality"
NEWER = {"wall_time_s", "swap_bytes", "max_wait_s", "jain_fairness_users"}  # summary keys added since (schedulers)
ADDED_SINCE = {"kv_memory_efficiency", "peak_running"}  # KV compression (issue 17)


@pytest.mark.parametrize("name", ["reasoning-mix", "disaggregated"])
def test_no_quality_settings_gives_the_same_records_as_before(tmp_path, name):
    data = yaml.safe_load((ROOT / "scenarios" / f"{name}.yaml").read_text())
    data["workload"]["num_requests"] = 200
    results = Simulation(parse_scenario(data, name, ROOT / "scenarios"), records_dir=tmp_path).run()
    summary = json.loads(json.dumps({k: v for k, v in results.summary.items() if k not in NEWER},
                                    sort_keys=True, default=str))
    before = json.loads((FIXTURES / name / "summary.json").read_text())
    assert set(summary) - set(before) == ADDED_SINCE  # summary keys added after the fixture was written
    assert_same_summary({k: summary[k] for k in before}, before)
    for table in ("requests.parquet", "replicas.parquet"):
        before, now = FIXTURES / name / table, tmp_path / table
        assert_same_records(now, before)
