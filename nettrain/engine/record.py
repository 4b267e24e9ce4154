"""The end of a run that trained: the best weights tested, summary.json and the plots written,
the summary printed (`write_summary`). The record's parts that need no torch (the task's figures,
the note of an interrupted run, a failed run's summary) are nettrain/run/summary.py.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from omegaconf import DictConfig

from nettrain.config.schema import plain
from nettrain.engine.loop import evaluate
from nettrain.insight.diagnosis import worse_from_the_start
from nettrain.insight.memory import peak_rss_mb
from nettrain.insight.report import save_plots
from nettrain.models import param_count
from nettrain.run import launch
from nettrain.run.folder import RunWriter
from nettrain.run.metrics import COMPLETED, EARLY_STOPPED, INTERRUPTED
from nettrain.run.summary import interrupted_note, launch_id, task_figures
from nettrain.run.sweep import config_hash


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
        "world_size": launch.context().world_size,
        "backend": launch.context().backend,
    }
    if result.interrupted:
        summary["signal"] = stop.signum
    if cfg.plots:
        writer.run(save_plots, history, writer.path("plots"), loss_name=type(run.state.loss_fn).__name__)
    writer.json("summary.json", summary)
    run.state.extras["loggers"].finish(summary, writer.folder, status)
    reporter.summary(summary)
    if finding := worse_from_the_start(history):  # the run's own diagnosis, last: what to change
        reporter.warn(finding)
    if result.interrupted:
        reporter.note(interrupted_note(stop.steps, cfg.checkpoint.enabled, writer.folder))
    return summary
