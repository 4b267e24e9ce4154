"""`nettrain-summarize`: one table, CSV, Markdown page and plot for a sweep or any set of runs.

    nettrain-summarize outputs/multirun/2025-01-01/12-00-00-000000      # a sweep: its job dirs
    nettrain-summarize outputs/2025-01-01/10-* outputs/2025-01-02/09-*  # any run dirs
    nettrain-summarize RUN_DIR RUN_DIR --out reports/                   # write somewhere else

Each run dir gives one row: the swept values (the override keys whose values differ between the
runs, read from each run's .hydra/overrides.yaml), the status (ok, early-stopped, failed with the
error's first line, or incomplete: interrupted (resumable), or no summary.json at all: killed or
still running), best epoch, best val loss and accuracy, test accuracy (regression: best val R² and
MAE, test R² and MAE), the best val and test figures of the runs' `metrics=[...]` (F1, AUROC, ...),
epochs run, wall time and samples/s. The best finished row by the monitored metric (summary.json's
"monitor": losses and errors lower is better, val_acc, val_r2, F1 and the like higher) is marked. Folders of dry runs, finders and profiles (dry_run=true, find=..., profile=true) train nothing: they are left
out, and counted. Runs on different data sets (their saved config's data section, loading and
split settings aside) are never ranked together: a `data set` column names each one's, each data
set's best is marked, and a warning says so. Written, atomically, into the output folder (`--out`; by
default the folder given when it is one sweep, else the deepest folder holding every run):

- summary.csv: the rows, full precision, plus `error` and `best` (1 on a best row) columns (and
  `data_set` when the runs differ in data)
- summary.md:  the same as a Markdown table
- summary.png: the monitored metric against each swept parameter (log x for lr-like keys: any key
  ending in lr, weight_decay or l1, or positive values spanning two decades or more; mean with a
  min-max bar where several seeds ran the same point), and every run's val_loss curve overlaid

The exit status is 0 when every run finished, 1 when any failed or is incomplete, 2 when no run
dir was found. The same summary is written when a multirun ends (nettrain.commands.sweep_callback).

rich and matplotlib are imported inside the functions that use them.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nettrain.config.schema import is_finite_number, metric_mode
from nettrain.errors import BadInput, RunFolderLinkError
from nettrain.files import atomic_write, write_text
from nettrain.insight.figures import pyplot, ticker
from nettrain.run.folder import refuse_symlinks
from nettrain.run.metrics import read_metrics
from nettrain.run.summary import RunStatus

STATUS_NAMES: dict[str, str] = {
    RunStatus.COMPLETED: "ok",
    RunStatus.EARLY_STOPPED: "early-stopped",
    RunStatus.FAILED: "failed",
    RunStatus.INTERRUPTED: "incomplete",  # interrupted: stopped by a signal, resumable
    RunStatus.DIVERGED: "diverged",  # a non-finite training loss stopped it: a failure
}
FINISHED = ("ok", "early-stopped")
METRICS = ["best_epoch", "best_val_loss", "best_val_acc", "test_acc", "epochs_run", "wall_time_s", "samples_per_s"]
REGRESSION_METRICS = ["best_val_r2", "best_val_mae", "test_r2", "test_mae"]  # shown when a run is a regression
CLASSIFICATION_ONLY = ("best_val_acc", "test_acc")  # left out when every run is a regression
EXTRA_PREFIXES = ("best_val_", "test_")  # a run's metrics=[...]: best_val_NAME and test_NAME columns after these
# data keys that load, split, augment or encode a data set but do not make it another one: runs
# that differ only in these are compared (and ranked) together
NOT_THE_DATA_SET = (
    *("in_memory", "num_workers", "download", "cache", "cache_dir", "on_bad_file"),
    *("augment", "crop_padding", "mix", "mix_alpha", "image_size", "channels"),
    *("val_fraction", "test_fraction", "split_seed", "features", "categorical", "impute"),
)
LR_LIKE_SUFFIXES = ("lr", "weight_decay", "l1")
_MAX_SERIES = 8  # more series than this in one panel: plain points, no legend
_MAX_LEGEND = 12  # more curves than this: no legend on the curves panel


# -- reading runs ----------------------------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    """A folder with a run's record; not one whose results moved on to a re-launched job
    (nettrain/run/sweep.py leaves claimed.json there)."""
    if not path.is_dir() or ((path / "claimed.json").exists() and not (path / "summary.json").exists()):
        return False
    return any((path / name).exists() for name in (".hydra/overrides.yaml", "summary.json", "metrics.csv"))


def _natural_key(path: str | Path) -> list:
    """Sort key putting "2" before "10": text and numbers alternate, as re.split leaves them."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(paths: Iterable[str | Path], max_depth: int = 4) -> list[Path]:
    """Run dirs among `paths`: a path that is a run dir, or the run dirs found under it (a sweep's
    job dirs, or any folder of runs), in natural order (job 2 before job 10). Hidden folders
    (.hydra, .submitit) and the insides of run dirs are not searched."""
    found: list[Path] = []
    for path in map(Path, paths):
        if is_run_dir(path):
            found.append(path)
            continue
        below: list[Path] = []
        for root, dirs, _ in os.walk(path):
            root_path = Path(root)
            if root_path != path and is_run_dir(root_path):
                below.append(root_path)
                dirs.clear()
                continue
            depth = len(root_path.relative_to(path).parts)
            dirs[:] = [] if depth >= max_depth else [d for d in dirs if not d.startswith(".")]
        found.extend(sorted(below, key=_natural_key))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def parse_value(text: str) -> Any:
    """An override's value as a number, bool or None where it is one; else the text as typed
    (lists, group options, strings), so values compare and group as written."""
    if text is None:
        return None
    for convert in (int, float):
        try:
            value = convert(text)
            return value if convert is int or math.isfinite(value) else text
        except ValueError:
            pass
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    return text


def parse_overrides(lines: Sequence[str]) -> dict[str, Any]:
    """`["lr=0.001", "+x=1", "~y"]` -> `{"lr": 0.001, "x": 1, "~y": None}`."""
    result: dict[str, Any] = {}
    for line in lines:
        line = str(line)
        if "=" not in line:
            result[line] = None
            continue
        key, value = line.split("=", 1)
        result[key.lstrip("+")] = parse_value(value)
    return result


def _read_overrides(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}

    try:
        lines = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise Unreadable(f".hydra/overrides.yaml: {type(exc).__name__}") from None
    if not isinstance(lines, list):
        raise Unreadable(f".hydra/overrides.yaml holds a {type(lines).__name__}, not a list")
    return parse_overrides([str(line) for line in lines])


def _read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The numeric cells of each epoch's row (none when the run left no metrics.csv)."""
    if not (run_dir / "metrics.csv").exists():
        return []
    try:
        rows = [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in read_metrics(run_dir)]
    except (OSError, ValueError, csv.Error) as exc:  # not UTF-8, a folder, a broken file
        raise Unreadable(f"metrics.csv: {type(exc).__name__}: {exc}") from None
    return [row for row in rows if "epoch" in row]


@dataclass
class Run:
    """One row: a run dir's overrides, status and headline numbers."""

    path: Path
    name: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    status: str = "incomplete"  # ok | early-stopped | failed | incomplete
    error: str | None = None
    monitor: str | None = None
    values: dict[str, Any] = field(default_factory=dict)  # METRICS, REGRESSION_METRICS and metrics=[...] keys
    curve: list[tuple[float, float]] = field(default_factory=list)  # (epoch, val_loss)
    tool: str | None = None  # dry_run=true, find=... or profile=true: a folder that trained nothing
    data: dict[str, Any] | None = None  # the data set (the data section's identifying keys); None: unknown
    data_label: str | None = None  # its short name in the table (set when runs differ in data)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def status_text(self) -> str:
        return f"{self.status}: {self.error}" if self.error and not self.finished else self.status


def read_run(run_dir: str | Path) -> Run:
    """A Run from a run dir's .hydra/overrides.yaml, summary.json and metrics.csv. Without a
    summary.json the run is incomplete and what metrics.csv shows so far fills the numbers. A run
    whose files cannot be read (not UTF-8, a folder, broken YAML, a summary that is not an
    object) is `unreadable`, with the reason; the other runs are summarized as usual. So is a run
    folder holding a symlink, which is not read at all (and named on stderr)."""
    try:
        refuse_symlinks(run_dir)  # nothing is read through a link: the run is left out, and says why
        return _read_run(Path(run_dir))
    except RunFolderLinkError as exc:
        print(f"warning: {exc}. Nothing in it was read: its row says unreadable", file=sys.stderr)
        return _unreadable(Path(run_dir), f"holds symlinks (not read): {'; '.join(exc.found)}")
    except Exception as exc:  # noqa: BLE001 - one damaged run must not cost the summary
        first = (str(exc).strip().splitlines() or [""])[0]
        return _unreadable(Path(run_dir), f"{type(exc).__name__}: {first}")


def _unreadable(run_dir: Path, error: str) -> Run:
    """The row of a run that could not be read, with why (at most 200 characters)."""
    values = {key: None for key in METRICS + REGRESSION_METRICS}
    return Run(path=run_dir, name=run_dir.name, status="unreadable", error=error[:200], values=values)


class Unreadable(ValueError):
    """A run file whose content is not what nettrain writes."""


def _read_config(run_dir: Path) -> dict[str, Any]:
    """The run's saved .hydra/config.yaml as plain data ({} when there is none; never composed)."""
    path = run_dir / ".hydra" / "config.yaml"
    if not path.exists():
        return {}

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise Unreadable(f".hydra/config.yaml: {type(exc).__name__}") from None
    if not isinstance(config, dict):
        raise Unreadable(f".hydra/config.yaml holds a {type(config).__name__}, not a config")
    return config


def _tool(config: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    """'dry_run=true', 'find=lr' or 'profile=true' for a folder a dry run, a finder or the
    profiler wrote, else None."""
    dry_run = config.get("dry_run", overrides.get("dry_run"))
    find = config.get("find", overrides.get("find"))
    if find:
        return f"find={find}"
    profiled = config.get("profile", overrides.get("profile"))
    if profiled is True or str(profiled).lower() == "true":
        return "profile=true"
    return "dry_run=true" if dry_run is True or str(dry_run).lower() == "true" else None


def _data_set(config: dict[str, Any]) -> dict[str, Any] | None:
    """What names the run's data set: its data section without NOT_THE_DATA_SET (None: unknown)."""
    data = config.get("data")
    if not isinstance(data, dict):
        return None
    return {key: value for key, value in data.items() if key not in NOT_THE_DATA_SET}


def _read_run(run_dir: Path) -> Run:
    run = Run(path=run_dir, name=run_dir.name)
    run.overrides = _read_overrides(run.path)
    config = _read_config(run.path)
    run.tool, run.data = _tool(config, run.overrides), _data_set(config)
    metrics = _read_metrics(run.path)
    run.curve = [(r["epoch"], r["val_loss"]) for r in metrics if "val_loss" in r]
    summary: dict[str, Any] = {}
    summary_path = run.path / "summary.json"
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Unreadable(f"summary.json: {exc}") from None
        if not isinstance(summary, dict):
            raise Unreadable(f"summary.json holds a {type(summary).__name__}, not an object")
    if summary:
        raw = str(summary.get("status", RunStatus.COMPLETED))
        run.status = STATUS_NAMES.get(raw, raw.replace("_", "-"))
        error = str(summary.get("error") or "").strip()
        if error:
            run.error = error.splitlines()[0]
        elif raw == RunStatus.INTERRUPTED:
            signal = f" by signal {summary['signal']}" if summary.get("signal") else ""
            run.error = f"interrupted{signal}; nettrain-train resume=RUN_DIR continues it"
        run.monitor = summary.get("monitor")
    run.values = {key: summary.get(key) for key in METRICS + REGRESSION_METRICS}
    run.values |= {key: value for key, value in summary.items() if is_extra(key)}
    if metrics:
        _fill_from_metrics(run, metrics)
    return run


def _fill_from_metrics(run: Run, metrics: list[dict[str, float]]) -> None:
    """What the summary lacks, from the epochs in metrics.csv: a failed or incomplete run's best
    epoch so far, and the best epoch's validation figures a summary does not hold (val_mae, and
    those of metrics=[...] while the run is incomplete)."""
    monitor = run.monitor or "val_loss"
    scored = [r for r in metrics if is_finite_number(r.get(monitor))]
    run.values["epochs_run"] = run.values["epochs_run"] if run.values["epochs_run"] is not None else len(metrics)
    if scored and run.values["best_epoch"] is None:
        pick = min if metric_mode(monitor) == "min" else max
        run.values["best_epoch"] = int(pick(scored, key=lambda r: r[monitor])["epoch"])
    best = next((r for r in metrics if r["epoch"] == run.values["best_epoch"]), None)
    extra = [f"best_{key}" for key in (best or {}) if is_extra(f"best_{key}")]
    for key in ("best_val_loss", "best_val_acc", "best_val_r2", "best_val_mae", *extra):
        if best is not None and run.values.get(key) is None:
            run.values[key] = best.get(key[len("best_") :])
    if run.values["samples_per_s"] is None:
        speeds = [r["samples_per_s"] for r in metrics if is_finite_number(r.get("samples_per_s"))]
        run.values["samples_per_s"] = sum(speeds) / len(speeds) if speeds else None


# -- the summary -------------------------------------------------------------------------------------


@dataclass
class SweepSummary:
    runs: list[Run]
    swept: list[str]  # override keys whose values differ between runs
    monitor: str
    best: int | None  # index into runs of the best finished run (None when the runs differ in data)
    out_dir: Path
    written: list[Path] = field(default_factory=list)
    left_out: list[Run] = field(default_factory=list)  # dry runs and finders: folders that trained nothing
    best_by_data: dict[str, int] = field(default_factory=dict)  # data label -> its best run, when runs differ in data

    @property
    def mode(self) -> str:
        return metric_mode(self.monitor)

    @property
    def bests(self) -> list[int]:
        """The rows marked best: the one best run, or each data set's."""
        return sorted(self.best_by_data.values()) if self.best_by_data else [] if self.best is None else [self.best]

    @property
    def metrics(self) -> list[str]:
        """The figures shown: METRICS, with R² and MAE when a run is a regression (and without
        the accuracies when every run is), and the metrics=[...] figures any run has."""
        extra = list(dict.fromkeys(key for run in self.runs for key in run.values if is_extra(key)))
        extra.sort(key=lambda key: key.startswith("test_"))  # best val figures first, then the test's
        regression = [
            run
            for run in self.runs
            if (run.data or {}).get("task") == "regression"
            or any(run.values.get(k) is not None for k in REGRESSION_METRICS)
        ]
        shown = [k for k in METRICS if k not in CLASSIFICATION_ONLY or len(regression) < len(self.runs)]
        at = shown.index("epochs_run")
        return shown[:at] + (REGRESSION_METRICS if regression else []) + extra + shown[at:]

    @property
    def counts(self) -> Counter:
        return Counter(run.status for run in self.runs)

    @property
    def all_finished(self) -> bool:
        return all(run.finished for run in self.runs)

    @property
    def not_finished(self) -> list[Run]:
        return [run for run in self.runs if not run.finished]


def swept_keys(runs: Sequence[Run]) -> list[str]:
    """Override keys whose value differs between the runs (or that only some runs have), in the
    order they first appear."""
    keys: list[str] = []
    for run in runs:
        keys.extend(k for k in run.overrides if k not in keys)
    missing = object()
    swept = []
    for key in keys:
        values = {repr(run.overrides.get(key, missing)) for run in runs}
        if len(values) > 1:
            swept.append(key)
    return swept


def pick_best(runs: Sequence[Run], monitor: str) -> int | None:
    """Index of the best finished run by best_<monitor> (val_loss: lowest, val_acc: highest)."""
    key = f"best_{monitor}"
    scored = [
        (i, value) for i, run in enumerate(runs) if run.finished and is_finite_number(value := run.values.get(key))
    ]
    if not scored:
        return None
    sign = 1 if metric_mode(monitor) == "min" else -1
    return min(scored, key=lambda item: (sign * item[1], item[0]))[0]


def _common_parent(paths: Sequence[Path]) -> Path:
    if len(paths) == 1:
        return paths[0].parent
    return Path(os.path.commonpath([str(p) for p in paths]))


def collect(paths: Sequence[str | Path], out_dir: str | Path | None = None) -> SweepSummary:
    """Read every run under `paths` into a SweepSummary (nothing written)."""
    folders = [Path(p) for p in paths]
    run_dirs = find_run_dirs(folders)
    if not run_dirs:
        raise FileNotFoundError(
            "no run dirs (a folder with .hydra/overrides.yaml, summary.json or "
            f"metrics.csv) in {', '.join(map(str, folders))}"
        )
    single = len(folders) == 1 and not is_run_dir(folders[0])
    base = folders[0].resolve() if single else _common_parent(run_dirs)  # runs are named relative to it
    out_dir = Path(out_dir).resolve() if out_dir is not None else base
    everything = [read_run(d) for d in run_dirs]
    for run in everything:
        run.name = run.path.relative_to(base).as_posix()
    runs = [run for run in everything if run.tool is None]
    left_out = [run for run in everything if run.tool is not None]
    if not runs:
        raise FileNotFoundError(
            f"no training runs in {', '.join(map(str, folders))}: {_left_out_text(left_out)}, which train nothing"
        )
    monitor = _monitor(runs)
    summary = SweepSummary(runs=runs, swept=swept_keys(runs), monitor=monitor, best=None, out_dir=out_dir)
    summary.left_out = left_out
    groups = data_groups(runs)
    if len(groups) > 1:  # never one best across data sets: each data set's own
        summary.best_by_data = {
            label: members[i]
            for label, members in groups.items()
            if (i := pick_best([runs[m] for m in members], _monitor([runs[m] for m in members]))) is not None
        }
    else:
        summary.best = pick_best(runs, monitor)
    return summary


def _monitor(runs: Sequence[Run]) -> str:
    """The runs' monitored metric (the most common; val_loss when none says)."""
    monitors = Counter(run.monitor for run in runs if isinstance(run.monitor, str) and run.monitor.startswith("val_"))
    return monitors.most_common(1)[0][0] if monitors else "val_loss"


def _left_out_text(left_out: Sequence[Run]) -> str:
    kinds = Counter("dry run" if run.tool == "dry_run=true" else f"{run.tool} run" for run in left_out)
    return (
        f"{len(left_out)} folder{'s' if len(left_out) != 1 else ''} left out ("
        + ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(kinds.items()))
        + ")"
    )


def data_groups(runs: Sequence[Run]) -> dict[str, list[int]]:
    """The runs by data set, {label: indices}, and each run's `data_label` set when there are
    several. A run whose data is unknown (no saved config) joins when every known run agrees."""
    known = [run.data for run in runs if run.data is not None]
    distinct = [d for i, d in enumerate(known) if d not in known[:i]]
    if len(distinct) <= 1:
        return {"": list(range(len(runs)))}
    groups: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        label = "unknown data" if run.data is None else _data_label(run.data, distinct)
        run.data_label = label
        groups.setdefault(label, []).append(i)
    return groups


def _data_label(data: dict[str, Any], distinct: list[dict[str, Any]]) -> str:
    """The data option's name (its target's last part: csv, synthetic), with the keys in which it
    differs from the other data sets of that option (csv path=b.csv)."""
    target = data.get("_target_")
    kin = [d for d in distinct if d.get("_target_") == target]
    keys = sorted({k for d in kin for k in {*d, *data} if d.get(k) != data.get(k)})
    return str(target or "data").rsplit(".", 1)[-1] + "".join(f" {k}={fmt_value(data.get(k))}" for k in keys)


# -- formatting ---------------------------------------------------------------------------------------


def fmt_value(value: Any) -> str:
    """A swept value for a table cell or a label: floats with 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


_CELL_FORMATS = {
    "best_epoch": "{:d}",
    "best_val_loss": "{:.4f}",
    "best_val_acc": "{:.4f}",
    "test_acc": "{:.4f}",
    "epochs_run": "{:d}",
    "wall_time_s": "{:.1f}",
    "samples_per_s": "{:.0f}",
    "best_val_r2": "{:.4f}",
    "best_val_mae": "{:.4g}",
    "test_r2": "{:.4f}",
    "test_mae": "{:.4g}",
}
_HEADERS = {
    "best_epoch": "best epoch",
    "best_val_loss": "best val_loss",
    "best_val_acc": "best val_acc",
    "test_acc": "test acc",
    "epochs_run": "epochs",
    "wall_time_s": "wall s",
    "samples_per_s": "samples/s",
    "best_val_r2": "best val_r2",
    "best_val_mae": "best val_mae",
    "test_r2": "test r2",
    "test_mae": "test mae",
}


def is_extra(key: str) -> bool:
    """A summary's figure of a metric in `metrics=[...]` (best_val_f1_macro, test_auroc), not one of
    the columns every run has (test_loss is not shown)."""
    return key.startswith(EXTRA_PREFIXES) and key not in (*METRICS, *REGRESSION_METRICS, "test_loss")


def column_title(key: str) -> str:
    """A column's title: best_val_f1_macro -> best val_f1_macro, test_auroc -> test auroc."""
    return _HEADERS.get(key) or key.replace("best_val_", "best val_", 1).replace("test_", "test ", 1)


def _cell(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else str(value)
    fmt = _CELL_FORMATS.get(key) or ("{:.4g}" if metric_mode(key) == "min" else "{:.4f}")
    try:
        return fmt.format(int(value) if fmt == "{:d}" else value)
    except (TypeError, ValueError):
        return str(value)


def _shorten(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table_rows(summary: SweepSummary, status_width: int = 70) -> tuple[list[str], list[list[str]]]:
    """Header and display cells (as in the console and summary.md); a best row's first cell is '*'
    (each data set's best when the runs differ in data, with a data column)."""
    data = ["data set"] if summary.best_by_data else []
    header = ["best", "job", *data, *summary.swept, "status", *(column_title(k) for k in summary.metrics)]
    rows = []
    for i, run in enumerate(summary.runs):
        rows.append(
            [
                "*" if i in summary.bests else "",
                run.name,
                *([run.data_label or "-"] if data else []),
                *(fmt_value(run.overrides.get(k)) for k in summary.swept),
                _shorten(run.status_text, status_width),
                *(_cell(k, run.values.get(k)) for k in summary.metrics),
            ]
        )
    return header, rows


def _best_text(summary: SweepSummary, index: int, monitor: str) -> str:
    run = summary.runs[index]
    keys = [k for k in summary.swept if run.overrides.get(k) is not None]
    if summary.best_by_data:  # the data set is named already
        keys = [k for k in keys if k != "data" and not k.startswith("data.")]
    swept = ", ".join(f"{k}={fmt_value(run.overrides.get(k))}" for k in keys)
    return run.name + (f" ({swept})" if swept else "") + f", {monitor} {run.values.get('best_' + monitor):.4f}"


def _headline(summary: SweepSummary) -> str:
    counts = summary.counts
    parts = [f"{len(summary.runs)} runs"] + [
        f"{counts[s]} {s}" for s in ("ok", "early-stopped", "failed", "incomplete") if counts[s]
    ]
    better = "lower" if summary.mode == "min" else "higher"
    line = ", ".join(parts) + f"; monitor {summary.monitor} ({better} is better)"
    if summary.best_by_data:
        labels = sorted({run.data_label or "-" for run in summary.runs})
        line += f"; the runs are on {len(labels)} data sets ({', '.join(labels)}), so no best across them"
        line += "; best per data set: "
        line += "; ".join(
            f"{label}: " + _best_text(summary, i, _monitor([r for r in summary.runs if r.data_label == label]))
            for label, i in summary.best_by_data.items()
        )
    elif summary.best is not None:
        line += "; best: " + _best_text(summary, summary.best, summary.monitor)
    else:
        line += "; no finished run to rank"
    if summary.left_out:
        line += f"; {_left_out_text(summary.left_out)}: they train nothing"
    return line


def to_csv(summary: SweepSummary) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    data = ["data_set"] if summary.best_by_data else []
    writer.writerow(["job", *data, *summary.swept, "status", "error", *summary.metrics, "best"])
    for i, run in enumerate(summary.runs):
        writer.writerow(
            [
                run.name,
                *([run.data_label or ""] if data else []),
                *("" if run.overrides.get(k) is None else run.overrides.get(k) for k in summary.swept),
                run.status,
                run.error or "",
                *("" if run.values.get(k) is None else run.values.get(k) for k in summary.metrics),
                1 if i in summary.bests else 0,
            ]
        )
    return buffer.getvalue()


def to_markdown(summary: SweepSummary, plot_name: str | None = "summary.png") -> str:
    header, rows = table_rows(summary)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    numeric = {column_title(k) for k in summary.metrics}
    align = ["---:" if h in numeric else "---" for h in header]
    text = [
        f"# Sweep summary: {summary.out_dir}",
        "",
        _headline(summary) + ".",
        "",
        line(header),
        "| " + " | ".join(align) + " |",
        *(line(r) for r in rows),
        "",
    ]
    failed = [run for run in summary.runs if run.status == "failed"]
    if failed:
        text += (
            ["## Failed runs", ""] + [f"- `{run.name}`: {run.error or 'no error recorded'}" for run in failed] + [""]
        )
    if plot_name:
        text += [f"![{summary.monitor} against each swept parameter, and val_loss curves]({plot_name})", ""]
    return "\n".join(text)


def print_table(summary: SweepSummary, console=None) -> None:
    """The rows as a rich table; the best row bold and marked with *."""
    # rich only when a table is printed: nettrain-train imports this module for its sweep callback
    from rich.console import Console
    from rich.table import Table

    header, rows = table_rows(summary, status_width=50)
    if console is None:  # off a terminal (CI, a log file) rich assumes 80 columns: use what the table needs
        console = Console(highlight=False)
        if not console.is_terminal:
            needed = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, h in enumerate(header)) + 1
            console = Console(highlight=False, width=max(80, needed))
    table = Table(title=f"sweep summary: {summary.out_dir}", caption=_headline(summary))
    numeric = {column_title(k) for k in summary.metrics}
    for name in header:
        table.add_column(name, justify="right" if name in numeric else "left", no_wrap=name != "status")
    for i, (run, cells) in enumerate(zip(summary.runs, rows)):
        style = (
            "bold green"
            if i in summary.bests
            else ("red" if run.status == "failed" else "yellow" if run.status == "incomplete" else None)
        )
        table.add_row(*cells, style=style)
    console.print(table)


# -- the plot ---------------------------------------------------------------------------------------------


def axis_scale(key: str, values: Iterable[Any]) -> str:
    """'log' for lr-like keys (ending in lr, weight_decay or l1) with positive values, or for
    positive values spanning >= 2 decades; 'symlog' for lr-like keys that include 0; else 'linear'."""
    numbers = [v for v in values if v is not None]
    if not numbers or not all(is_finite_number(v) for v in numbers):
        return "linear"
    lr_like = key.lower().lstrip("+").endswith(LR_LIKE_SUFFIXES)
    positive = all(v > 0 for v in numbers)
    if lr_like:
        if positive:
            return "log"
        if all(v >= 0 for v in numbers) and any(v > 0 for v in numbers):
            return "symlog"
        return "linear"
    if positive and max(numbers) / min(numbers) >= 100:
        return "log"
    return "linear"


@dataclass
class Point:
    x: Any
    mean: float
    low: float
    high: float
    n: int


def grouped_points(summary: SweepSummary, key: str) -> dict[tuple, list[Point]]:
    """For the panel of swept `key`: series (one per combination of the other swept keys, seed
    excepted) of points (x = the key's value; mean, min and max of best_<monitor> over the runs
    that differ only by seed). Finished runs only."""
    others = [k for k in summary.swept if k not in (key, "seed")]
    metric = f"best_{summary.monitor}"
    groups: dict[tuple, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in summary.runs:
        value = run.values.get(metric)
        if not run.finished or not is_finite_number(value):
            continue
        series = tuple(run.overrides.get(k) for k in others)
        groups[series][run.overrides.get(key)].append(float(value))
    result = {}
    for series, by_x in groups.items():
        points = [Point(x=x, mean=sum(v) / len(v), low=min(v), high=max(v), n=len(v)) for x, v in by_x.items()]
        numeric = all(is_finite_number(p.x) for p in points)
        points.sort(key=(lambda p: p.x) if numeric else (lambda p: str(p.x)))
        result[series] = points
    return result


def plot_keys(summary: SweepSummary) -> list[str]:
    """The swept keys that get a panel: all of them, except seed when other keys were swept too."""
    keys = list(summary.swept)
    if "seed" in keys and len(keys) > 1:
        keys.remove("seed")
    return keys


def _plot_metric(ax, summary: SweepSummary, key: str) -> None:
    """One panel: best_<monitor> against swept `key`, a series per combination of the other keys."""
    series = grouped_points(summary, key)
    all_x = [p.x for points in series.values() for p in points]
    numeric = bool(all_x) and all(is_finite_number(x) for x in all_x)
    categories = sorted({str(x) for x in all_x}, key=_natural_key) if not numeric else []

    def position(x):
        return x if numeric else categories.index(str(x))

    _plot_series(ax, series, [k for k in summary.swept if k not in (key, "seed")], position)
    best_run = summary.runs[summary.best] if summary.best is not None else None
    if best_run is not None and is_finite_number(best_run.values.get(f"best_{summary.monitor}")):
        x = best_run.overrides.get(key)
        if x is not None and (not numeric or is_finite_number(x)) and (numeric or str(x) in categories):
            ax.plot(
                [position(x)],
                [best_run.values[f"best_{summary.monitor}"]],
                marker="*",
                color="red",
                markersize=14,
                linestyle="none",
                label="best run",
                zorder=5,
            )
    scale = _x_axis(ax, key, all_x, numeric, categories)
    title = f"{summary.monitor} vs {key}"
    if "seed" in summary.swept and key != "seed":
        title += " (mean, min-max over seeds)"
    metric_label = f"best {summary.monitor} ({'lower' if summary.mode == 'min' else 'higher'} is better)"
    ax.set(title=title, xlabel=key + ("" if scale == "linear" else f" ({scale})"), ylabel=metric_label)
    ax.grid(True, alpha=0.3)
    if not all_x:
        ax.text(0.5, 0.5, "no finished run", ha="center", va="center", transform=ax.transAxes)
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="x-small")


def _plot_series(ax, series: dict[tuple, list[Point]], others: list[str], position) -> None:
    """Each series' means (with min-max bars where a point has several runs), labelled by the other
    swept keys' values; too many series, or a random search (Optuna) where every series is a single
    point, are plain points."""
    many = len(series) > _MAX_SERIES or (len(series) > 1 and all(len(p) == 1 for p in series.values()))
    for label_values, points in series.items():
        xs = [position(p.x) for p in points]
        ys = [p.mean for p in points]
        label = ", ".join(f"{k}={fmt_value(v)}" for k, v in zip(others, label_values)) or None
        if many:
            (line,) = ax.plot(xs, ys, "o", color="tab:blue", alpha=0.6, markersize=5)
        else:
            (line,) = ax.plot(xs, ys, marker="o", markersize=4, label=label)
        if any(p.n > 1 for p in points):
            ax.errorbar(
                xs,
                ys,
                yerr=[[p.mean - p.low for p in points], [p.high - p.mean for p in points]],
                fmt="none",
                ecolor=line.get_color(),
                capsize=3,
                alpha=0.8,
            )


def _x_axis(ax, key: str, all_x: list, numeric: bool, categories: list[str]) -> str:
    """The x axis of a panel: log or symlog for a numeric key that spans decades, the category
    names for a key whose values are not numbers; returns the scale."""
    scale = axis_scale(key, all_x) if numeric else "linear"
    if scale == "log":
        ax.set_xscale("log")
        short = ticker().FuncFormatter(lambda v, _: f"{v:.3g}")
        ax.xaxis.set_major_formatter(short)
        ax.xaxis.set_minor_formatter(short if max(all_x) / min(all_x) < 10 else ticker().NullFormatter())
        ax.tick_params(axis="x", which="both", labelrotation=30)
    elif scale == "symlog":
        ax.set_xscale("symlog", linthresh=min(x for x in all_x if x > 0))
    if not numeric:
        ax.set_xticks(
            range(len(categories)),
            categories,
            rotation=30 if len(categories) > 3 else 0,
            ha="right" if len(categories) > 3 else "center",
        )
    return scale


def _plot_curves(ax, summary: SweepSummary) -> None:
    """The last panel: every run's val_loss per epoch; the best run thick, unfinished ones dashed."""
    curves = [(i, run) for i, run in enumerate(summary.runs) if run.curve]
    for i, run in curves:
        epochs, losses = zip(*run.curve)
        swept = ", ".join(f"{k}={fmt_value(run.overrides.get(k))}" for k in summary.swept)
        label = run.name + (f" ({swept})" if swept else "") + ("" if run.finished else f" [{run.status}]")
        ax.plot(
            epochs,
            losses,
            marker="o",
            markersize=2.5,
            label=_shorten(label, 60),
            linestyle="-" if run.finished else "--",
            linewidth=2.6 if i == summary.best else 1.2,
            zorder=4 if i == summary.best else 2,
        )
    ax.xaxis.set_major_locator(ticker().MaxNLocator(integer=True))
    if curves and max(e for _, run in curves for e, _ in run.curve) <= 1:
        ax.set_xlim(0.5, 1.5)
    ax.set(
        title="val_loss per epoch, every run" + (" (thick: best)" if summary.best is not None else ""),
        xlabel="epoch",
        ylabel="val_loss",
    )
    ax.grid(True, alpha=0.3)
    if not curves:
        ax.text(0.5, 0.5, "no metrics.csv", ha="center", va="center", transform=ax.transAxes)
    elif len(curves) <= _MAX_LEGEND:
        ax.legend(fontsize="x-small")


def save_plot(summary: SweepSummary, path: str | Path) -> Path | None:
    """summary.png: best_<monitor> against each swept key, and the val_loss curves of all runs."""
    plt = pyplot()
    keys = plot_keys(summary)
    panels = len(keys) + 1
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, key in zip(flat, keys):
        _plot_metric(ax, summary, key)
    _plot_curves(flat[len(keys)], summary)
    for extra in flat[panels:]:
        extra.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


# -- writing ---------------------------------------------------------------------------------------------


def write(summary: SweepSummary, plot: bool = True) -> list[Path]:
    """summary.csv, summary.md and (plot=True) summary.png in summary.out_dir, each atomically.
    A plot that fails is reported on stderr and left out; the tables are still written."""
    out = summary.out_dir
    written = [write_text(out / "summary.csv", to_csv(summary))]
    png = None
    if plot:
        try:
            png = save_plot(summary, out / "summary.png")
        except Exception as exc:  # a broken plot must not cost the tables
            print(f"warning: summary.png not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    written.append(write_text(out / "summary.md", to_markdown(summary, "summary.png" if png else None)))
    if png:
        written.append(png)
    summary.written = written
    return written


def summarize(
    paths: str | Path | Sequence[str | Path],
    out_dir: str | Path | None = None,
    plot: bool = True,
    show: bool = True,
    console=None,
) -> SweepSummary:
    """Collect the runs under `paths`, write summary.csv/.md/.png, print the table (show=True)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    summary = collect(paths, out_dir)
    write(summary, plot=plot)
    if show:
        if summary.left_out:
            print(f"note: {_left_out_text(summary.left_out)}: they train nothing", file=sys.stderr)
        if summary.best_by_data:
            print(
                f"warning: the runs differ in data ({', '.join(sorted(summary.best_by_data))}): their "
                "losses do not compare, so each data set's best is marked, not one across them",
                file=sys.stderr,
            )
        print_table(summary, console=console)
        names = ", ".join(p.name for p in summary.written)
        if console is not None:
            console.print(f"written: {names} in {summary.out_dir}", markup=False)
        else:
            print(f"written: {names} in {summary.out_dir}")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nettrain-summarize",
        description="Summarize a sweep (its job dirs) or any run dirs: a table on the console and "
        "summary.csv, summary.md and summary.png in the output folder.",
        epilog="Exit status: 0 every run finished, 1 some run failed or is incomplete, 2 no run dir found.",
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="DIR",
        help="a sweep dir (outputs/multirun/<date>/<time>), run dirs, or folders holding runs",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help="where to write the summary files (default: the folder given when it is one "
        "sweep or folder of runs, else the deepest folder holding every run)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip summary.png")
    args = parser.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).is_dir()]
    if missing:
        print(f"Error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        summary = summarize(args.paths, out_dir=args.out, plot=not args.no_plot)
    except (BadInput, FileNotFoundError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0 if summary.all_finished else 1


if __name__ == "__main__":
    sys.exit(main())
