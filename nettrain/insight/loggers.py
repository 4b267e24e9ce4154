"""Experiment loggers: the run's metrics in the tools people already read.

`loggers: [csv]` is the default: metrics.csv and the PNG plots, written by the run itself.
Each other name adds one tracker, an optional extra:

- `tensorboard` (`pip install "nettrain[tensorboard]"`): event files in RUN_DIR/tensorboard/,
  scalars per epoch (losses, accuracy, lr, throughput, every per-layer gradient statistic) and,
  when `logger.tensorboard.histograms`, weight and gradient histograms once per epoch;
- `mlflow` (`pip install "nettrain[mlflow]"`): one MLflow run with the flattened config as
  params, the metrics per epoch, tags (config hash, git commit) and the summary and plots as
  artifacts, in `logger.mlflow.uri` or MLflow's own default store;
- `wandb` (`pip install "nettrain[wandb]"`): one W&B run; offline (files in RUN_DIR/wandb/)
  unless an API key is configured, or as `logger.wandb.mode` says.

Each logger's run id goes into the checkpoint (TrainState.extras), so a resumed run continues
the same tracker run and logs no epoch twice. In a sweep each job is its own run: TensorBoard
finds them side by side under the sweep dir, MLflow nests them under one parent run per sweep.
Under distributed training only rank 0 logs (`LoggerGroup(..., enabled=rank == 0)`).
"""

from __future__ import annotations

import math
import netrc
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SWEEP_PARENT_ENV = "NETTRAIN_MLFLOW_PARENT"  # set by the sweep callback: the sweep's MLflow parent run


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numeric, finite entries of a metrics row, except the epoch number itself."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and _finite(v)}


class Logger:
    """One tracker. The loop calls log_epoch after each epoch; the run calls finish at the end."""

    name = "logger"

    def start(self, run_dir: Path, config: dict[str, Any], tags: dict[str, str], resume_from: int) -> None:
        """resume_from: the last epoch already logged (0 for a fresh run)."""

    def log_epoch(self, epoch: int, row: dict[str, Any], model: Any = None) -> None: ...

    def finish(self, summary: dict[str, Any], files: list[Path], status) -> None:
        """status: how the run ended (a nettrain.run.summary.RunStatus)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def __init__(self, histograms: bool = True):
        self.histograms = histograms
        self.writer: Any = None

    def start(self, run_dir, config, tags, resume_from):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run drops any events a crashed session wrote past its checkpoint
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_from + 1 if resume_from else None)
        if not resume_from:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in _flat(config).items()), 0)
            self.writer.add_text("tags", "\n".join(f"    {k}: {v}" for k, v in tags.items()), 0)

    def log_epoch(self, epoch, row, model=None):
        for key, value in scalars(row).items():
            self.writer.add_scalar(key, value, epoch)
        if self.histograms and model is not None:
            for name, p in model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", p.detach(), epoch)
                if p.grad is not None and bool(p.grad.isfinite().all()):  # once per epoch
                    self.writer.add_histogram(f"gradients/{name}", p.grad.detach(), epoch)
        self.writer.flush()

    def finish(self, summary, files, status):
        if self.writer is None:
            return
        self.writer.add_text("summary", "\n".join(f"    {k}: {v}" for k, v in summary.items()))
        self.writer.close()


class MlflowLogger(Logger):
    """Through MlflowClient (no global active run), so tests and sweeps in one process stay apart."""

    name = "mlflow"

    def __init__(
        self,
        uri: str | None = None,
        experiment: str = "nettrain",
        sweep_dir: str | None = None,
        job_name: str | None = None,
    ):
        self.uri, self.experiment, self.sweep_dir, self.job_name = uri, experiment, sweep_dir, job_name
        self.run_id: str | None = None
        self.client: Any = None
        self.last_logged = 0

    def start(self, run_dir, config, tags, resume_from):
        entities, tracking = _mlflow()
        self.client = tracking.MlflowClient(tracking_uri=self.uri)
        if self.run_id is not None:  # resumed: the same run, epochs past those it already holds
            self.client.update_run(self.run_id, status="RUNNING")
            logged = self.client.get_metric_history(self.run_id, "train_loss")
            self.last_logged = max([resume_from, *(m.step for m in logged)])
            return
        experiment_id = experiment_id_for(self.client, self.experiment)
        run_tags = {f"nettrain.{k}": str(v) for k, v in tags.items()}
        run_tags["nettrain.run_dir"] = str(run_dir.resolve())
        if self.sweep_dir:
            parent = os.environ.get(SWEEP_PARENT_ENV) or sweep_parent(self.client, experiment_id, self.sweep_dir)
            run_tags["mlflow.parentRunId"] = parent
        run = self.client.create_run(experiment_id, run_name=self.job_name or run_dir.name, tags=run_tags)
        self.run_id = run.info.run_id
        params = [entities.Param(k[:250], str(v)[:6000]) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_epoch(self, epoch, row, model=None):
        if epoch <= self.last_logged:
            return
        now = _now_ms()
        metrics = [_mlflow()[0].Metric(k, v, now, epoch) for k, v in scalars(row).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])
        self.last_logged = epoch

    def finish(self, summary, files, status):
        if self.client is None or self.run_id is None:
            return
        now, entities = _now_ms(), _mlflow()[0]
        final = [entities.Metric(f"final/{k}", float(v), now, 0) for k, v in summary.items() if _finite(v)]
        if final:
            self.client.log_batch(self.run_id, metrics=final)
        self.client.set_tag(self.run_id, "nettrain.status", str(status))
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), path.name)
            elif path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        # MLflow's run states: finished; killed (interrupted, resumable); failed (diverged, failed)
        self.client.set_terminated(
            self.run_id, "FINISHED" if status.finished else "KILLED" if status.ended else "FAILED"
        )

    def state_dict(self):
        return {"run_id": self.run_id or ""}

    def load_state_dict(self, state):
        self.run_id = state.get("run_id") or None


def _mlflow() -> tuple[Any, Any]:
    """mlflow.entities and mlflow.tracking: the [mlflow] extra, imported when an MLflow run starts."""
    from mlflow import entities, tracking

    return entities, tracking


def experiment_id_for(client: Any, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    return experiment.experiment_id if experiment else client.create_experiment(name)


def sweep_parent(client: Any, experiment_id: str, sweep_dir: str) -> str:
    """The parent run of a sweep: found by its sweep dir, or created (once per sweep)."""
    sweep_dir = str(Path(sweep_dir).resolve())
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`nettrain.sweep_dir` = '{sweep_dir}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"sweep {Path(sweep_dir).parent.name}/{Path(sweep_dir).name}",
        tags={"nettrain.sweep_dir": sweep_dir},
    )
    return run.info.run_id


def start_sweep(uri: str | None, experiment: str, sweep_dir: str) -> str:
    """Create (or find) the sweep's MLflow parent run and pass it to every job through the environment."""
    client = _mlflow()[1].MlflowClient(tracking_uri=uri)
    parent = sweep_parent(client, experiment_id_for(client, experiment), sweep_dir)
    os.environ[SWEEP_PARENT_ENV] = parent
    return parent


class WandbLogger(Logger):
    name = "wandb"

    def __init__(
        self, project: str = "nettrain", mode: str = "auto", group: str | None = None, job_name: str | None = None
    ):
        self.project, self.mode, self.group, self.job_name = project, mode, group, job_name
        self.run_id: str | None = None
        self.run: Any = None
        self.last_logged = 0

    def start(self, run_dir, config, tags, resume_from):
        import wandb

        mode = self.mode if self.mode != "auto" else ("online" if wandb_key_configured() else "offline")
        self.run_id = self.run_id or secrets.token_hex(4)  # a W&B run id: 8 lowercase characters
        self.last_logged = resume_from
        self.run = wandb.init(
            project=self.project,
            dir=str(run_dir),
            id=self.run_id,
            resume="allow",
            mode=mode,
            config=_flat(config),
            group=self.group,
            name=self.job_name or run_dir.name,
            tags=[f"{k}={v}"[:64] for k, v in tags.items()],
            reinit="create_new",
        )

    def log_epoch(self, epoch, row, model=None):
        if epoch <= self.last_logged:
            return
        self.run.log(scalars(row), step=epoch)
        self.last_logged = epoch

    def finish(self, summary, files, status):
        if self.run is None:
            return
        self.run.summary.update({k: v for k, v in summary.items() if _finite(v) or isinstance(v, str)})
        self.run.finish(exit_code=0 if status.ended else 1)

    def state_dict(self):
        return {"run_id": self.run_id or ""}

    def load_state_dict(self, state):
        self.run_id = state.get("run_id") or None


def wandb_key_configured() -> bool:
    """An API key in WANDB_API_KEY or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class LoggerGroup:
    """The run's trackers, called together; `enabled=False` (every rank but 0) makes it silent.

    Checkpointed through TrainState.extras: state_dict() holds each logger's run id and the last
    epoch logged."""

    def __init__(self, loggers: list[Logger], enabled: bool = True):
        self.loggers = loggers if enabled else []
        self.enabled = enabled
        self.epoch = 0  # the last epoch logged

    def start(self, run_dir: Path, config: dict[str, Any], tags: dict[str, str]) -> None:
        for logger in self.loggers:
            logger.start(run_dir, config, tags, self.epoch)

    def log_epoch(self, row: dict[str, Any], model: Any = None) -> None:
        epoch = int(row["epoch"])
        if epoch <= self.epoch:
            return
        for logger in self.loggers:
            logger.log_epoch(epoch, row, model)
        self.epoch = epoch

    def finish(self, summary: dict[str, Any], run_dir: Path, status) -> None:
        """The run's end: its summary, its status (a RunStatus) and the files worth keeping (summary,
        metrics, plots)."""
        files = [run_dir / name for name in ("summary.json", "metrics.csv", "plots")]
        for logger in self.loggers:
            logger.finish(summary, files, status)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **{f"{lg.name}.{k}": v for lg in self.loggers for k, v in lg.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state.get("epoch", 0))
        for logger in self.loggers:
            prefix = f"{logger.name}."
            logger.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def build_loggers(
    names: Iterable[str],
    *,
    tensorboard: dict | None = None,
    mlflow: dict | None = None,
    wandb: dict | None = None,
    sweep_dir: str | None = None,
    job_name: str | None = None,
    rank: int | None = None,
) -> LoggerGroup:
    """The LoggerGroup for `loggers`; csv is the run's own metrics.csv and needs no object.
    rank: this process's rank under distributed training (default: $RANK, else 0); only 0 logs."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    made: list[Logger] = []
    for name in names:
        if name == "tensorboard":
            made.append(TensorBoardLogger(**(tensorboard or {})))
        elif name == "mlflow":
            made.append(MlflowLogger(**(mlflow or {}), sweep_dir=sweep_dir, job_name=job_name))
        elif name == "wandb":
            made.append(
                WandbLogger(**(wandb or {}), group=Path(sweep_dir).name if sweep_dir else None, job_name=job_name)
            )
    return LoggerGroup(made, enabled=rank == 0)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)
