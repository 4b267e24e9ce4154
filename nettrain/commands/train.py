"""`nettrain-train`: the command. Hydra composes the config; the run itself is the recipe in
nettrain/engine/recipe.py (resume -> build -> fit -> test -> record).

`main` is the thin Hydra entry point and turns a run's end into the exit status; `train(cfg,
output_dir)` runs one training and returns its summary, so tests and scripts can call it directly
with a config from Hydra's compose API. Before the recipe, the command decides whether there is
anything to do (`starting_point`): a finished run or sweep job is not trained again.
torch is imported inside the functions (nettrain/engine/), so `--help` and config errors answer at once.

Re-run a finished run (Hydra's way):   nettrain-train --config-dir RUN_DIR/.hydra --config-name config
Resume an interrupted one:             nettrain-train resume=RUN_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig

from nettrain.commands.errors import before_hydra, composition_errors_exit_2, exit_for, failed_run
from nettrain.commands.startup import single_composition
from nettrain.commands.sweep_callback import sweep_exit_code
from nettrain.config.schema import plain, validate
from nettrain.config.store import register_schema
from nettrain.errors import ConfigError
from nettrain.run import launch
from nettrain.run.folder import RunWriter, hydra_output_subdir, in_multirun, no_follow_log_files
from nettrain.run.resume import finished_already, make_rerunnable, resume_argv, run_dir_of, with_renames
from nettrain.run.summary import FINISHED, RunStatus, launch_id
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
    output_dir = Path(output_dir if output_dir is not None else HydraConfig.get().runtime.output_dir)
    resume_from, finished = starting_point(cfg, RunWriter(output_dir))
    if finished is not None:  # a finished run or sweep job: nothing to do
        return finished
    from nettrain.engine.recipe import train_run  # torch from here on

    return train_run(cfg, output_dir, resume_from, stop, device)


def starting_point(cfg: DictConfig, writer: RunWriter) -> tuple[Path | None, dict[str, Any] | None]:
    """(the run or checkpoint to continue, or None; the summary of a run with nothing left to do,
    or None): `resume=RUN_DIR`, or a sweep job launched again, which is skipped when it finished,
    resumed when it was interrupted, and run again otherwise. Decided before torch is imported:
    a sweep launched again skips its finished jobs in start-up time."""
    output_dir, config = writer.folder, plain(cfg)
    if cfg.resume and run_dir_of(cfg.resume) != output_dir.resolve():
        raise ConfigError(
            [
                f"resume={cfg.resume!r}: resume continues a run in its own folder; use "
                f"`nettrain-train resume=RUN_DIR` (not combined with --multirun or hydra.run.dir)"
            ]
        )
    resume_from = Path(cfg.resume).expanduser() if cfg.resume else None
    if not cfg.resume and in_multirun():
        previous = _rank_zeros(writer.run(claim, output_dir, config_hash(config), launch_id())) or {}
        status = previous.get("status")
        if status in FINISHED:
            if launch.context().is_main:
                print(f"{output_dir}: this config already finished ({status}); skipped")
            return None, {**previous, "already_finished": True}
        if status == RunStatus.INTERRUPTED and any((output_dir / "checkpoints").glob("*.pt")):
            resume_from = output_dir
    if cfg.resume:
        return resume_from, finished_already(output_dir / "summary.json", cfg.epochs, resume_from, config)
    return resume_from, None


def _rank_zeros(value: Any) -> Any:
    """Rank 0's `value` on every rank of a process group; `value` itself in one process (no torch)."""
    if not launch.context().distributed:
        return value
    from nettrain.engine import distributed

    return distributed.broadcast_object(value)


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
