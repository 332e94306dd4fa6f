"""Trace replay: arrival times and lengths exactly as recorded, rate scaling, windows, cuts, and clear errors."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pandas as pd
import pytest
import yaml

from simserve import ScenarioError, load_scenario, parse_scenario
from simserve.workload.traces import TraceError, TraceSpec, replay

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MOONCAKE = DATA / "mooncake-conversation" / "conversation_trace.jsonl"
AZURE = DATA / "azure-llm-2023-conv" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE_SAMPLE = ROOT / "scenarios" / "data" / "mooncake-conversation-sample.jsonl"
AZURE_SAMPLE = ROOT / "scenarios" / "data" / "azure-llm-2023-conv-sample.csv"
N = 50


def need(path):
    if not path.is_file():
        pytest.skip(f"data not found: {path}")
    return path


def mooncake_rows(path, n=None):
    """(seconds, input, output, hash ids) of the first n rows, read independently of simserve."""
    with path.open() as f:
        rows = [json.loads(line) for line in islice(f, n)]
    return [(r["timestamp"] / 1000.0, r["input_length"], r["output_length"], tuple(r["hash_ids"])) for r in rows]


def _ns(stamp: str) -> int:
    """'2023-11-16 18:15:46.6805900' -> nanoseconds since the day's midnight plus days (exact integer)."""
    date, clock = stamp.split(" ")
    y, mo, d = (int(x) for x in date.split("-"))
    hh, mm, rest = clock.split(":")
    sec, _, frac = rest.partition(".")
    days = pd.Timestamp(year=y, month=mo, day=d).toordinal()
    return (((days * 24 + int(hh)) * 60 + int(mm)) * 60 + int(sec)) * 10**9 + int((frac + "000000000")[:9])


def azure_rows(path, n=None):
    """(seconds from the first row, context, generated) of the first n rows, read independently of simserve."""
    with path.open() as f:
        header = f.readline().strip().split(",")
        assert header == ["TIMESTAMP", "ContextTokens", "GeneratedTokens"]
        raw = [line.strip().split(",") for line in islice(f, n)]
    t0 = _ns(raw[0][0])
    return [((_ns(s) - t0) / 10**9, int(c), int(g), None) for s, c, g in raw]


def check(reqs, expected, rate_scale=1.0, start_s=0.0):
    assert len(reqs) == len(expected)
    for i, (r, (t, prompt, output, keys)) in enumerate(zip(reqs, expected, strict=True)):
        assert r.request_id == i
        assert r.arrival_s == (t - start_s) / rate_scale
        assert r.prompt_tokens == prompt
        assert r.reasoning_tokens == 0
        assert r.reasoning_tokens + r.answer_tokens == max(output, 1)
        assert r.prefix_keys == keys
        if keys is not None:
            assert r.prefix_unit_tokens == 512
        assert r.query_type == "trace"


TRACES = [("mooncake", MOONCAKE, mooncake_rows), ("azure", AZURE, azure_rows),
          ("mooncake", MOONCAKE_SAMPLE, mooncake_rows), ("azure", AZURE_SAMPLE, azure_rows)]
IDS = ["mooncake", "azure", "mooncake-sample", "azure-sample"]


@pytest.mark.parametrize("fmt, path, reader", TRACES, ids=IDS)
@pytest.mark.parametrize("rate_scale", [1.0, 2.0, 0.5])
def test_replay_reproduces_the_first_rows_exactly(fmt, path, reader, rate_scale):
    path = need(path)
    reqs = list(replay(TraceSpec(format=fmt, path=str(path), max_requests=N, rate_scale=rate_scale)))
    check(reqs, reader(path, N), rate_scale)


@pytest.mark.parametrize("fmt, path, reader", TRACES, ids=IDS)
def test_rate_scale_two_halves_every_arrival_time(fmt, path, reader):
    path = need(path)
    one = list(replay(TraceSpec(format=fmt, path=str(path), max_requests=N)))
    two = list(replay(TraceSpec(format=fmt, path=str(path), max_requests=N, rate_scale=2.0)))
    assert [b.arrival_s for b in two] == [a.arrival_s / 2 for a in one]
    assert [b.prompt_tokens for b in two] == [a.prompt_tokens for a in one]
    assert one[-1].arrival_s > 0  # the rows span time, so halving is visible


@pytest.mark.parametrize("fmt, path, reader", TRACES, ids=IDS)
@pytest.mark.parametrize("rate_scale", [1.0, 2.0])
def test_window_selects_rows_and_shifts_times_to_its_start(fmt, path, reader, rate_scale):
    path = need(path)
    rows = reader(path, 400)
    start, end = rows[60][0], rows[300][0]  # window edges on recorded times (ties included or excluded as a whole)
    assert end > start
    expected = [r for r in rows if start <= r[0] < end]
    assert 0 < len(expected) < len(rows)
    reqs = list(replay(TraceSpec(format=fmt, path=str(path), start_s=start, end_s=end, rate_scale=rate_scale)))
    check(reqs, expected, rate_scale, start)
    assert reqs[0].arrival_s == 0.0
    # A window starting between recorded times: times shift to the window start, not to the first row in it.
    mid = (rows[60][0] + rows[59][0]) / 2 if rows[60][0] > rows[59][0] else start
    reqs = list(replay(TraceSpec(format=fmt, path=str(path), start_s=mid, end_s=end, rate_scale=rate_scale)))
    check(reqs, [r for r in rows if mid <= r[0] < end], rate_scale, mid)


@pytest.mark.parametrize("fmt, path, reader", TRACES, ids=IDS)
def test_max_requests_cuts_and_a_window_combines_with_it(fmt, path, reader):
    path = need(path)
    rows = reader(path, 400)
    assert len(list(replay(TraceSpec(format=fmt, path=str(path), max_requests=7)))) == 7
    start = rows[100][0]
    reqs = list(replay(TraceSpec(format=fmt, path=str(path), start_s=start, max_requests=5)))
    check(reqs, [r for r in rows if r[0] >= start][:5], 1.0, start)


def test_reasoning_share_splits_the_output(tmp_path):
    path = tmp_path / "t.jsonl"
    lines = [{"timestamp": 0, "input_length": 10, "output_length": o, "hash_ids": [1]} for o in (0, 1, 10, 7)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    reqs = list(replay(TraceSpec(format="mooncake", path=str(path), reasoning_share=0.5)))
    assert [(r.reasoning_tokens, r.answer_tokens) for r in reqs] == [(0, 1), (0, 1), (5, 5), (3, 4)]


def test_blank_lines_are_skipped_and_missing_hash_ids_give_no_keys(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"timestamp": 0, "input_length": 10, "output_length": 3}\n\n'
                    '{"timestamp": 1500, "input_length": 600, "output_length": 3, "hash_ids": [4, 5]}\n'
                    '{"timestamp": 2001, "input_length": 0, "output_length": 0, "hash_ids": []}\n')
    reqs = list(replay(TraceSpec(format="mooncake", path=str(path))))
    assert [(r.arrival_s, r.prompt_tokens, r.prefix_keys) for r in reqs] == [
        (0.0, 10, None), (1.5, 600, (4, 5)), (2.001, 1, None)]  # an empty prompt still has one token
    assert reqs[2].output_tokens == 1


@pytest.mark.parametrize("bad", ['{"timestamp": 5, "input_length": 10', '{"timestamp": 5, "output_length": 3}',
                                 '{"timestamp": "x", "input_length": 10, "output_length": 3}', "not json"])
def test_corrupt_mooncake_line_names_file_and_line(tmp_path, bad):
    path = tmp_path / "broken.jsonl"
    good = '{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1]}'
    path.write_text(f"{good}\n{good}\n{bad}\n{good}\n")
    gen = replay(TraceSpec(format="mooncake", path=str(path)))
    with pytest.raises(TraceError) as exc:
        list(gen)
    assert f"{path}: line 3: " in str(exc.value)


def test_azure_csv_without_its_columns_is_named(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("time,ctx\n1,2\n")
    with pytest.raises(ValueError, match="not an Azure LLM trace CSV") as exc:
        list(replay(TraceSpec(format="azure", path=str(path))))
    assert str(path) in str(exc.value)


def test_missing_trace_file_is_a_value_error_at_replay(tmp_path):
    with pytest.raises(ValueError, match="trace file not found"):
        list(replay(TraceSpec(format="azure", path=str(tmp_path / "nope.csv"))))


def test_scenario_with_missing_trace_file_names_the_field(tmp_path):
    data = yaml.safe_load((ROOT / "scenarios" / "mooncake-replay.yaml").read_text())
    data["workload"]["trace"]["path"] = "data/does-not-exist.jsonl"
    scenario_file = tmp_path / "s.yaml"
    scenario_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ScenarioError) as exc:
        load_scenario(scenario_file)
    msg = str(exc.value)
    assert "workload.trace.path" in msg and "does-not-exist.jsonl" in msg and str(scenario_file) in msg
    with pytest.raises(ScenarioError, match="workload.trace.path"):
        parse_scenario(data, base_dir=tmp_path)


def test_scenario_on_the_shipped_mooncake_sample_completes_and_keeps_the_trace(tmp_path):
    from simserve.cli import write_results
    from simserve.sim import run

    # The shipped scenario with a fast linear step model: the replay, not the performance, is under test here.
    sc = load_scenario(ROOT / "scenarios" / "mooncake-replay.yaml",
                       ["perf={kind: linear, step_overhead_s: 0.002, per_prefill_token_s: 1.0e-6, "
                        "per_decode_seq_s: 1.0e-5}"])
    assert Path(sc.base_dir / sc.workload.trace.path).resolve() == MOONCAKE_SAMPLE.resolve()
    res = run(sc)
    write_results(sc, res, tmp_path / "out")
    df = pd.read_parquet(tmp_path / "out" / "requests.parquet").sort_values("request_id", ignore_index=True)
    rows = mooncake_rows(MOONCAKE_SAMPLE)
    assert len(df) == len(rows) == 1200
    assert list(df["request_id"]) == list(range(len(rows)))  # ids in arrival order = file order
    assert (df["status"] == "completed").all()
    assert df["arrival_s"].tolist() == [t for t, _, _, _ in rows]
    assert df["prompt_tokens"].tolist() == [p for _, p, _, _ in rows]
    assert (df["reasoning_tokens"] + df["answer_tokens"]).tolist() == [max(o, 1) for _, _, o, _ in rows]
    assert (df["prefix_hit_tokens"] > 0).any()  # the hash ids drive the caches


# ----------------------------------------------------------------------------------------------- bad rows


AZURE_HEAD = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZURE_OK = "2023-11-16 18:15:46.6805900,10,3\n"
REQUESTS_HEAD = "arrival_s,input_tokens,output_tokens\n"


def mooncake_line(**fields):
    return json.dumps({"timestamp": 0, "input_length": 10, "output_length": 3, **fields}) + "\n"


# (format, file text, line, what the message says): every bad row names its line and what was expected.
BAD_ROWS = [
    ("azure", AZURE_HEAD + AZURE_OK + "2023-11-16 18:15:47.0,-5,3\n", 3, "ContextTokens: expected a whole number "
     "of tokens >= 0, got -5"),
    ("azure", AZURE_HEAD + AZURE_OK + "2023-11-16 18:15:47.0,10,\n", 3, "GeneratedTokens: expected a whole number "
     "of tokens >= 0, got an empty field"),
    ("azure", AZURE_HEAD + AZURE_OK + "2023-11-16 18:15:47.0,ten,3\n", 3, "ContextTokens: expected a whole number "
     "of tokens >= 0, got 'ten'"),
    ("azure", AZURE_HEAD + AZURE_OK + "2023-11-16 18:15:47.0,10,2.5\n", 3, "GeneratedTokens: expected a whole "
     "number of tokens >= 0, got 2.5"),
    ("azure", AZURE_HEAD + AZURE_OK + "yesterday,10,3\n", 3, "TIMESTAMP: expected a date and time"),
    ("azure", AZURE_HEAD + AZURE_OK + "2023-11-16 18:15:45.0,10,3\n", 3, "TIMESTAMP: 2023-11-16 18:15:45.0 is "
     "earlier than line 2's 2023-11-16 18:15:46.6805900: timestamps must not decrease"),
    ("azure", "TIMESTAMP,Context,GeneratedTokens\n" + AZURE_OK, 1, "not an Azure LLM trace CSV: missing column(s) "
     "ContextTokens"),
    ("azure", AZURE_HEAD + AZURE_OK + "\n" + "2023-11-16 18:15:47.0,-1,3\n", 4, "ContextTokens"),  # blank line
    ("requests", REQUESTS_HEAD + "0,1,1\n5,1,1\n3,1,1\n", 4, "arrival_s: 3 is earlier than line 3's 5: "
     "timestamps must not decrease"),
    ("requests", REQUESTS_HEAD + "0,1,1\nsoon,1,1\n", 3, "arrival_s: expected a time in seconds, got 'soon'"),
    ("requests", REQUESTS_HEAD + "0,1,1\n1,-2,1\n", 3, "input_tokens: expected a whole number of tokens >= 0"),
    ("requests", REQUESTS_HEAD + "0,1,1\n1,2,\n", 3, "output_tokens: expected a whole number of tokens >= 0, got "
     "an empty field"),
    ("requests", "arrival_s,input_tokens\n0,1\n", 1, "not a requests CSV: missing column(s) output_tokens"),
    ("requests", REQUESTS_HEAD.strip() + ",prefix_block_hashes\n0,1,1,1 2\n1,1,1,1 x\n", 3,
     "prefix_block_hashes: expected space-separated integers, got '1 x'"),
    ("requests", "arrival_s,engine_arrival_s,input_tokens,output_tokens\n0,1,1,1\n1,0.5,1,1\n", 3,
     "engine_arrival_s: 0.5 is earlier than line 2's 1"),
    ("mooncake", mooncake_line() + mooncake_line(timestamp=-1), 2, "timestamp: -1 is earlier than line 1's 0"),
    ("mooncake", mooncake_line() + mooncake_line(input_length=-3), 2, "input_length: expected a whole number of "
     "tokens >= 0, got -3"),
    ("mooncake", mooncake_line() + mooncake_line(output_length="7"), 2, "output_length: expected a whole number of "
     "tokens >= 0, got '7'"),
    ("mooncake", mooncake_line() + mooncake_line(timestamp=None), 2, "timestamp: expected a number of "
     "milliseconds, got None"),
    ("mooncake", mooncake_line() + mooncake_line(hash_ids=[1, "a"]), 2, "hash_ids: expected a list of integer "
     "block hashes"),
    ("mooncake", mooncake_line() + '{"timestamp": 5, "input_length": 10}\n', 2, "missing output_length"),
    ("mooncake", mooncake_line() + '{"timestamp": 5, "input_length": 10, "outp\n', 2, "not valid JSON"),
    ("mooncake", mooncake_line() + "[1, 2]\n", 2, "expected a JSON object per line"),
]


@pytest.mark.parametrize("fmt, text, line, what", BAD_ROWS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_ROWS)])
def test_a_bad_row_names_the_file_the_line_and_what_was_expected(tmp_path, fmt, text, line, what):
    path = tmp_path / ("t.jsonl" if fmt == "mooncake" else "t.csv")
    path.write_text(text)
    with pytest.raises(TraceError) as exc:
        list(replay(TraceSpec(format=fmt, path=str(path))))
    assert str(exc.value).startswith(f"{path}: line {line}: ")
    assert what in str(exc.value)


@pytest.mark.parametrize("text, what", [("", "empty file"), (REQUESTS_HEAD + "0,1,1\n1,2,3,4\n", "Expected 3 fields"),
                                        (b"arrival_s\xff\n", "not a UTF-8 text file")])
def test_an_unreadable_csv_is_named(tmp_path, text, what):
    path = tmp_path / "t.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TraceError, match=what) as exc:
        list(replay(TraceSpec(format="requests", path=str(path))))
    assert str(path) in str(exc.value)


def test_equal_timestamps_and_zero_counts_are_accepted(tmp_path):
    # Ties keep their file order; a count of 0 is read as 1 token (vLLM serves no empty prompt and always
    # generates a token); the first row's time is the trace's start whatever later rows say.
    path = tmp_path / "t.csv"
    path.write_text(REQUESTS_HEAD + "7,5,0\n7,0,4\n9.5,3,3\n")
    reqs = list(replay(TraceSpec(format="requests", path=str(path))))
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in reqs] == [(0.0, 5, 1), (0.0, 1, 4), (2.5, 3, 3)]


def test_a_requests_csv_is_replayed_in_file_order_never_sorted(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(REQUESTS_HEAD + "0,1,1\n2,2,1\n1,3,1\n")
    with pytest.raises(TraceError, match="line 4: arrival_s: 1 is earlier than line 3's 2"):
        list(replay(TraceSpec(format="requests", path=str(path))))


def test_bad_rows_are_found_past_the_first_chunk(tmp_path, monkeypatch):
    import simserve.workload.traces as traces

    monkeypatch.setattr(traces, "CHUNK_ROWS", 4)
    path = tmp_path / "t.csv"
    path.write_text(REQUESTS_HEAD + "".join(f"{i},1,1\n" for i in range(10)) + "3,1,1\n")
    with pytest.raises(TraceError, match=r"line 12: arrival_s: 3 is earlier than line 11's 9"):
        list(replay(TraceSpec(format="requests", path=str(path))))
    path.write_text(REQUESTS_HEAD + "".join(f"{i},1,1\n" for i in range(4)) + "4,1,1\n")  # a boundary tie is fine
    assert len(list(replay(TraceSpec(format="requests", path=str(path))))) == 5
