"""`nettrain-train`: compose the config with Hydra, build the pieces, run the loop.

`main` is the thin Hydra entry point; `train(cfg, output_dir)` does the work and returns the
run's summary, so tests and scripts can call it directly with a config from Hydra's compose API.
`_train` is the recipe, one named step each: resume -> build -> provenance -> fit -> summary.
Building lives in nettrain/build.py, the loop in nettrain/loop.py, resume in nettrain/resume.py.

torch is imported inside `train`, not at module level, so `nettrain-train --help` and config
errors answer without paying for `import torch`.

Re-run a finished run (Hydra's way):   nettrain-train --config-dir RUN_DIR/.hydra --config-name config
Resume an interrupted one:             nettrain-train resume=RUN_DIR
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nettrain.config import ConfigError, plain, register_schema, validate
from nettrain.interrupt import stop_on_signals
from nettrain.metrics import COMPLETED, EARLY_STOPPED, FAILED, FINISHED, INTERRUPTED
from nettrain.resume import finished_already, make_rerunnable, resume_argv, run_dir_of
from nettrain.run_dir import hydra_output_subdir, in_multirun


def train(cfg: DictConfig, output_dir: str | Path | None = None, stop=None) -> dict[str, Any]:
    """Train the configured model; write metrics, checkpoints, plots and summary; return the summary.

    With `cfg.resume` set, continue that run in its own folder from its newest valid checkpoint.
    `stop` (a loop.StopRequest) lets a caller interrupt the run; SIGINT/SIGTERM do the same.
    """
    validate(cfg)
    started = time.perf_counter()
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    output_dir = Path(output_dir)
    if cfg.resume and run_dir_of(cfg.resume) != output_dir.resolve():
        raise ConfigError(
            [
                f"resume={cfg.resume!r}: resume continues a run in its own folder; use "
                f"`nettrain-train resume=RUN_DIR` (not combined with --multirun or hydra.run.dir)"
            ]
        )
    summary_path = output_dir / "summary.json"
    resume_from = Path(cfg.resume).expanduser() if cfg.resume else None
    if not cfg.resume and in_multirun():  # a re-launched sweep: skip, resume or re-run this config
        from nettrain.sweep import claim, config_hash

        previous = claim(output_dir, config_hash(plain(cfg)), launch_id()) or {}
        status = previous.get("status")
        if status in FINISHED:
            print(f"{output_dir}: this config already finished ({status}); skipped")
            return {**previous, "already_finished": True}
        if status == INTERRUPTED and any((output_dir / "checkpoints").glob("*.pt")):
            resume_from = output_dir
    if cfg.resume and (done := finished_already(summary_path, cfg.epochs)):
        return done

    from nettrain.loop import StopRequest
    from nettrain.reproducibility import process_settings

    stop = stop or StopRequest()
    try:  # from here on, SIGINT/SIGTERM stop the run cleanly; torch's process-wide settings are the run's
        with stop_on_signals(stop), process_settings(cfg.threads, cfg.deterministic):
            if cfg.dry_run or cfg.find:  # a dry run or a finder: build, measure, suggest; train nothing
                from nettrain.tune import run_tool

                return run_tool(cfg, output_dir)
            return _train(cfg, output_dir, started, stop, resume_from)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:  # record the failure for sweeps and summaries, then let it propagate
        first_line = (str(exc).strip().splitlines() or [""])[0]
        write_failure(output_dir, cfg, f"{type(exc).__name__}: {first_line}", time.perf_counter() - started)
        raise


def write_failure(output_dir: Path, cfg: DictConfig, error: str, wall_time_s: float = 0.0) -> None:
    """summary.json for a run that failed: its status, the error's first line, its config hash."""
    from nettrain.files import write_json
    from nettrain.sweep import config_hash

    write_json(
        output_dir / "summary.json",
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


def _train(cfg: DictConfig, output_dir: Path, started: float, stop, resume_from: Path | None) -> dict[str, Any]:
    """The recipe: resume -> build -> provenance -> fit -> summary."""
    from nettrain.build import build_diagnosis, build_loggers, build_run, resolve_device
    from nettrain.report import Reporter
    from nettrain.reproducibility import seed_everything, write_provenance
    from nettrain.run_dir import set_aside_old_results

    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    reporter = Reporter(**cfg.console)
    plain_config = plain(cfg)
    saved = None
    if resume_from is not None:
        from nettrain.resume import load_resume_point

        saved = load_resume_point(resume_from, output_dir, plain_config, reporter)
    run = build_run(cfg, device)
    memory = _introduce(cfg, run, output_dir, reporter)  # the estimate counts on copies: before any hooks
    build_diagnosis(cfg, run.state), build_loggers(cfg, run.state)  # into run.state.extras: checkpointed
    start = None
    if saved is not None:
        from nettrain.checkpoint import restore

        start = restore(saved, run.state, device)
    else:
        set_aside_old_results(output_dir, reporter)
    record = write_provenance(run.device, run.data.fingerprint(), output_dir, resume_from is not None, reporter.warn)
    result = _fit(cfg, run, output_dir, plain_config, reporter, start, stop, record)
    return _summarize(cfg, run, result, output_dir, reporter, stop, record, started, memory)


def _introduce(cfg: DictConfig, run, output_dir: Path, reporter):
    """Print the config, the model, the memory estimate and the data; start measuring the peak."""
    from nettrain.build import memory_estimate
    from nettrain.memory import MemoryCheck, PeakMemory
    from nettrain.models import param_count

    state, data = run.state, run.data
    est = memory_estimate(cfg, state.model, state.optimizer, state.loss_fn, data, run.loader, state.precision)
    reporter.start(OmegaConf.to_yaml(cfg), state.model, param_count(state.model), str(run.device), output_dir)
    reporter.note(f"training memory estimate at batch {est.batch_size}:\n" + "\n".join(est.lines()))
    reporter.note(
        f"data: {data.name}, train {len(data.train)} / val {len(data.val)} / "
        f"test {len(data.test)}, input {list(data.input_shape)}, {data.num_classes} classes"
    )
    return MemoryCheck(est, PeakMemory(run.device).start())


def _fit(cfg: DictConfig, run, output_dir: Path, plain_config: dict, reporter, start, stop, record: dict):
    """Train with the loop's settings and outputs taken from the config."""
    from nettrain.checkpoint import Checkpointer
    from nettrain.loop import LoopSettings, RunOutputs, fit
    from nettrain.metrics import MetricsWriter
    from nettrain.sweep import config_hash

    tags = {"config_hash": config_hash(plain_config), "git_commit": (record.get("git") or {}).get("commit")}
    run.state.extras["loggers"].start(output_dir, plain_config, tags)
    settings = LoopSettings(
        epochs=cfg.epochs,
        l1=cfg.regularization.l1,
        grad_clip=cfg.regularization.grad_clip,
        restore_best=cfg.early_stopping.restore_best,
    )
    out = RunOutputs(
        checkpointer=Checkpointer(output_dir / "checkpoints", plain_config, enabled=cfg.checkpoint.enabled),
        metrics=MetricsWriter(output_dir / "metrics.csv"),
        reporter=reporter,
    )
    return fit(run.state, run.train_batches, run.val_batches, settings, out, start=start, stop=stop)


def _summarize(
    cfg: DictConfig, run, result, output_dir: Path, reporter, stop, record: dict, started: float, memory
) -> dict[str, Any]:
    """Test the best weights, then write summary.json and the plots, and print the summary."""
    import torch

    from nettrain.files import write_json
    from nettrain.loop import evaluate
    from nettrain.memory import peak_rss_mb
    from nettrain.models import param_count
    from nettrain.report import save_plots
    from nettrain.sweep import config_hash

    history, device = run.state.history, run.device
    status = INTERRUPTED if result.interrupted else EARLY_STOPPED if result.stopped_early else COMPLETED
    best_row: dict[str, Any] = next((r for r in history if r["epoch"] == result.best_epoch), {})
    test_loss = test_acc = None
    if not result.interrupted:
        test_loss, test_acc = evaluate(run.state.model, run.state.loss_fn, run.batches(run.data.test))
    summary: dict[str, Any] = {
        "status": status,
        "best_epoch": result.best_epoch,
        "best_val_loss": best_row.get("val_loss"),
        "best_val_acc": best_row.get("val_acc"),
        "test_loss": test_loss,
        "test_acc": test_acc,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "monitor": cfg.early_stopping.monitor,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "device": str(device),
        "device_name": record["device_name"],
        "param_count": param_count(run.state.model),
        "samples_per_s": sum(r["samples_per_s"] for r in history) / len(history) if history else None,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        **memory.summary(),
        "diagnosis": run.state.extras["diagnosis"].summary(history),
        "cuda_peak_memory_mb": (
            round(torch.cuda.max_memory_allocated(device) / 2**20, 2) if device.type == "cuda" else None
        ),
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "precision": cfg.trainer.precision,
        "torch_threads": torch.get_num_threads(),
        "data_fingerprint": record["data_fingerprint"],
        "config_hash": config_hash(plain(cfg)),
        "launch": launch_id(),
    }
    if result.interrupted:
        summary["signal"] = stop.signum
    save_plots(history, output_dir / "plots")
    write_json(output_dir / "summary.json", summary)
    run.state.extras["loggers"].finish(summary, output_dir, status)
    reporter.summary(summary)
    if result.interrupted and cfg.checkpoint.enabled:
        reporter.note(
            f"interrupted after {stop.steps} steps this session; a checkpoint is saved. "
            f"Resume with:\n  nettrain-train resume={output_dir.resolve()}"
        )
    elif result.interrupted:
        reporter.note(f"interrupted after {stop.steps} steps; checkpoint.enabled=false, so it cannot be resumed")
    return summary


@hydra.main(version_base="1.3", config_path="pkg://nettrain.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    subdir = hydra_output_subdir()
    if subdir is not None and (subdir / "config.yaml").is_file():
        make_rerunnable(subdir / "config.yaml")
    try:
        summary = train(cfg)
    except ConfigError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        if in_multirun():  # one bad job must not take the sweep down; the summary records it
            from hydra.core.hydra_config import HydraConfig

            write_failure(Path(HydraConfig.get().runtime.output_dir), cfg, f"ConfigError: {exc.problems[0]}")
            return None  # not NaN: the Optuna sweeper fails on NaN; None marks the trial failed
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001
        if not in_multirun():
            raise
        print(f"Error: job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if summary.get("status") == INTERRUPTED:
        sys.exit(128 + (summary.get("signal") or signal.SIGINT))
    return summary["best_val_loss"]  # the objective a hyperparameter sweeper minimises


def main() -> None:
    from hydra.errors import HydraException

    register_schema()  # also the --help page (nettrain/help.py)
    sys.argv = resume_argv(sys.argv)
    try:
        _hydra_main()
    except HydraException as exc:  # --help with a bad override (a run reports these itself)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    from nettrain.sweep_callback import sweep_exit_code

    if sweep_exit_code():  # a multirun with a failed or incomplete job; the sweep summary says which
        sys.exit(1)


if __name__ == "__main__":
    main()
