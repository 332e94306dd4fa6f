"""The results folder of `simserve run`, written atomically: checked before the run starts (a bad --out costs
nothing), filled in a staging folder beside it while the run goes (the records stream there), then put in place
by one rename, so the folder holds either the old results or the new ones, never a mix. Part of the command line
(with cli.py and metrics' record streaming, the only code that writes result files)."""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simserve.scenario import Scenario
    from simserve.sim import Results

# What a results folder may hold: the files `simserve run` writes (and the .partial names records have while a
# run goes). A folder holding anything else is not replaced: it may be someone's work.
REPORT_CHARTS = ("latency-cdf", "latency-over-time", "kv-over-time", "tokens-by-phase", "cost", "accuracy-vs-tokens")
RESULT_FILES = frozenset({"requests.parquet", "replicas.parquet", "scenario.yaml", "summary.json", "requests.csv",
                          "requests.parquet.partial", "replicas.parquet.partial", "report.html",
                          *(f"chart-{name}.png" for name in REPORT_CHARTS)})


class OutputError(Exception):
    """An output path simserve will not or cannot write to; the message names it and says why."""


def json_safe(d: Any) -> Any:
    """NaN (an undefined statistic) and infinity (not known: the horizon of an open-ended trace stopped before its
    last arrival) as JSON null, which has neither; numpy scalars as Python numbers, in nested dicts."""
    if isinstance(d, dict):
        return {k: json_safe(v) for k, v in d.items()}
    if hasattr(d, "item") and not isinstance(d, (str, bytes)):
        d = d.item()
    if isinstance(d, float) and not math.isfinite(d):
        return None
    return d


class ResultsFolder:
    """`target` checked and a staging folder made beside it (same file system, so the final rename is atomic).
    Write into `staging`, then `commit()` (the staging folder becomes `target`, replacing an old results folder
    whole) or `discard()` (the staging folder goes, `target` is left as it was)."""

    def __init__(self, target: Path) -> None:
        self.target = Path(os.path.abspath(target))  # '.' and '..' resolved, symlinks not
        self.staging = _staging_beside(self.target)

    def commit(self) -> None:
        if self.target.exists():
            _check_replaceable(self.target)  # again: it may have changed during the run
            if not _exchange(self.staging, self.target):
                _replace_by_two_renames(self.staging, self.target)
                return
            shutil.rmtree(self.staging)  # after the exchange, the old results
        else:
            os.rename(self.staging, self.target)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _staging_beside(target: Path) -> Path:
    where = f"--out {target}"
    if not target.name:
        raise OutputError(f"{where}: give a folder to write the results in, not a file system root")
    if target.is_symlink():
        raise OutputError(f"{where}: is a symbolic link; give the folder it points to")
    if target.exists():
        _check_replaceable(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.simserve-", dir=target.parent))
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; results get the usual folder mode
        return staging
    except OSError as exc:
        raise OutputError(f"{where}: cannot write in {target.parent} ({exc.strerror or exc}); nothing was run") \
            from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_replaceable(target: Path) -> None:
    where = f"--out {target}"
    if not target.is_dir():
        raise OutputError(f"{where}: exists and is not a folder")
    foreign = sorted(p.name for p in target.iterdir() if p.name not in RESULT_FILES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"{where}: holds files simserve did not write ({shown}); results replace the folder "
                          "whole, so give a new or empty folder, or a previous results folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{where}: the old results there cannot be replaced (no write permission)")


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _replace_by_two_renames(staging: Path, target: Path) -> None:
    """Old results aside, new ones in place, old ones removed; the old ones come back if the second step fails."""
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old / target.name, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ the files


def group_tables(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """The per-query-type and per-pool tables of summary.json (and per difficulty level when answer quality is
    modelled). Every pool is listed (a prefill pool hands its
    requests on and ends none), with its GPUs, busy share and cost; requests that never reached a pool (rejected
    up front, not arrived) are under '(none)'."""
    from simserve.metrics import GROUP_METRICS, group_summary

    by_type = group_summary(results.request_rows, "query_type")
    rows = group_summary(results.request_rows, "pool")
    empty = {"num_requests": 0, "num_completed": 0, "num_rejected": 0, "num_unfinished": 0, "num_not_arrived": 0,
             **{f"{m}_{q}": math.nan for m in GROUP_METRICS for q in ("mean", "p50", "p90", "p99")}}
    by_pool: dict[str, dict[str, Any]] = {}
    for p in results.pools:
        info = {"gpu": p["gpu"], "model": p["model"], "replicas": p["replicas"],
                "tensor_parallel": p["tensor_parallel"], "num_gpus": p["replicas"] * p["tensor_parallel"],
                "gpu_busy_share": p.get("busy_share", math.nan), "gpu_hours": p.get("gpu_hours", math.nan),
                "cost_usd": p.get("cost_usd", math.nan)}
        by_pool[p["pool"]] = {**info, **rows.pop(p["pool"], empty)}
    if "" in rows:
        by_pool["(none)"] = rows.pop("")
    tables = {"by_query_type": by_type, "by_pool": by_pool}
    if "accuracy" in results.summary:  # answer quality modelled: latency by difficulty level too (0: no levels)
        tables["by_difficulty"] = {str(k): v for k, v in group_summary(results.request_rows, "difficulty").items()}
    return tables


def summary_document(results: Results, tables: dict[str, Any]) -> dict[str, Any]:
    """summary.json: the run's flat summary (NaN as null), then the two group tables."""
    return json_safe({**results.summary, **tables})


def write_results(scenario: Scenario, results: Results, out: Path, *, csv: bool = False,
                  tables: dict[str, Any] | None = None) -> dict[str, Any]:
    """scenario.yaml and summary.json into `out` (and requests.csv with `csv`), and the run's two Parquet files of
    records, copied there unless the run already streamed them there (Simulation's records_dir). Returns the
    summary.json document."""
    out.mkdir(parents=True, exist_ok=True)
    for src in (results.requests_path, results.replicas_path):
        dst = out / src.name
        if not (dst.exists() and dst.samefile(src)):
            shutil.copyfile(src, dst)
    (out / "scenario.yaml").write_text(scenario.to_yaml())
    doc = summary_document(results, group_tables(results) if tables is None else tables)
    (out / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    if csv:
        write_csv(out / "requests.parquet", out / "requests.csv")
    return doc


def write_csv(parquet: Path, csv: Path) -> None:
    """The request records as CSV (for spreadsheets), a row group at a time."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    f = pq.ParquetFile(parquet)
    try:
        with pcsv.CSVWriter(csv, f.schema_arrow) as w:
            for i in range(f.num_row_groups):
                w.write_table(f.read_row_group(i))
    finally:
        f.close()


def write_report(out: Path, title: str, summary_text: str, charts: dict[str, Any]) -> list[str]:
    """`simserve run --report`: report.html, one self-contained page (the summary as text, then every chart drawn
    by the Vega libraries inlined in the page: it opens offline and can be sent by mail), and each chart as
    chart-NAME.png (rendered by vl-convert). `charts` are Altair charts by name (charts.run_charts). Returns the
    names of the files written."""
    import html

    import altair as alt
    import vl_convert as vlc

    vl_version = "v" + ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])  # the libraries altair writes for
    specs = {name: chart.to_dict() for name, chart in charts.items()}
    written = []
    for name, spec in specs.items():
        (out / f"chart-{name}.png").write_bytes(vlc.vegalite_to_png(spec, vl_version=vl_version, scale=2))
        written.append(f"chart-{name}.png")

    def script(text: str) -> str:  # nothing in an inline script may close its tag
        return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)

    # The libraries alone (no snippet): the stub says str, but None is the documented default.
    bundle = vlc.javascript_bundle(None, vl_version=vl_version)  # type: ignore[arg-type]
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1100px} pre{font-size:12px;background:#f6f6f6;"
             "padding:1em;overflow-x:auto} .chart{margin:1.5em 0}</style>",
             f"<script>{script(bundle)}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<pre>{html.escape(summary_text)}</pre>"]
    for i, (name, spec) in enumerate(specs.items()):
        parts.append(f"<div class='chart' id='chart-{i}' data-name='{name}'></div>")
        spec_json = json.dumps(spec).replace("</", "<\\/")  # valid JSON: only strings hold "</"
        parts.append(f"<script>vegaEmbed('#chart-{i}', {spec_json}, {{actions: false}});</script>")
    parts.append("</body></html>\n")
    (out / "report.html").write_text("\n".join(parts), encoding="utf-8")
    return ["report.html", *written]


# ------------------------------------------------------------------------------------------ sweeps


class CacheFolder:
    """Finished runs of sweeps, comparisons and capacity searches (sweep.Cache): one JSON file per run, named by
    the hash of its resolved scenario, written whole (a temporary file renamed into place) as soon as the run
    finishes, so an interrupted sweep keeps every run that finished. A file that cannot be read is run again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--cache {self.path}: cannot make the cache folder ({exc.strerror or exc})") from None

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            value = json.loads((self.path / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) and "figures" in value else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=self.path)
        with os.fdopen(fd, "w") as f:
            json.dump(value, f)  # NaN as the JSON extension NaN, which json.loads reads back exactly
        os.replace(tmp, self.path / f"{key}.json")


def sweep_folder(path: Path, option: str = "--out") -> Path:
    """A folder for a sweep's tables and charts (made if absent; files of the same names replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot make the folder ({exc.strerror or exc})") from None
    return path


def write_table(df: Any, path: Path) -> None:
    """A DataFrame as Parquet, written whole (a temporary file renamed into place)."""
    tmp = path.with_name(f".{path.name}.partial")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


CHART_SUFFIXES = (".html", ".png", ".svg")


def save_chart(chart: Any, path: Path) -> Path | None:
    """Write an Altair chart that renders offline: as HTML with the Vega, Vega-Lite and vega-embed libraries inlined
    (altair's default HTML loads them from a CDN, and a chart opened without network shows nothing), or as a PNG or
    SVG image when the path ends so. vl-convert (the vl-convert-python package) bundles the libraries and renders
    the images; without it, or without a chart, nothing is written and the result is None."""
    if chart is None:
        return None
    try:
        import vl_convert  # noqa: F401  (altair's inline and image saving call it)
    except ImportError:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".html":
        chart.save(str(path), format="html", inline=True)
    else:
        chart.save(str(path))
    return path
