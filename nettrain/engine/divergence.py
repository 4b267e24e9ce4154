"""Divergence: a non-finite training loss stops the run, found without a host sync per step.

:class:`LossWatch` keeps each step's loss of the current epoch in a buffer on the training device
(one copy kernel per step, no sync) and is read once, at the epoch's existing sync point, where
it names the first step whose loss was NaN or infinite. :func:`finite_state` tells whether a
model's weights are all finite, so that no non-finite checkpoint is ever written. A diverged run's
summary is written by the recipe (nettrain/engine/recipe.py), status `diverged`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nettrain.engine import distributed

DIVERGED_EXIT = 3  # the exit status of a run stopped by a non-finite loss
REMEDIES = "lower lr, set regularization.grad_clip (e.g. 1.0), or check the data for NaN or huge values"


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; `epoch` (1-based) and `step` (1-based in it) say where."""

    def __init__(self, epoch: int, step: int, loss: float):
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(
            f"the training loss became {loss} at epoch {epoch}, step {step}: the run diverged. "
            f"Likely remedies: {REMEDIES}. The checkpoints hold the last finite state"
        )


class LossWatch:
    """Records the per-step losses of one epoch on the device; `first_nonfinite` reads them once."""

    def __init__(self, steps_per_epoch: int, device: torch.device | str):
        self.losses = torch.zeros(max(1, steps_per_epoch), dtype=torch.float32, device=device)
        self.first_step = 0  # the step the buffer's index 0 stands for (a mid-epoch resume)
        self.recorded = 0

    def start_epoch(self, first_step: int = 0) -> None:
        self.first_step, self.recorded = first_step, 0

    def record(self, step: int, loss: torch.Tensor) -> None:
        """`step`: 0-based in the epoch. A device copy, no sync."""
        self.losses[step - self.first_step].copy_(loss.detach().reshape(()), non_blocking=True)
        self.recorded = max(self.recorded, step - self.first_step + 1)

    def first_nonfinite(self) -> tuple[int, float] | None:
        """(0-based step in the epoch, its loss) of the first non-finite loss, else None (one sync)."""
        seen = self.losses[: self.recorded]
        bad = torch.nonzero(~torch.isfinite(seen))
        if bad.numel() == 0:
            return None
        index = int(bad[0, 0])
        return self.first_step + index, float(seen[index])

    def check(self, epoch: int) -> None:
        """Raise Diverged naming `epoch` (1-based) and the first step whose loss was non-finite on
        any rank: under torchrun every rank raises alike, also one whose own share stayed finite."""
        found = self.first_nonfinite()
        step = -distributed.agree(-found[0] if found else -_NONE)  # the earliest over the ranks
        if step == _NONE:
            return
        value = _NON_FINITE.index(str(found[1])) + 1 if found is not None and found[0] == step else 0
        raise Diverged(epoch, step + 1, float(_NON_FINITE[distributed.agree(value) - 1]))


_NONE = 2**62  # no non-finite step
_NON_FINITE = ("nan", "inf", "-inf")


def finite_state(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point tensor is free of NaN and infinity (one sync)."""
    checks = [torch.isfinite(t).all() for t in tensors if t.is_floating_point() or t.is_complex()]
    return bool(torch.stack(checks).all()) if checks else True
