"""`nettrain-train`: compose the config with Hydra, build the pieces, run the loop.

`main` is the thin Hydra entry point; `train(cfg, output_dir)` does the work and returns the
run's summary, so tests and scripts can call it directly with a config from Hydra's compose API.
`_train` is the recipe, one named step each: resume -> build -> provenance -> fit -> summary.
torch is imported inside the functions (nettrain/engine/), so `--help` and config errors answer at once.

Re-run a finished run (Hydra's way):   nettrain-train --config-dir RUN_DIR/.hydra --config-name config
Resume an interrupted one:             nettrain-train resume=RUN_DIR
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from nettrain.commands.errors import before_hydra, composition_errors_exit_2, exit_for, failed_run
from nettrain.commands.startup import single_composition
from nettrain.commands.sweep_callback import sweep_exit_code
from nettrain.config.schema import plain, validate
from nettrain.config.store import register_schema
from nettrain.engine.interrupt import stop_on_signals
from nettrain.errors import ConfigError
from nettrain.run import launch
from nettrain.run.folder import RunWriter, hydra_output_subdir, in_multirun, no_follow_log_files, set_aside_old_results
from nettrain.run.metrics import FINISHED, INTERRUPTED, MetricsWriter
from nettrain.run.resume import (
    finished_already,
    load_resume_point,
    make_rerunnable,
    resume_argv,
    run_dir_of,
    with_renames,
)
from nettrain.run.summary import launch_id, write_failure
from nettrain.run.sweep import claim, config_hash


def train(cfg: DictConfig, output_dir: str | Path | None = None, stop=None) -> dict[str, Any]:
    """Train the configured model; write metrics, checkpoints, plots and summary; return the summary.

    With `cfg.resume` set, continue that run in its own folder from its newest valid checkpoint.
    `stop` (a loop.StopRequest) lets a caller interrupt the run; SIGINT/SIGTERM do the same.
    Under torchrun/SLURM every rank calls it: the ranks train together, and only rank 0 writes.
    """
    validate(cfg)
    if launch.detect() is None:  # one process: torch is imported once there is work to do
        return _run(cfg, output_dir, stop, None)
    from nettrain.engine import distributed

    with distributed.group(cfg) as device:  # this rank's device in the process group
        return _run(cfg, output_dir, stop, device)


def _run(cfg: DictConfig, output_dir: str | Path | None, stop, device) -> dict[str, Any]:
    started = time.perf_counter()
    say = print if launch.context().is_main else (lambda *args: None)
    if output_dir is None:
        output_dir = HydraConfig.get().runtime.output_dir
    output_dir = Path(output_dir)
    if cfg.resume and run_dir_of(cfg.resume) != output_dir.resolve():
        raise ConfigError(
            [
                f"resume={cfg.resume!r}: resume continues a run in its own folder; use "
                f"`nettrain-train resume=RUN_DIR` (not combined with --multirun or hydra.run.dir)"
            ]
        )
    writer, summary_path = RunWriter(output_dir), output_dir / "summary.json"  # writes on rank 0 only
    resume_from = Path(cfg.resume).expanduser() if cfg.resume else None
    if not cfg.resume and in_multirun():  # a re-launched sweep: skip, resume or re-run this config
        key = config_hash(plain(cfg))
        previous = _rank_zeros(writer.run(claim, output_dir, key, launch_id())) or {}
        status = previous.get("status")
        if status in FINISHED:
            say(f"{output_dir}: this config already finished ({status}); skipped")
            return {**previous, "already_finished": True}
        if status == INTERRUPTED and any((output_dir / "checkpoints").glob("*.pt")):
            resume_from = output_dir
    if cfg.resume and (done := finished_already(summary_path, cfg.epochs, resume_from, plain(cfg))):
        return done

    from nettrain.engine import distributed
    from nettrain.engine.loop import StopRequest
    from nettrain.run.reproducibility import process_settings

    stop = distributed.shared_stop(stop, cfg.distributed.stop_check_every) or stop or StopRequest()
    with writer.lock():  # one writer per run folder; what a save killed halfway left is removed
        try:  # from here on, SIGINT/SIGTERM stop the run cleanly; torch's process-wide settings are the run's
            with stop_on_signals(stop), process_settings(cfg.threads, cfg.deterministic):
                if cfg.dry_run or cfg.find:  # a dry run or a finder: build, measure, suggest; train nothing
                    from nettrain.engine.tune import run_tool

                    return run_tool(cfg, output_dir)
                return _train(cfg, writer, started, stop, resume_from, device)
        except (ConfigError, KeyboardInterrupt):
            raise
        except Exception as exc:  # record the failure for sweeps and summaries, then let it propagate
            first_line = (str(exc).strip().splitlines() or [""])[0]
            error = first_line if isinstance(exc, OSError) else f"{type(exc).__name__}: {first_line}"
            write_failure(writer, cfg, error, time.perf_counter() - started)
            raise


def _rank_zeros(value: Any) -> Any:
    """Rank 0's `value` on every rank of a process group; `value` itself in one process (no torch)."""
    if not launch.context().distributed:
        return value
    from nettrain.engine import distributed

    return distributed.broadcast_object(value)


def _train(
    cfg: DictConfig, writer: RunWriter, started: float, stop, resume_from: Path | None, device
) -> dict[str, Any]:
    """The recipe: resume -> build -> provenance -> fit -> summary. Only rank 0 writes (`writer`) and prints."""
    from nettrain.engine import distributed
    from nettrain.engine.build import build_diagnosis, build_loggers, build_run, resolve_device
    from nettrain.engine.checkpointer import restore
    from nettrain.engine.record import write_summary
    from nettrain.insight.report import Reporter
    from nettrain.run.reproducibility import seed_everything, write_provenance

    ctx, output_dir = launch.context(), writer.folder
    device = device or resolve_device(cfg.device)
    seed_everything(cfg.seed)
    reporter = Reporter(**cfg.console, rank=ctx.rank)
    plain_config = plain(cfg)
    saved = None
    if resume_from is not None:
        saved = load_resume_point(resume_from, output_dir, plain_config, reporter)
    run = build_run(cfg, device)
    memory = _introduce(cfg, run, output_dir, reporter)  # the estimate counts on copies: before any hooks
    build_diagnosis(cfg, run.state, hooks=not run.graph.capture)  # into run.state.extras: checkpointed
    build_loggers(cfg, run.state, rank=ctx.rank)
    start = None
    if saved is not None:
        start = restore(saved, run.state, device)
    else:
        writer.run(set_aside_old_results, output_dir, reporter)
    record = write_provenance(run.device, run.data.fingerprint(), writer, resume_from is not None, reporter.warn)
    distributed.introduce(reporter, run.train_batches, cfg.batch_size)
    from nettrain.engine.divergence import Diverged, diverged_summary

    try:
        result = _fit(cfg, run, writer, plain_config, reporter, start, stop, record)
    except Diverged as exc:  # the checkpoints keep the last finite state
        reporter.warn(str(exc))
        extra = {"seed": cfg.seed, "config_hash": config_hash(plain_config), "launch": launch_id()}
        elapsed = time.perf_counter() - started
        summary = diverged_summary(exc, run.state.history, writer, elapsed, extra, cfg.plots, run.data.task)
        run.state.extras["loggers"].finish(summary, output_dir, summary["status"])
        return summary
    return write_summary(cfg, run, result, writer, reporter, stop, record, started, memory)


def _introduce(cfg: DictConfig, run, output_dir: Path, reporter):
    """Print the config, the model, the memory estimate and the data; start measuring the peak."""
    from nettrain.data.preprocessing import describe
    from nettrain.insight.memory import MemoryCheck, PeakMemory
    from nettrain.models import param_count

    state, data, est = run.state, run.data, run.memory
    reporter.start(OmegaConf.to_yaml(cfg), state.model, param_count(state.model), str(run.device), output_dir)
    reporter.note(f"training memory estimate at batch {est.batch_size}:\n" + "\n".join(est.lines()))
    for line in data.notes:  # the image cache built or used, files skipped
        (reporter.warn if line.startswith("skipped") else reporter.note)(line)
    reporter.note(
        f"data: {data.name}, train {len(data.train)} / val {len(data.val)} / "
        f"test {len(data.test)}, input {list(data.input_shape)}; {describe(data.meta)}"
    )
    return MemoryCheck(est, PeakMemory(run.device).start())


def _fit(cfg: DictConfig, run, writer: RunWriter, plain_config: dict, reporter, start, stop, record: dict):
    """Train with the loop's settings and outputs taken from the config (files through `writer`: rank 0's)."""
    from nettrain.engine.checkpointer import Checkpointer
    from nettrain.engine.loop import LoopSettings, RunOutputs, fit

    tags = {"config_hash": config_hash(plain_config), "git_commit": (record.get("git") or {}).get("commit")}
    run.state.extras["loggers"].start(writer.folder, plain_config, tags)
    settings = LoopSettings(
        epochs=cfg.epochs,
        l1=cfg.regularization.l1,
        grad_clip=cfg.regularization.grad_clip,
        restore_best=cfg.early_stopping.restore_best,
        augment=run.augment,
        task=run.data.task,
        target_std=run.data.meta.get("target_std", 1.0),
    )
    out = RunOutputs(
        checkpointer=Checkpointer(writer.path("checkpoints"), plain_config, cfg.checkpoint.enabled, writer),
        metrics=MetricsWriter(writer.path("metrics.csv"), writer),
        reporter=reporter,
    )
    from nettrain.engine.cuda_graph import StepChoice

    run.step = StepChoice(cfg.trainer.cuda_graph, run.graph, run.train_batches, reporter.note)
    settings.make_step = run.step
    return fit(run.state, run.train_batches, run.val_batches, settings, out, start=start, stop=stop)


@hydra.main(version_base="1.3", config_path="pkg://nettrain.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    launch.publish_run_dir(HydraConfig.get().runtime.output_dir)  # the other ranks may start
    subdir = hydra_output_subdir()
    if subdir is not None and (subdir / "config.yaml").is_file():
        make_rerunnable(subdir / "config.yaml")
    try:
        no_follow_log_files(HydraConfig.get().runtime.output_dir)  # train.log: no line through a link
        summary = train(cfg)
    except Exception as exc:  # bad input exits 2, a fault 1; a failed sweep job is recorded and the sweep goes on
        failed_run(exc, cfg)  # returns only for a failed sweep job
        return None
    return exit_for(summary)  # diverged: exit 3, interrupted: 128 + the signal; else the sweeper's objective


def main() -> None:
    register_schema()  # also the --help page (nettrain/config/help.py)
    env = launch.detect_or_exit()
    launch.refuse_multirun(env, sys.argv)
    before_hydra(sys.argv)  # a shadowing checkout, an unusable run folder, a launcher without its command
    try:
        with launch.leading(env):  # rank 0 resolves the run dir; the other ranks wait for it and use it
            run_dir = launch.wait_for_run_dir(env)
            sys.argv = launch.follower_argv(with_renames(resume_argv(sys.argv)), run_dir)
            # Hydra composes once; its errors exit 2; a resumed config's targets are checked
            with single_composition(sys.argv), composition_errors_exit_2(sys.argv):
                _hydra_main()
    except HydraException as exc:  # --help with a bad override (a run reports these itself)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    if sweep_exit_code():  # a multirun with a failed or incomplete job; the sweep summary says which
        sys.exit(1)


if __name__ == "__main__":
    main()
