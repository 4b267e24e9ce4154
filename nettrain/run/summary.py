"""summary.json: what a run ended with.

`write_summary` tests the best weights and records the result: status, best epoch and its
validation figures, the test result, speed, memory, the settings that decide exactness and the
config hash that sweeps match runs by. `write_failure` records a run that failed, so sweeps and
`nettrain-summarize` can say which job failed and why.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from nettrain.config.schema import plain
from nettrain.engine import distributed
from nettrain.run.folder import RunWriter
from nettrain.run.metrics import COMPLETED, EARLY_STOPPED, FAILED, INTERRUPTED


def write_failure(writer: RunWriter, cfg: DictConfig, error: str, wall_time_s: float = 0.0) -> None:
    """summary.json for a run that failed: its status, the error's first line, its config hash.
    A finished run's summary (a resume that failed) is kept; a fault that stops the write is skipped."""
    import contextlib

    from nettrain.run.metrics import FINISHED
    from nettrain.run.resume import read_summary
    from nettrain.run.sweep import config_hash

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


def write_summary(
    cfg: DictConfig,
    run,
    result,
    writer: RunWriter,
    reporter,
    stop,
    record: dict,
    started: float,
    memory,
) -> dict[str, Any]:
    """Test the best weights (every rank), then write summary.json and the plots (rank 0, through
    `writer`), and print the summary."""
    import torch

    from nettrain.engine.loop import evaluate
    from nettrain.insight.memory import peak_rss_mb
    from nettrain.models import param_count
    from nettrain.run.sweep import config_hash

    history, device = run.state.history, run.device
    status = INTERRUPTED if result.interrupted else EARLY_STOPPED if result.stopped_early else COMPLETED
    best_row: dict[str, Any] = next((r for r in history if r["epoch"] == result.best_epoch), {})
    test: dict[str, float] = {}
    if not result.interrupted:
        test_batches, target_std = run.batches(run.data.test), run.data.meta.get("target_std", 1.0)
        test = evaluate(run.state.model, run.state.loss_fn, test_batches, run.data.task, target_std)
    summary: dict[str, Any] = {
        "status": status,
        "best_epoch": result.best_epoch,
        "best_val_loss": best_row.get("val_loss"),
        **task_figures(run.data.task, best_row, test),  # test_loss; accuracy, or regression's R² and MAE
        "class_names": run.data.meta.get("class_names"),
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "monitor": cfg.early_stopping.monitor,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "device": str(device),
        "device_name": record["device_name"],
        "param_count": param_count(run.state.model),
        "samples_per_s": sum(r["samples_per_s"] for r in history) / len(history) if history else None,
        "peak_rss_mb": None if (rss := peak_rss_mb()) is None else round(rss, 1),
        **memory.summary(),  # memory_estimate (its parts), memory_estimate_mb, memory_peak
        "diagnosis": run.state.extras["diagnosis"].summary(history),
        "cuda_peak_memory_mb": (
            round(torch.cuda.max_memory_allocated(device) / 2**20, 2) if device.type == "cuda" else None
        ),
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "precision": cfg.trainer.precision,
        "train_step": run.step.used if run.step is not None else "eager",  # eager | cuda_graph
        "torch_threads": torch.get_num_threads(),
        "data_fingerprint": record["data_fingerprint"],
        "config_hash": config_hash(plain(cfg)),
        "launch": launch_id(),
        "world_size": distributed.context().world_size,
        "backend": distributed.context().backend,
    }
    if result.interrupted:
        summary["signal"] = stop.signum
    if cfg.plots:
        writer.plots(history, loss_name=type(run.state.loss_fn).__name__)
    writer.json("summary.json", summary)
    run.state.extras["loggers"].finish(summary, writer.folder, status)
    reporter.summary(summary)
    from nettrain.insight.diagnosis import worse_from_the_start

    if finding := worse_from_the_start(history):  # the run's own diagnosis, last: what to change
        reporter.warn(finding)
    if result.interrupted:
        reporter.note(interrupted_note(stop.steps, cfg.checkpoint.enabled, writer.folder))
    return summary


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
