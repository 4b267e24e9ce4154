"""The training state: every stateful part of a run, in one object.

`TrainState` is what the loop trains and what a checkpoint saves and restores. A new stateful
part (EMA weights, a logger's run id, ...) is added in one place: put any object with
`state_dict()` / `load_state_dict()` into `TrainState.extras[name]`, and it is checkpointed
under `name` and restored on resume, with no change to the loop or to checkpoint.py.

`Position` says where training stands inside the run, so a run stopped mid-epoch resumes
exactly: the epoch's sample order, the step reached and the partial loss sum, and the run's
step count and time so far (trainer.max_steps, trainer.max_time).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Position:
    """Where training stands: `epoch` epochs done, plus `step_in_epoch` steps of the next one."""

    epoch: int = 0
    step_in_epoch: int = 0
    order: torch.Tensor | None = None  # the sample order of the epoch in progress
    loss_sum: torch.Tensor | None = None  # its training-loss sum so far
    train_time: float = 0.0  # its training seconds so far
    best_weights: dict | None = None  # the best epoch's weights, for restore_best
    global_step: int | None = None  # optimizer steps done in the whole run; None: derive it (an older checkpoint)
    elapsed: float | None = None  # seconds inside the loop so far (what max_time counts); None: derive it


@dataclass
class TrainState:
    """The model and every object whose state a resumed run needs, plus the metrics so far."""

    model: nn.Module
    loss_fn: nn.Module  # the data loss (not checkpointed: built from the config)
    optimizer: torch.optim.Optimizer
    schedule: Any  # nettrain.optim.schedulers.LRSchedule
    early_stopping: Any  # nettrain.engine.early_stopping.EarlyStopping
    grad_monitor: Any  # nettrain.insight.grad_monitor.GradientMonitor
    precision: Any  # nettrain.engine.precision.Precision
    data_generator: torch.Generator  # the data order's own generator
    history: list[dict] = field(default_factory=list)  # the metrics rows of the epochs done
    extras: dict[str, Any] = field(default_factory=dict)  # optional stateful parts, by checkpoint key
    ddp: nn.Module | None = None  # under torchrun/SLURM: the DistributedDataParallel wrapper of `model`

    @property
    def train_model(self) -> nn.Module:
        """What the training forward runs: the DDP wrapper (it synchronises the gradients), or the model."""
        return self.ddp if self.ddp is not None else self.model

    def checkpointed(self) -> Iterator[tuple[str, Any]]:
        """(checkpoint key, object with state_dict/load_state_dict) for every stateful part.

        The keys are the checkpoint format's: `scheduler` is the schedule and `grad_scaler` the
        precision's GradScaler, as in every checkpoint written so far."""
        yield "model", self.model
        yield "optimizer", self.optimizer
        yield "scheduler", self.schedule
        yield "early_stopping", self.early_stopping
        yield "grad_monitor", self.grad_monitor
        yield "grad_scaler", self.precision
        yield from self.extras.items()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
