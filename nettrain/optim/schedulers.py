"""The learning-rate schedule: an optional linear warmup, chained with a torch scheduler.

A `conf/scheduler/*.yaml` option is a torch scheduler (`_target_`, `_partial_: true`) plus two
keys nettrain reads itself:
- `interval`: when the torch scheduler steps, `epoch` (after validation) or `step` (each batch);
- `warmup_ratio`: the fraction of all training steps (epochs x batches per epoch) over which
  the learning rate ramps linearly up to its base value (the tutorial's 5% is 0.05).

The warmup is torch's own LinearLR, stepped once per batch for the warmup steps. torch's
schedulers are chainable, so it composes with StepLR, CosineAnnealingLR or ReduceLROnPlateau
on the same optimizer; no learning-rate arithmetic is written here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import instantiate
from torch.optim.lr_scheduler import LinearLR, ReduceLROnPlateau


class LRSchedule:
    """Steps the warmup after each batch and the main scheduler at its interval."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, main: Any | None = None, interval: str = "epoch", warmup_steps: int = 0
    ):
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval={interval!r}: allowed: epoch, step")
        self.optimizer, self.main, self.interval, self.warmup_steps = optimizer, main, interval, warmup_steps
        # lr_k = base * (k + 1) / (warmup_steps + 1) for k = 0 .. warmup_steps
        self.warmup = (
            LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps)
            if warmup_steps > 0
            else None
        )

    def after_step(self) -> None:
        """Call after each optimizer.step()."""
        if self.warmup is not None and self.warmup.last_epoch < self.warmup.total_iters:  # as loaded on resume
            self.warmup.step()
        if self.main is not None and self.interval == "step":
            self.main.step()

    def after_epoch(self, val_loss: float) -> None:
        """Call after each epoch's validation; ReduceLROnPlateau gets the validation loss."""
        if self.main is None or self.interval != "epoch":
            return
        if isinstance(self.main, ReduceLROnPlateau):
            self.main.step(val_loss)
        else:
            self.main.step()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])  # a tensor under the CUDA graph step

    def state_dict(self) -> dict:
        return {
            "main": self.main.state_dict() if self.main is not None else None,
            "warmup": self.warmup.state_dict() if self.warmup is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.main is not None:
            t_max = getattr(self.main, "T_max", None)
            self.main.load_state_dict(state["main"])
            if t_max is not None and t_max != self.main.T_max:  # a resume with more epochs: T_max follows them
                self._stretch_cosine(t_max)
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])

    def _stretch_cosine(self, t_max: int) -> None:
        """Give the restored cosine a new T_max and set the learning rate a run planned with it
        would have now (the closed form), so the rest of the run follows the new curve; after
        the warmup, whose factor is then 1 (the optimizer's state is restored before this)."""
        main: Any = self.main
        main.T_max = t_max
        if self.warmup is not None and self.warmup.last_epoch < self.warmup.total_iters:
            return  # still warming up: the cosine's recursive form takes the new T_max from here
        k = main.last_epoch
        lrs = [main.eta_min + (base - main.eta_min) * (1 + math.cos(math.pi * k / t_max)) / 2 for base in main.base_lrs]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            if isinstance(group["lr"], torch.Tensor):  # the CUDA graph step's learning rate lives in a tensor
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        main._last_lr = lrs


def build_schedule(optimizer: torch.optim.Optimizer, scheduler: dict, steps_per_epoch: int, epochs: int) -> LRSchedule:
    """Build the schedule from a scheduler config node (a plain dict)."""
    kwargs = dict(scheduler)
    interval = kwargs.pop("interval", "epoch")
    warmup_ratio = kwargs.pop("warmup_ratio", 0.0)
    main = instantiate(kwargs, _partial_=True)(optimizer) if kwargs.get("_target_") else None
    warmup_steps = math.ceil(warmup_ratio * epochs * steps_per_epoch)
    return LRSchedule(optimizer, main, interval, warmup_steps)
