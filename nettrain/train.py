"""`nettrain-train`: compose the config with Hydra, build the pieces, run the loop.

`main` is the thin Hydra entry point; `train(cfg, output_dir)` does the work and returns the
run's summary, so tests and scripts can call it directly with a config from Hydra's compose API.

torch is imported inside `train`, not at module level, so `nettrain-train --help` and config
errors answer without paying for `import torch`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nettrain.config import MONITORED, ConfigError, register_schema, validate

log = logging.getLogger("nettrain")


def resolve_device(name: str):
    """`auto` -> cuda if available, else mps, else cpu; an explicit device must exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError([f"device={name!r}: CUDA is not available here; allowed: auto, cpu"])
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError([f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s), "
                               f"allowed: cuda:0 .. cuda:{torch.cuda.device_count() - 1}"])
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([f"device={name!r}: MPS is not available here; allowed: auto, cpu"])
    return device


def seed_everything(seed: int, deterministic: bool = False) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _instantiate(node: Any, group: str, *call_args, **kwargs):
    """hydra.utils.instantiate, then call the partial with call_args if any; a failure becomes a
    config error that names the group and the target."""
    from hydra.utils import instantiate

    with _building(group, node.get("_target_")):
        built = instantiate(node, **kwargs)
        return built(*call_args) if call_args else built


@contextlib.contextmanager
def _building(group: str, target: str | None):
    from hydra.errors import InstantiationException

    try:
        yield
    except (InstantiationException, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        raise ConfigError([f"{group}: could not build {target}: {cause}"]) from exc


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def train(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train the configured model; write metrics, checkpoints, plots and summary; return the summary."""
    validate(cfg)
    started = time.perf_counter()
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    output_dir = Path(output_dir)

    import torch

    from nettrain import data as data_lib
    from nettrain.checkpoint import Checkpointer
    from nettrain.early_stopping import EarlyStopping
    from nettrain.files import write_json
    from nettrain.grad_monitor import GradientMonitor
    from nettrain.loop import evaluate, fit
    from nettrain.metrics import MetricsWriter
    from nettrain.models import param_count
    from nettrain.report import Reporter, save_plots
    from nettrain.schedulers import build_schedule

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    reporter = Reporter(**cfg.console)

    # -- build: data, model, loss, optimizer, schedule ------------------------------------------
    data_node = OmegaConf.to_container(cfg.data, resolve=True)
    in_memory, num_workers = data_node.pop("in_memory", True), data_node.pop("num_workers", 0)
    data = _instantiate(data_node, "data")
    model = _instantiate(cfg.model, "model", input_shape=list(data.input_shape),
                         num_classes=data.num_classes).to(device)
    loss_fn = _instantiate(cfg.loss, "loss")
    optimizer = _instantiate(cfg.optimizer, "optimizer", model.parameters(), _partial_=True)
    order = torch.Generator().manual_seed(cfg.seed)  # the data order has its own generator
    train_batches = data_lib.Batches(data.train, cfg.batch_size, device, shuffle=True, generator=order,
                                     in_memory=in_memory, num_workers=num_workers)
    val_batches = data_lib.Batches(data.val, cfg.batch_size, device, in_memory=in_memory,
                                   num_workers=num_workers)
    with _building("scheduler", cfg.scheduler._target_):
        schedule = build_schedule(optimizer, OmegaConf.to_container(cfg.scheduler, resolve=True),
                                  steps_per_epoch=len(train_batches), epochs=cfg.epochs)
    es = cfg.early_stopping
    early_stopping = EarlyStopping(monitor=es.monitor, mode=MONITORED[es.monitor], patience=es.patience,
                                   min_delta=es.min_delta, enabled=es.enabled)
    gm = cfg.grad_monitor
    grad_monitor = GradientMonitor(model.named_parameters(), enabled=gm.enabled,
                                   vanishing_below=gm.vanishing_below,
                                   exploding_above=gm.exploding_above, ratio=gm.ratio)
    plain_config = OmegaConf.to_container(cfg, resolve=True)
    checkpointer = Checkpointer(output_dir / "checkpoints", plain_config, enabled=cfg.checkpoint.enabled)
    metrics = MetricsWriter(output_dir / "metrics.csv")
    n_params = param_count(model)
    reporter.start(OmegaConf.to_yaml(cfg), model, n_params, str(device), output_dir)
    reporter.note(f"data: {data.name}, train {len(data.train)} / val {len(data.val)} / "
                  f"test {len(data.test)}, input {list(data.input_shape)}, {data.num_classes} classes")

    # -- train, then test the best weights -------------------------------------------------------
    result = fit(model=model, loss_fn=loss_fn, optimizer=optimizer, schedule=schedule,
                 train_batches=train_batches, val_batches=val_batches, epochs=cfg.epochs,
                 grad_monitor=grad_monitor, early_stopping=early_stopping, checkpointer=checkpointer,
                 metrics=metrics, reporter=reporter, l1=cfg.regularization.l1,
                 grad_clip=cfg.regularization.grad_clip, restore_best=es.restore_best)
    test_batches = data_lib.Batches(data.test, cfg.batch_size, device, in_memory=in_memory,
                                    num_workers=num_workers)
    test_loss, test_acc = evaluate(model, loss_fn, test_batches)
    best_row = next(r for r in metrics.rows if r["epoch"] == result.best_epoch)
    summary = {
        "status": "early_stopped" if result.stopped_early else "completed",
        "best_epoch": result.best_epoch,
        "best_val_loss": best_row["val_loss"],
        "best_val_acc": best_row["val_acc"],
        "test_loss": test_loss,
        "test_acc": test_acc,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "monitor": es.monitor,
        "wall_time_s": round(time.perf_counter() - started, 3),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "param_count": n_params,
        "samples_per_s": sum(r["samples_per_s"] for r in metrics.rows) / len(metrics.rows),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "torch_threads": torch.get_num_threads(),
    }
    save_plots(metrics.rows, output_dir / "plots")
    write_json(output_dir / "summary.json", summary)
    reporter.summary(summary)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://nettrain.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    try:
        summary = train(cfg)
    except ConfigError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)
    return summary["best_val_loss"]  # the objective a hyperparameter sweeper minimises


def main() -> None:
    register_schema()
    _hydra_main()


if __name__ == "__main__":
    main()
