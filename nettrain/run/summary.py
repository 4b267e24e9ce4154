"""summary.json: how a run ended, as one typed record.

:class:`RunStatus` names every way a run ends, with the strings summary.json has always held.
:class:`RunSummary` is the record itself: every run writes it through :meth:`RunSummary.write`,
whether it completed, stopped early, was interrupted, diverged or failed. A field that does not
apply to a status is left out of the file (a failed run has no best epoch), so each status keeps
the keys it has always had; readers (`nettrain-summarize`, sweeps, resume, exit codes) use them.

No torch here: `nettrain-summarize` reads runs with it quickly, and the commands record a failure
before they know whether the run needs torch.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nettrain.config.schema import computed_metrics, plain
from nettrain.run.folder import RunWriter
from nettrain.run.sweep import config_hash


class RunStatus(str, Enum):
    """summary.json's "status": how a run ended. A str, so `status == "completed"` holds and
    JSON writes the plain string."""

    COMPLETED = "completed"  # ran every epoch it was given
    EARLY_STOPPED = "early_stopped"  # early stopping ended it
    INTERRUPTED = "interrupted"  # stopped by SIGINT/SIGTERM (or a StopRequest); resumable from its checkpoint
    DIVERGED = "diverged"  # a non-finite training loss stopped it; the checkpoints keep the last finite state
    FAILED = "failed"  # an error ended it; summary.json has the error's first line
    # what the tools before training return (nettrain-train dry_run=true / find=...); no summary.json
    DRY_RUN = "dry_run"
    LR_FIND = "lr_find"
    BATCH_SIZE = "batch_size"
    PROFILE = "profile"  # profile=true (nettrain/engine/profiling.py): profile/summary.json instead

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def finished(self) -> bool:
        """Nothing left to do: a sweep launched again skips the job, a resume has nothing to add."""
        return self in FINISHED

    @property
    def ended(self) -> bool:
        """The run reached its end: finished, or interrupted and resumable (not diverged or failed)."""
        return self in ENDED


FINISHED = (RunStatus.COMPLETED, RunStatus.EARLY_STOPPED)
TRAINED = (*FINISHED, RunStatus.INTERRUPTED, RunStatus.DIVERGED)  # statuses with epochs to report
ENDED = (*FINISHED, RunStatus.INTERRUPTED)  # statuses whose run reached its end: measured and tested

# which statuses write a field
_ALWAYS, _TRAINED, _ENDED, _FAULT, _STOPPED = "always", "trained", "ended", "fault", "stopped"
_PARTS = {
    _TRAINED: TRAINED,
    _ENDED: ENDED,
    _FAULT: (RunStatus.FAILED, RunStatus.DIVERGED),
    _STOPPED: (RunStatus.INTERRUPTED,),
}


def _key(part: str, default: Any = None, *, spread: bool = False) -> Any:
    """A field written for the statuses of `part`; `spread`: a dict whose keys are written in its place."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"part": part, "spread": spread})
    return field(default=default, metadata={"part": part, "spread": spread})


@dataclass
class RunSummary:
    """What summary.json says about one run, in the file's order. Each field is written for the
    statuses of its part: `always`; `trained` (all but failed); `ended` (completed, early_stopped,
    interrupted: measured and tested); `fault` (failed, diverged); `stopped` (interrupted)."""

    status: RunStatus
    error: str | None = _key(_FAULT)  # the error's first line
    best_epoch: int | None = _key(_TRAINED)
    best_val_loss: float | None = _key(_TRAINED)
    figures: dict[str, float | None] = _key(
        _TRAINED, {}, spread=True
    )  # task_figures: best_val_*, test_* (metrics=[...] too)
    class_names: list[str] | None = _key(_ENDED)
    class_weights: dict[str, Any] | None = _key(_ENDED)  # train_counts, and the loss's and sampler's weights
    epochs_run: int | None = _key(_TRAINED)
    stopped_early: bool | None = _key(_TRAINED)
    monitor: str | None = _key(_ENDED)  # what early stopping and best_epoch follow (val_loss, val_acc, ...)
    wall_time_s: float = _key(_ALWAYS, 0.0)
    device: str | None = _key(_ENDED)
    device_name: str | None = _key(_ENDED)
    param_count: int | None = _key(_ENDED)
    samples_per_s: float | None = _key(_ENDED)  # the mean over the epochs
    peak_rss_mb: float | None = _key(_ENDED)
    memory: dict[str, Any] = _key(_ENDED, {}, spread=True)  # memory_estimate, memory_estimate_mb, memory_peak
    diagnosis: dict[str, Any] | None = _key(_ENDED)  # the verdict, its findings, every epoch's
    cuda_peak_memory_mb: float | None = _key(_ENDED)
    seed: int | None = _key(_TRAINED)
    deterministic: bool | None = _key(_ENDED)
    precision: str | None = _key(_ENDED)
    train_step: str | None = _key(_ENDED)  # eager | cuda_graph
    torch_threads: int | None = _key(_ENDED)
    data_fingerprint: str | None = _key(_ENDED)
    config_hash: str | None = _key(_ALWAYS)  # what sweeps match runs by
    launch: str | None = _key(_ALWAYS)  # the multirun launch this run belongs to (launch_id)
    world_size: int | None = _key(_ENDED)
    backend: str | None = _key(_ENDED)
    signal: int | None = _key(_STOPPED)  # the signal that stopped it (None: a stop request)

    def to_dict(self) -> dict[str, Any]:
        """summary.json's content: the fields this status writes, in order, plain JSON values."""
        status = RunStatus(self.status)
        parts = {_ALWAYS} | {part for part, statuses in _PARTS.items() if status in statuses}
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("part", _ALWAYS) not in parts:
                continue
            if f.metadata.get("spread"):
                out.update(value)
            else:
                out[f.name] = value.value if isinstance(value, RunStatus) else value
        return out

    def write(self, writer: RunWriter) -> dict[str, Any]:
        """Write summary.json through `writer` (rank 0's); return its content (on every rank)."""
        content = self.to_dict()
        writer.json("summary.json", content)
        return content

    @property
    def test(self) -> dict[str, float | None]:
        """The test's figures (test_loss, test_acc or test_r2 and test_mae), by name without `test_`."""
        return {k.removeprefix("test_"): v for k, v in self.figures.items() if k.startswith("test_")}


def task_figures(
    task: str, best_row: dict[str, Any], test: dict[str, float], metrics: Iterable[str] = ()
) -> dict[str, Any]:
    """The best epoch's figures beside its val_loss, and the test's: accuracy for classification;
    R² and MAE for regression, which has no accuracy (no `test_acc None` in its summary); then
    best_val_NAME and test_NAME of each NAME of `metrics` the task does not report already."""
    if task == "regression":
        figures = {
            "best_val_r2": best_row.get("val_r2"),
            "best_val_mae": best_row.get("val_mae"),
            "test_loss": test.get("loss"),
            "test_r2": test.get("r2"),
            "test_mae": test.get("mae"),
        }
    else:
        figures = {"best_val_acc": best_row.get("val_acc"), "test_loss": test.get("loss"), "test_acc": test.get("acc")}
    extra = computed_metrics(metrics, task)
    return (
        figures | {f"best_val_{m}": best_row.get(f"val_{m}") for m in extra} | {f"test_{m}": test.get(m) for m in extra}
    )


def read_summary(path: Path) -> dict[str, Any]:
    """A run's summary.json as a dict; {} when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_failure(writer: RunWriter, cfg: DictConfig, error: str, wall_time_s: float = 0.0) -> None:
    """summary.json for a run that failed: its status, the error's first line, its config hash.
    A finished run's summary (a resume that failed) is kept; a fault that stops the write is skipped."""
    if read_summary(writer.path("summary.json")).get("status") in FINISHED:
        return
    failed = RunSummary(RunStatus.FAILED, error, wall_time_s=round(wall_time_s, 3))
    failed.config_hash, failed.launch = config_hash(plain(cfg)), launch_id()
    with contextlib.suppress(OSError):  # the fault itself (a full disk); the error message says so
        failed.write(writer)


def launch_id() -> str | None:
    """Which multirun launch this process belongs to (set by the sweep callback), if any."""
    return os.environ.get("NETTRAIN_LAUNCH")


def interrupted_note(steps: int, saved: bool) -> str:
    """What an interrupted run says after its status: when it stopped, whether it can be resumed."""
    if not saved:
        return f"after {steps} steps; checkpoint.enabled=false, so it cannot be resumed"
    return f"after {steps} steps this session; a checkpoint is saved"


def error_line(exc: BaseException) -> str:
    """The first line of an error, as summary.json records it (a file error as it reads)."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return first_line if isinstance(exc, OSError) else f"{type(exc).__name__}: {first_line}"
