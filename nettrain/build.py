"""Building a run: everything that turns a composed config into objects.

The device, the data and its batches, the model, the loss, the optimizer (with fused kernels
where they exist), mixed precision, the learning-rate schedule, early stopping and the gradient
monitor. `build_run` puts them together into a :class:`Run` whose `state` (a TrainState) is
what the loop trains and what checkpoints save. Each `build_*` step can be used on its own:
`nettrain-eval` and the tests build just the data and the model.

A component that cannot be built from its config becomes a ConfigError that names the group and
the target, never a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from nettrain.config import MONITORED, ConfigError, plain
from nettrain.data import Batches, DataSplits, Split
from nettrain.state import TrainState

FUSED_OPTIMIZERS = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else mps, else cpu; an explicit device must exist."""
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
            raise ConfigError(
                [
                    f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s), "
                    f"allowed: cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
                ]
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([f"device={name!r}: MPS is not available here; allowed: auto, cpu"])
    return device


@contextlib.contextmanager
def building(group: str, target: str | None) -> Iterator[None]:
    """Turn a failure to build `target` of config group `group` into a ConfigError naming both."""
    from hydra.errors import InstantiationException

    try:
        yield
    except (InstantiationException, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        raise ConfigError([f"{group}: could not build {target}: {cause}"]) from exc


def instantiate(node: Any, group: str, *call_args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, then call the partial with call_args if any; a failure becomes a
    config error that names the group and the target."""
    from hydra.utils import instantiate as hydra_instantiate

    with building(group, node.get("_target_")):
        built = hydra_instantiate(node, **kwargs)
        return built(*call_args) if call_args else built


def fused_kwargs(target: str, device: torch.device, setting: str = "auto") -> dict[str, bool]:
    """`fused=True` for torch optimizers with fused kernels: on CUDA under `auto`, always under
    `on`; nothing (torch's default) otherwise, so CPU runs keep their exact arithmetic."""
    if target in FUSED_OPTIMIZERS and (setting == "on" or (setting == "auto" and device.type == "cuda")):
        return {"fused": True}
    return {}


def build_data(cfg: DictConfig) -> tuple[DataSplits, dict[str, Any]]:
    """The data splits, and the loader settings nettrain reads itself (in_memory, num_workers)."""
    data_node = plain(cfg.data)
    loader = {"in_memory": data_node.pop("in_memory", True), "num_workers": data_node.pop("num_workers", 0)}
    return instantiate(data_node, "data"), loader


def build_model(cfg: DictConfig, data: DataSplits, device: torch.device) -> torch.nn.Module:
    """The model for the data's input shape and class count, on `device`."""
    model = instantiate(cfg.model, "model", input_shape=list(data.input_shape), num_classes=data.num_classes)
    return model.to(device)


def build_data_and_model(cfg: DictConfig, device: torch.device):
    """The data splits, the loader settings and the model on `device`."""
    data, loader = build_data(cfg)
    return data, loader, build_model(cfg, data, device)


def use_channels_last(setting: str, device: torch.device, model: torch.nn.Module) -> bool:
    """trainer.channels_last: `on`, or `auto` for conv models on CUDA."""
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return setting == "on" or (setting == "auto" and device.type == "cuda" and has_conv)


def build_loss(cfg: DictConfig) -> torch.nn.Module:
    return instantiate(cfg.loss, "loss")


def build_optimizer(cfg: DictConfig, model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer option over the model's parameters, fused on CUDA where torch has kernels."""
    fused = fused_kwargs(cfg.optimizer._target_, device, cfg.trainer.fused_optimizer)
    return instantiate(cfg.optimizer, "optimizer", model.parameters(), _partial_=True, **fused)


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The scheduler option, with its warmup, as an LRSchedule."""
    from nettrain import schedulers

    with building("scheduler", cfg.scheduler._target_):
        return schedulers.build_schedule(
            optimizer,
            plain(cfg.scheduler),
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.epochs,
        )


def build_early_stopping(cfg: DictConfig):
    from nettrain.early_stopping import EarlyStopping

    es = cfg.early_stopping
    return EarlyStopping(
        monitor=es.monitor, mode=MONITORED[es.monitor], patience=es.patience, min_delta=es.min_delta, enabled=es.enabled
    )


def build_grad_monitor(cfg: DictConfig, model: torch.nn.Module):
    from nettrain.grad_monitor import GradientMonitor

    gm = cfg.grad_monitor
    return GradientMonitor(
        model.named_parameters(),
        enabled=gm.enabled,
        skip_nonfinite=cfg.trainer.precision == "fp16",
        every_n_steps=gm.every_n_steps,
    )


@dataclass
class Run:
    """A built run: the device, the data and its batches, and the training state."""

    device: torch.device
    data: DataSplits
    loader: dict[str, Any]  # in_memory, num_workers
    batch_size: int
    state: TrainState
    train_batches: Batches
    val_batches: Batches

    def batches(self, split: Split) -> Batches:
        """Unshuffled batches of another split (the test split), served like the others."""
        return Batches(split, self.batch_size, self.device, **self.loader)


def build_run(cfg: DictConfig, device: torch.device) -> Run:
    """Everything the loop needs, from the config: data, model, loss, optimizer, precision,
    schedule, early stopping and the gradient monitor, with fresh (unrestored) state."""
    from nettrain.precision import Precision

    data, loader = build_data(cfg)
    model = build_model(cfg, data, device)
    if use_channels_last(cfg.trainer.channels_last, device, model):
        model = model.to(memory_format=torch.channels_last)
        for split in (data.train, data.val, data.test):
            split.x = split.x.contiguous(memory_format=torch.channels_last)
    loss_fn = build_loss(cfg)
    optimizer = build_optimizer(cfg, model, device)
    if cfg.trainer.compile:
        model.compile()  # in place: state_dict keys and checkpoints stay the same
    order = torch.Generator().manual_seed(cfg.seed)  # the data order has its own generator
    train_batches = Batches(data.train, cfg.batch_size, device, shuffle=True, generator=order, **loader)
    state = TrainState(
        model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        schedule=build_schedule(cfg, optimizer, len(train_batches)),
        early_stopping=build_early_stopping(cfg),
        grad_monitor=build_grad_monitor(cfg, model),
        precision=Precision(cfg.trainer.precision, device),
        data_generator=order,
    )
    return Run(
        device, data, loader, cfg.batch_size, state, train_batches, Batches(data.val, cfg.batch_size, device, **loader)
    )


def build_diagnosis(cfg: DictConfig, state: TrainState):
    """The per-epoch gradient diagnosis, sampling the steps the gradient monitor samples; its
    probe's partial sums are checkpointed (TrainState.extras['diagnosis'])."""
    from nettrain.diagnosis import Diagnostician, Thresholds, TrainingDiagnostics, weight_names

    gm, monitor = cfg.grad_monitor, state.grad_monitor
    probe = TrainingDiagnostics(
        state.model,
        state.optimizer,
        in_forward=monitor.sampling_next,
        after_backward=monitor.sampled_last,
        enabled=gm.enabled,
    )
    thresholds = Thresholds(
        spread=gm.ratio,
        vanishing_below=gm.vanishing_below,
        exploding_above=gm.exploding_above,
        update_ratio_above=gm.update_ratio_above,
        norm_growth=gm.norm_growth,
        dead_fraction=gm.dead_fraction,
    )
    diagnosis = Diagnostician(probe, weight_names(state.model), thresholds)
    state.extras["diagnosis"] = diagnosis
    return diagnosis


def build_loggers(cfg: DictConfig, state: TrainState, rank: int | None = None):
    """The experiment loggers of `cfg.loggers`; their run ids are checkpointed (extras['loggers']).
    In a multirun, the sweep dir and job number name the runs."""
    from nettrain import loggers
    from nettrain.run_dir import in_multirun

    sweep_dir = job = None
    if in_multirun():
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        sweep_dir, job = str(hc.sweep.dir), str(hc.job.num)
    settings = plain(cfg.logger)
    group = loggers.build_loggers(cfg.loggers, **settings, sweep_dir=sweep_dir, job_name=job, rank=rank)
    state.extras["loggers"] = group
    return group


def memory_estimate(
    cfg: DictConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    data: DataSplits,
    loader: dict[str, Any],
    precision: Any,
):
    """The training-memory estimate (nettrain/memory.py) for this model, optimizer, data and batch."""
    from nettrain.memory import data_bytes, estimate

    device = next(model.parameters()).device
    held = data_bytes([data.train, data.val, data.test], device, loader["in_memory"], cfg.batch_size)
    return estimate(
        model,
        optimizer,
        loss_fn,
        data.train.x[:4],
        data.train.y[:4],
        min(cfg.batch_size, len(data.train)),
        data_bytes=held,
        restore_best=cfg.early_stopping.restore_best,
        autocast=precision.autocast,
    )
