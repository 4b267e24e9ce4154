"""The Hydra callback that writes a sweep summary, registered in conf/train.yaml under `hydra.callbacks`.

`SweepSummaryCallback` writes the sweep summary (nettrain.commands.summarize: summary.csv, summary.md,
summary.png, and the table on the console) into the sweep dir when a multirun ends, with any
launcher or sweeper: on_multirun_end runs in the process that launched the jobs. A single run is
untouched, and a summary that cannot be written costs one warning line, never the sweep.

`sweep_exit_code()` tells the command's entry point how the last multirun in this process went:
1 when a job failed or left no summary.json, else 0.

    hydra:
      callbacks:
        sweep_summary:
          _target_: nettrain.run.sweep_callback.SweepSummaryCallback
          plot: true        # false: summary.csv and summary.md only
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from nettrain.commands.summarize import summarize
from nettrain.insight.loggers import start_sweep

_last_summary = None  # the SweepSummary of the last multirun that ended in this process
_last_error: str | None = None  # why the last multirun's summary could not be made


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def last_summary():
    """The nettrain.commands.summarize.SweepSummary of the last multirun that ended here, or None."""
    return _last_summary


def sweep_exit_code() -> int:
    """1 when the last multirun in this process had a failed or incomplete job, else 0 (also 0
    when no multirun ran, or when its summary could not be read)."""
    if _last_summary is None:
        return 0
    return 0 if _last_summary.all_finished else 1


class SweepSummaryCallback(Callback):
    def __init__(self, enabled: bool = True, plot: bool = True) -> None:
        self.enabled = enabled
        self.plot = plot
        self._outer_safepath: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_summary, _last_error
        _last_summary, _last_error = None, None
        # jobs record which launch wrote them (inherited by launcher worker processes), so a
        # re-launch into the same sweep dir tells its own results from earlier ones (nettrain/run/sweep.py)
        os.environ["NETTRAIN_LAUNCH"] = f"{time.time_ns()}-{os.getpid()}"
        # a launcher's job processes keep the working directory off their module search path, as
        # nettrain does (nettrain/config/usermodules.py): submitit starts each job with `python -m
        # submitit.core._submit`, which would put it first (Python 3.11+ reads PYTHONSAFEPATH)
        self._outer_safepath = os.environ.get("PYTHONSAFEPATH")
        os.environ["PYTHONSAFEPATH"] = "1"
        if "mlflow" in config.get("loggers", []):  # one MLflow parent run per sweep, its jobs nested in it
            try:
                start_sweep(config.logger.mlflow.uri, config.logger.mlflow.experiment, str(config.hydra.sweep.dir))
            except Exception as exc:  # noqa: BLE001 - each job then finds or makes the parent itself
                print(f"warning: MLflow sweep run not started: {_one_line(exc)}", file=sys.stderr)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global _last_summary, _last_error
        if self._outer_safepath is None:  # as it was before the multirun
            os.environ.pop("PYTHONSAFEPATH", None)
        else:
            os.environ["PYTHONSAFEPATH"] = self._outer_safepath
        if not self.enabled:
            return
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            _last_summary = summarize(sweep_dir, plot=self.plot)
            for run in _last_summary.not_finished:
                detail = f": {run.error}" if run.error else ""
                print(f"warning: job {run.name} {run.status}{detail}", file=sys.stderr)
        except Exception as exc:  # the summary is a report: it must never fail the sweep
            _last_error = _one_line(exc)
            print(f"warning: sweep summary not written: {_last_error}", file=sys.stderr)
