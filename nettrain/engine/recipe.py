"""One training run, phase by phase: resume -> build -> fit -> test -> record.

`train_run` is the recipe: the whole run on one screen, each phase one helper below it, in the
order they run.

- resume: the checkpoint of the run to continue (`resume=RUN_DIR`, or an interrupted sweep job
  launched again), read and checked against the config before anything is built
- build: the data, the model, the optimizer and the rest (nettrain/engine/build.py), shown on the
  console; the checkpoint's state restored, or an earlier run's results set aside
- fit: the loop (nettrain/engine/loop.py), writing checkpoints, metrics.csv and the console rows
- test: the best weights on the test split, with the confusion matrix of a classification
- record: summary.json (one RunSummary, nettrain/run/summary.py), the per-class report
  (eval/test-report.json), the plots, the loggers' end and the console's closing table

Every rank of a distributed run follows it; only rank 0 writes (RunWriter) and prints (Reporter).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from nettrain.config.schema import duration_seconds, plain
from nettrain.data.preprocessing import describe
from nettrain.engine import distributed
from nettrain.engine.balance import loss_name
from nettrain.engine.build import Run, build_diagnosis, build_loggers, build_run
from nettrain.engine.callbacks import build_callbacks
from nettrain.engine.checkpointer import Checkpointer, restore
from nettrain.engine.cuda_graph import StepChoice
from nettrain.engine.distributed import resolve_device
from nettrain.engine.divergence import Diverged
from nettrain.engine.interrupt import StopRequest, stop_on_signals
from nettrain.engine.loop import FitResult, LoopSettings, Position, RunOutputs, evaluate, fit, metrics_rows
from nettrain.engine.metrics import Measures
from nettrain.engine.profiling import profile_run
from nettrain.engine.steps import StepSettings
from nettrain.engine.tune import run_tool
from nettrain.errors import ConfigError
from nettrain.insight.class_report import class_report, plot_confusion_matrix, report_lines, report_unit
from nettrain.insight.diagnosis import worse_from_the_start
from nettrain.insight.memory import MemoryCheck, PeakMemory, peak_rss_mb
from nettrain.insight.report import Reporter, save_plots
from nettrain.models import param_count
from nettrain.run import launch
from nettrain.run.folder import RunWriter, set_aside_old_results
from nettrain.run.metrics import MetricsWriter
from nettrain.run.reproducibility import process_settings, seed_everything, write_provenance
from nettrain.run.resume import load_resume_point
from nettrain.run.summary import (
    RunStatus,
    RunSummary,
    error_line,
    interrupted_note,
    launch_id,
    task_figures,
    write_failure,
)
from nettrain.run.sweep import config_hash

REPORT = "eval/test-report.json"  # the per-class report of a classification run's test


def train_run(
    cfg: DictConfig, output_dir: Path, resume_from: Path | None = None, stop: StopRequest | None = None, device=None
) -> dict[str, Any]:
    """Train the configured model in `output_dir` and return its summary (summary.json's content).

    `resume_from`: the run folder or checkpoint to continue (the command decides it, nettrain/
    commands/train.py); `stop` lets a caller interrupt the run, as SIGINT/SIGTERM do; `device` is
    this rank's device in a process group (None: the config's)."""
    started = time.perf_counter()
    writer = RunWriter(output_dir)  # writes on rank 0 only
    stop = distributed.shared_stop(stop, cfg.distributed.stop_check_every) or stop or StopRequest()
    with writer.lock(), failure_recorded(cfg, writer, started):  # one writer per run folder
        with stop_on_signals(stop), process_settings(cfg.threads, cfg.deterministic):  # the run's own settings
            if cfg.dry_run or cfg.find:  # a dry run or a finder: build, measure, suggest; train nothing
                return run_tool(cfg, output_dir)
            if cfg.profile:  # a few steps timed phase by phase (nettrain/engine/profiling.py); train nothing
                return profile_run(cfg, output_dir)
            device = device or resolve_device(cfg.device)
            seed_everything(cfg.seed)
            reporter = Reporter(**cfg.console, rank=launch.context().rank)
            saved = read_checkpoint(resume_from, writer, cfg, reporter)  # 1. resume: checked, restored once built
            run, memory = build(cfg, device, writer, reporter)  # 2. build, and say what was built
            start = start_from(saved, run, writer, reporter)
            provenance = write_provenance(run.device, run.data.fingerprint(), writer, saved is not None, reporter.warn)
            distributed.introduce(reporter, run.train_batches, cfg.batch_size)
            try:
                result = train_epochs(cfg, run, writer, reporter, start, stop, provenance)  # 3. fit
            except Diverged as exc:  # the checkpoints keep the last finite state
                reporter.warn(str(exc))
                return record(cfg, run, diverged_summary(cfg, run, exc, started), writer, reporter)
            test, report = test_best(cfg, run, result)  # 4. test
            summary = ended_summary(cfg, run, result, test, provenance, memory, started, stop)
            note = interrupted_note(stop.steps, cfg.checkpoint.enabled) if result.interrupted else None
            note = f"at {result.ended_by}" if result.ended_by else note  # max_steps or max_time ended it
            return record(cfg, run, summary, writer, reporter, note, report)  # 5. record


# -- 1. resume --------------------------------------------------------------------------------------


def read_checkpoint(resume_from: Path | None, writer: RunWriter, cfg: DictConfig, reporter: Reporter):
    """The newest valid checkpoint to resume, after checking the config against it; None for a fresh run."""
    if resume_from is None:
        return None
    return load_resume_point(resume_from, writer.folder, plain(cfg), reporter)


@contextlib.contextmanager
def failure_recorded(cfg: DictConfig, writer: RunWriter, started: float) -> Iterator[None]:
    """Record a run that fails in summary.json (for sweeps and summaries), then let the error go on."""
    try:
        yield
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:
        write_failure(writer, cfg, error_line(exc), time.perf_counter() - started)
        raise


# -- 2. build ---------------------------------------------------------------------------------------


def build(cfg: DictConfig, device: torch.device, writer: RunWriter, reporter: Reporter) -> tuple[Run, MemoryCheck]:
    """Everything the loop needs, from the config; shown on the console. Also the memory check:
    the estimate against the peak measured from here on."""
    run = build_run(cfg, device)
    memory = introduce(cfg, run, writer.folder, reporter)  # the estimate counts on copies: before any hooks
    build_diagnosis(cfg, run.state, hooks=not run.graph.capture)  # into run.state.extras: checkpointed
    build_loggers(cfg, run.state, rank=launch.context().rank)
    return run, memory


def introduce(cfg: DictConfig, run: Run, output_dir: Path, reporter: Reporter) -> MemoryCheck:
    """Print the run folder, the config, the model, the memory estimate and the data; start measuring the peak."""
    state, data = run.state, run.data
    reporter.start(lambda: OmegaConf.to_yaml(cfg), state.model, param_count(state.model), str(run.device), output_dir)
    reporter.memory(run.memory)
    for line in data.notes:  # the image cache built or used, files skipped
        (reporter.warn if line.startswith("skipped") else reporter.note)(line)
    reporter.note(
        f"data: {data.name}, train {len(data.train)} / val {len(data.val)} / "
        f"test {len(data.test)}, input {list(data.input_shape)}; {describe(data.meta)}"
    )
    if (weights := state.extras.get("class_weights")) and (line := weights.describe(data.meta.get("class_names"))):
        reporter.note(line)  # loss.class_weights, data.sampler=balanced
    return MemoryCheck(run.memory, PeakMemory(run.device).start())


def start_from(saved: dict | None, run: Run, writer: RunWriter, reporter: Reporter) -> Position | None:
    """Where training starts: the saved state loaded into the run (a resume), or a fresh start in a
    folder cleared of an earlier run's results (None)."""
    if saved is not None:
        return restore(saved, run.state, run.device)
    writer.run(set_aside_old_results, writer.folder, reporter)
    return None


# -- 3. fit -----------------------------------------------------------------------------------------


def train_epochs(
    cfg: DictConfig, run: Run, writer: RunWriter, reporter: Reporter, start, stop, provenance: dict
) -> FitResult:
    """The loop with its settings and outputs taken from the config (files through `writer`: rank 0's)."""
    config = plain(cfg)
    tags = {"config_hash": config_hash(config), "git_commit": (provenance.get("git") or {}).get("commit")}
    run.state.extras["loggers"].start(writer.folder, config, tags)
    run.step = StepChoice(cfg.trainer.cuda_graph, run.graph, run.train_batches, reporter.note)
    hooks = build_callbacks(
        cfg.callbacks, cfg.callbacks_every_n_steps, run.state, writer.folder, len(run.train_batches), stop
    )
    settings = LoopSettings(
        epochs=cfg.epochs,
        l1=cfg.regularization.l1,
        grad_clip=cfg.regularization.grad_clip,
        restore_best=cfg.early_stopping.restore_best,
        make_step=run.step,
        augment=run.augment,
        task=run.data.task,
        target_std=run.data.meta.get("target_std", 1.0),
        unfreeze=run.unfreeze,
        measures=measures(cfg, run),
        steps=step_settings(cfg),
    )
    out = RunOutputs(
        checkpointer=Checkpointer(writer.path("checkpoints"), config, cfg.checkpoint.enabled, writer),
        metrics=MetricsWriter(writer.path("metrics.csv"), writer),
        reporter=reporter,
        callbacks=hooks,
    )
    if hooks:  # callbacks=[...]: on_fit_start and on_fit_end around the loop; on_checkpoint as each is written
        out.checkpointer.after_save = hooks.checkpoint
        hooks.fit_start(start.epoch if start else 0, start.step_in_epoch if start else 0)
    result = fit(run.state, run.train_batches, run.val_batches, settings, out, start=start, stop=stop)
    if hooks is not None:
        hooks.fit_end(result.epochs_run)
        hooks.raise_failure()  # a hook raised: the loop has stopped and saved; the run ends here
    return result


def step_settings(cfg: DictConfig) -> StepSettings:
    """trainer.max_steps, max_time and val_every_n_steps, checkpoint.every_n_steps (nettrain/engine/steps.py)."""
    max_time = cfg.trainer.max_time
    return StepSettings(
        max_steps=cfg.trainer.max_steps,
        max_time=None if max_time is None else duration_seconds(max_time),
        val_every=cfg.trainer.val_every_n_steps,
        checkpoint_every=cfg.checkpoint.every_n_steps,
        accumulate=cfg.trainer.accumulate_steps,
    )


# -- 4. test ----------------------------------------------------------------------------------------


def measures(cfg: DictConfig, run: Run, confusion: bool = False) -> Measures:
    """The metrics=[...] beyond the task's own, on the run's device (with the confusion matrix)."""
    data = run.data
    target_std = data.meta.get("target_std", 1.0)
    return Measures(cfg.metrics, data.task, data.num_classes, run.device, target_std, confusion=confusion)


def test_best(cfg: DictConfig, run: Run, result: FitResult) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The weights fit ended with (the best epoch's, or the averaged ones) on the test split, on
    every rank, and a classification's per-class report; nothing for a run interrupted before its end."""
    if result.interrupted:
        return {}, None
    target_std = run.data.meta.get("target_std", 1.0)
    test_measures = measures(cfg, run, confusion=True)
    batches = run.batches(run.data.test)
    test = evaluate(run.state.model, run.state.loss_fn, batches, run.data.task, target_std, test_measures)
    matrix = test_measures.confusion_matrix
    return test, (class_report(matrix, run.data.meta.get("class_names")) if matrix is not None else None)


# -- 5. record --------------------------------------------------------------------------------------


def ended_summary(
    cfg: DictConfig,
    run: Run,
    result: FitResult,
    test: dict,
    provenance: dict,
    memory: MemoryCheck,
    started: float,
    stop: StopRequest,
) -> RunSummary:
    """The summary of a run that reached its end (completed, stopped early, or interrupted: then
    the signal that stopped it)."""
    history, device, ctx = run.state.history, run.device, launch.context()
    status = (
        RunStatus.INTERRUPTED
        if result.interrupted
        else RunStatus.EARLY_STOPPED
        if result.stopped_early
        else RunStatus.COMPLETED
    )
    best = result.best_epoch, result.best_step  # the step tells a validation inside an epoch from its end's
    best_row: dict[str, Any] = next(
        (r for r in metrics_rows(run.state) if (r["epoch"], r.get("step", result.best_step)) == best), {}
    )
    rss = peak_rss_mb()
    return RunSummary(
        status,
        best_epoch=result.best_epoch,
        best_val_loss=best_row.get("val_loss"),
        figures=task_figures(run.data.task, best_row, test, cfg.metrics),  # acc, or R² and MAE; metrics=[...]
        class_names=run.data.meta.get("class_names"),
        class_weights=class_weights.summary() if (class_weights := run.state.extras.get("class_weights")) else None,
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        monitor=cfg.early_stopping.monitor,
        wall_time_s=round(time.perf_counter() - started, 3),
        device=str(device),
        device_name=provenance["device_name"],
        param_count=param_count(run.state.model),
        samples_per_s=sum(r["samples_per_s"] for r in history) / len(history) if history else None,
        peak_rss_mb=None if rss is None else round(rss, 1),
        memory=memory.summary(),  # memory_estimate (its parts), memory_estimate_mb, memory_peak
        diagnosis=run.state.extras["diagnosis"].summary(history),
        cuda_peak_memory_mb=(
            round(torch.cuda.max_memory_allocated(device) / 2**20, 2) if device.type == "cuda" else None
        ),
        seed=cfg.seed,
        deterministic=cfg.deterministic,
        precision=cfg.trainer.precision,
        train_step=run.step.used if run.step is not None else "eager",  # eager | cuda_graph
        torch_threads=torch.get_num_threads(),
        data_fingerprint=provenance["data_fingerprint"],
        config_hash=config_hash(plain(cfg)),
        launch=launch_id(),
        world_size=ctx.world_size,
        backend=ctx.backend,
        signal=stop.signum,  # written for an interrupted run only
    )


def diverged_summary(cfg: DictConfig, run: Run, exc: Diverged, started: float) -> RunSummary:
    """The summary of a run stopped by a non-finite loss: the error, the epochs completed and the
    best finite one; no test (its figures None)."""
    history = run.state.history
    best = min(
        (r for r in history if math.isfinite(r.get("val_loss", math.nan))), key=lambda r: r["val_loss"], default={}
    )
    return RunSummary(
        RunStatus.DIVERGED,
        error=str(exc),
        best_epoch=best.get("epoch"),
        best_val_loss=best.get("val_loss"),
        figures=task_figures(run.data.task, best, {}, cfg.metrics),
        epochs_run=len(history),
        stopped_early=False,
        wall_time_s=round(time.perf_counter() - started, 3),
        seed=cfg.seed,
        config_hash=config_hash(plain(cfg)),
        launch=launch_id(),
    )


def record(
    cfg: DictConfig,
    run: Run,
    summary: RunSummary,
    writer: RunWriter,
    reporter: Reporter,
    note: str | None = None,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the plots, the per-class `report` of the test (when there is one) and summary.json
    (rank 0), end the loggers, and print the report's table and the closing table (`note`: what
    the status says beyond its name); return the summary (every rank)."""
    history = run.state.history
    if cfg.plots and history:
        writer.run(save_plots, history, writer.path("plots"), loss_name=loss_name(run.state.loss_fn))
    if report is not None:
        writer.json(REPORT, {"split": "test", **report})
        if cfg.plots:
            writer.run(plot_confusion_matrix, report, writer.path("plots") / "confusion_matrix.png", "test split")
        reporter.class_report(report_lines(report), f"per {report_unit(report)}, test split ({REPORT})")
    content = summary.write(writer)
    run.state.extras["loggers"].finish(content, writer.folder, summary.status)
    if summary.status != RunStatus.DIVERGED and (finding := worse_from_the_start(history)):
        reporter.warn(finding)  # the run's own diagnosis: what to change
    reporter.end(summary, cfg.epochs, writer.folder, note)
    return content
