"""Early stopping: stop when the monitored metric has not improved for `patience` validations.

A run validates once per epoch, so by default patience counts epochs; with
trainer.val_every_n_steps it validates inside the epoch too, and each of those validations counts.
The tutorial's rule is patience 3 on the validation loss. The best value, epoch and step are tracked
even when stopping is disabled, for the best checkpoint and for restoring the best weights.
"""

from __future__ import annotations

import math


class EarlyStopping:
    def __init__(
        self,
        monitor: str = "val_loss",
        mode: str = "min",
        patience: int = 3,
        min_delta: float = 0.0,
        enabled: bool = True,
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode={mode!r}: allowed: min, max")
        self.monitor, self.mode, self.patience, self.min_delta, self.enabled = (
            monitor,
            mode,
            patience,
            min_delta,
            enabled,
        )
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.best_step: int | None = None  # the optimizer steps done at the best validation
        self.bad_epochs = 0  # validations without improvement (one per epoch unless validating by steps)
        self.should_stop = False

    def update(self, value: float, epoch: int, step: int | None = None) -> bool:
        """Record a validation's value (in `epoch`, after `step` optimizer steps); True when it is a new best."""
        if self.mode == "min":
            improved = value < self.best - self.min_delta
        else:
            improved = value > self.best + self.min_delta
        if improved:
            self.best, self.best_epoch, self.best_step, self.bad_epochs = value, epoch, step, 0
        else:
            self.bad_epochs += 1
            self.should_stop = self.enabled and self.bad_epochs >= self.patience
        return improved

    def reason(self, counted: str = "epochs") -> str:
        """Why the run stopped, for the console (`counted`: what patience counted, epochs or validations)."""
        return (
            f"early stopping: {self.monitor} has not improved for {self.patience} {counted} "
            f"(best {self.best:.4f} at epoch {self.best_epoch})"
        )

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "bad_epochs": self.bad_epochs,
            "should_stop": self.should_stop,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.best_step = state.get("best_step")  # absent from a checkpoint older than step-level validation
        self.bad_epochs = int(state["bad_epochs"])
        self.should_stop = bool(state["should_stop"])
