"""The op-level profile schema: one folder of measured operation latencies, written by the profiling harness
(calibration/profile_gpu.py) and by the importers of published data (simserve.calibration.importers), read by the
fitting (simserve.calibration.fitting).

A profile folder holds `metadata.yaml` and any of these tables, as `NAME.csv` or `NAME.csv.gz`. Latencies are
seconds; head counts are per GPU (after tensor-parallel sharding); sizes are tokens or bytes as named.

- gemm: one dense GEMM Y[m,n] = X[m,k] @ W[n,k]^T. Columns m, n, k.
- context_attention: prefill attention of batch_size sequences, each new_tokens new after cached_tokens cached.
  Columns batch_size, new_tokens, cached_tokens, num_heads, num_kv_heads, head_dim.
- generation_attention: decode attention, one query per sequence over a context of kv_tokens (the new token
  included). Columns batch_size, kv_tokens, num_heads, num_kv_heads, head_dim.
- allreduce: one all-reduce of message_bytes per GPU. Columns num_gpus, message_bytes.
- elementwise: a memory-bound kernel (rmsnorm, rope, silu_mul, add, ...). Columns op, num_tokens, width.
- steps: one whole model step (the harness only). Columns decode_context_tokens, prefill_new_tokens,
  prefill_cached_tokens: space-separated integer lists, one entry per sequence.

Every table also has `latency_s` and may have `status` (`ok`, or `oom` for a point that ran out of memory; such
rows are kept in the file and left out of fits).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from simserve.hardware import GpuDatasheet

SCHEMA = "simserve-profile/1"

COLUMNS: dict[str, tuple[str, ...]] = {
    "gemm": ("m", "n", "k"),
    "context_attention": ("batch_size", "new_tokens", "cached_tokens", "num_heads", "num_kv_heads", "head_dim"),
    "generation_attention": ("batch_size", "kv_tokens", "num_heads", "num_kv_heads", "head_dim"),
    "allreduce": ("num_gpus", "message_bytes"),
    "elementwise": ("op", "num_tokens", "width"),
    "steps": ("decode_context_tokens", "prefill_new_tokens", "prefill_cached_tokens"),
}
_TEXT_COLUMNS = {"op", "decode_context_tokens", "prefill_new_tokens", "prefill_cached_tokens"}


class ProfileError(Exception):
    """A profile folder that cannot be used; the message names the file, the field and what was expected."""


class ProfileMetadata(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)
    schema_: str = Field(alias="schema")
    source: dict[str, Any] = Field(description="where the numbers come from: kind (harness, aiconfigurator, ...)")
    gpu: GpuDatasheet
    dtype: str = "bfloat16"
    attention_backend: str | None = None
    date: str | None = None
    software: dict[str, Any] = Field(default_factory=dict)
    model: dict[str, Any] | None = Field(default=None, description="architecture the steps table measured")
    scaled_from: dict[str, Any] | None = None
    repeats: int | None = None
    warmup: int | None = None
    notes: str | None = None
    complete: bool = True


@dataclass
class Profile:
    """A loaded profile: its metadata and one DataFrame per table present (only `ok` rows, latency_s > 0)."""

    path: Path | None
    metadata: ProfileMetadata
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped_rows: dict[str, int] = field(default_factory=dict)

    def __contains__(self, table: str) -> bool:
        return table in self.tables

    def __getitem__(self, table: str) -> pd.DataFrame:
        return self.tables[table]


def _table_file(folder: Path, name: str) -> Path | None:
    for suffix in (".csv", ".csv.gz"):
        p = folder / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def _check_table(name: str, df: pd.DataFrame, where: str) -> tuple[pd.DataFrame, int]:
    required = COLUMNS[name] + ("latency_s",)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ProfileError(f"{where}: missing column(s) {', '.join(missing)}; expected columns "
                           f"{', '.join(required)} (and optionally status)")
    unknown = [c for c in df.columns if c not in required and c != "status"]
    if unknown:
        raise ProfileError(f"{where}: unknown column(s) {', '.join(map(str, unknown))}; expected "
                           f"{', '.join(required)} (and optionally status)")
    if "status" in df.columns:
        status = df["status"].fillna("ok").astype(str)
        bad = sorted(set(status) - {"ok", "oom"})
        if bad:
            raise ProfileError(f"{where}: column status: expected 'ok' or 'oom', got {bad[0]!r}")
        keep = status == "ok"
    else:
        keep = pd.Series(True, index=df.index)
    ok = df[keep].drop(columns=["status"], errors="ignore").reset_index(drop=True)
    for col in required:
        if col in _TEXT_COLUMNS:
            ok[col] = ok[col].fillna("").astype(str)
            continue
        values = pd.to_numeric(ok[col], errors="coerce")
        bad_rows = np.flatnonzero(~np.isfinite(values.to_numpy(dtype=float)))
        if len(bad_rows):
            raise ProfileError(f"{where}: row {int(bad_rows[0]) + 2}: column {col}: expected a number, got "
                               f"{ok[col].iloc[bad_rows[0]]!r}")
        positive_needed = col != "cached_tokens"
        if positive_needed and (values <= 0).any():
            row = int(np.flatnonzero((values <= 0).to_numpy())[0])
            raise ProfileError(f"{where}: row {row + 2}: column {col}: expected a positive number, got {values[row]}")
        if (values < 0).any():
            row = int(np.flatnonzero((values < 0).to_numpy())[0])
            raise ProfileError(f"{where}: row {row + 2}: column {col}: expected >= 0, got {values[row]}")
        ok[col] = values.astype(float)
    if name == "steps":
        for i, row in ok.iterrows():
            try:
                steps_row_batch(row)
            except ValueError as exc:
                raise ProfileError(f"{where}: row {int(i) + 2}: {exc}") from None
    return ok, int((~keep).sum())


def _parse_int_list(text: str) -> np.ndarray:
    """'100 200 300' -> array([100, 200, 300]); '' -> empty."""
    text = str(text).strip()
    if not text or text == "nan":
        return np.zeros(0, dtype=np.int64)
    return np.array([int(float(v)) for v in text.replace(",", " ").split()], dtype=np.int64)


def steps_row_batch(row: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (decode contexts, prefill new, prefill cached) arrays of one steps row, checked for consistency."""
    try:
        dec = _parse_int_list(row["decode_context_tokens"])
        new = _parse_int_list(row["prefill_new_tokens"])
        cached = _parse_int_list(row["prefill_cached_tokens"])
    except ValueError:
        raise ValueError("token lists must be space-separated integers") from None
    if len(new) != len(cached):
        raise ValueError(f"prefill_new_tokens has {len(new)} entries but prefill_cached_tokens {len(cached)}")
    if len(dec) + len(new) == 0:
        raise ValueError("a step with no decoding and no prefilling sequence")
    if (dec <= 0).any() or (new <= 0).any() or (cached < 0).any():
        raise ValueError("token counts must be positive (cached >= 0)")
    return dec, new, cached


def load_profile(path: str | Path) -> Profile:
    """Read and check a profile folder; ProfileError names the file and field of anything wrong."""
    folder = Path(path)
    if folder.is_file() and (folder.parent / "metadata.yaml").exists():
        folder = folder.parent  # a table of a profile folder (PROFILE/steps.csv): the folder it belongs to
    if not folder.is_dir():
        raise ProfileError(f"{folder}: not a profile folder (expected a directory with metadata.yaml)")
    meta_path = folder / "metadata.yaml"
    if not meta_path.exists():
        raise ProfileError(f"{meta_path}: missing (every profile folder has metadata.yaml, schema {SCHEMA})")
    try:
        raw = yaml.safe_load(meta_path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{meta_path}: not valid YAML: {exc}") from None
    try:
        meta = ProfileMetadata.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]).replace("schema_", "schema")
        raise ProfileError(f"{meta_path}: {loc or '(top level)'}: {first['msg']}") from None
    if meta.schema_ != SCHEMA:
        raise ProfileError(f"{meta_path}: schema: expected {SCHEMA!r}, got {meta.schema_!r}")
    profile = Profile(path=folder, metadata=meta)
    for name in COLUMNS:
        file = _table_file(folder, name)
        if file is None:
            continue
        try:
            df = pd.read_csv(file, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, gzip.BadGzipFile, OSError) as exc:
            raise ProfileError(f"{file}: cannot be read as CSV: {exc}") from None
        ok, skipped = _check_table(name, df, str(file))
        if len(ok):
            profile.tables[name] = ok
        profile.skipped_rows[name] = skipped
    if not profile.tables:
        raise ProfileError(f"{folder}: no measured rows; expected at least one of "
                           f"{', '.join(f'{n}.csv' for n in COLUMNS)}")
    return profile


def write_profile(folder: str | Path, metadata: dict[str, Any], tables: dict[str, pd.DataFrame],
                  compress: bool = False) -> Path:
    """Write a profile folder (validated by reading it back)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.yaml").write_text(yaml.safe_dump(metadata, sort_keys=False))
    for name, df in tables.items():
        if name not in COLUMNS:
            raise ProfileError(f"unknown table {name!r}; tables: {', '.join(COLUMNS)}")
        cols = [c for c in (*COLUMNS[name], "latency_s", "status") if c in df.columns]
        file = out / (f"{name}.csv.gz" if compress else f"{name}.csv")
        stale = out / (f"{name}.csv" if compress else f"{name}.csv.gz")
        stale.unlink(missing_ok=True)
        df[cols].to_csv(file, index=False, float_format="%.9g",
                        compression={"method": "gzip", "mtime": 0} if compress else None)
    load_profile(out)
    return out

