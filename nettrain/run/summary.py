"""summary.json: what a run ended with.

nettrain/engine/record.py tests the best weights and records the result (`write_summary`) with
the helpers here. `write_failure` records a run that failed, so sweeps and `nettrain-summarize`
can say which job failed and why. No torch here: the commands record a failure before they know
whether the run needs torch.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nettrain.config.schema import plain
from nettrain.run.folder import RunWriter
from nettrain.run.metrics import FAILED, FINISHED
from nettrain.run.resume import read_summary
from nettrain.run.sweep import config_hash


def write_failure(writer: RunWriter, cfg: DictConfig, error: str, wall_time_s: float = 0.0) -> None:
    """summary.json for a run that failed: its status, the error's first line, its config hash.
    A finished run's summary (a resume that failed) is kept; a fault that stops the write is skipped."""
    if read_summary(writer.path("summary.json")).get("status") in FINISHED:
        return
    with contextlib.suppress(OSError):  # the fault itself (a full disk); the error message says so
        writer.json(
            "summary.json",
            {
                "status": FAILED,
                "error": error,
                "wall_time_s": round(wall_time_s, 3),
                "config_hash": config_hash(plain(cfg)),
                "launch": launch_id(),
            },
        )


def launch_id() -> str | None:
    """Which multirun launch this process belongs to (set by the sweep callback), if any."""
    return os.environ.get("NETTRAIN_LAUNCH")


def task_figures(task: str, best_row: dict[str, Any], test: dict[str, float]) -> dict[str, Any]:
    """The best epoch's figures beside its val_loss, and the test's: accuracy for classification;
    R² and MAE for regression, which has no accuracy (no `test_acc None` in its summary)."""
    if task == "regression":
        return {
            "best_val_r2": best_row.get("val_r2"),
            "best_val_mae": best_row.get("val_mae"),
            "test_loss": test.get("loss"),
            "test_r2": test.get("r2"),
            "test_mae": test.get("mae"),
        }
    return {"best_val_acc": best_row.get("val_acc"), "test_loss": test.get("loss"), "test_acc": test.get("acc")}


def interrupted_note(steps: int, saved: bool, output_dir: Path) -> str:
    """What an interrupted run says last: how to resume it, or why it cannot be."""
    if not saved:
        return f"interrupted after {steps} steps; checkpoint.enabled=false, so it cannot be resumed"
    return (
        f"interrupted after {steps} steps this session; a checkpoint is saved. "
        f"Resume with:\n  nettrain-train resume={output_dir.resolve()}"
    )
