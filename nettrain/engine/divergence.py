"""Divergence: a non-finite training loss stops the run, found without a host sync per step.

:class:`LossWatch` adds each step's loss to the epoch's running sum, keeping every step's running
sum in a buffer on the training device (one add kernel per step, no sync). The sum is read once,
at the epoch's existing sync point; a non-finite one names the first step whose loss was NaN or
infinite (a sum stays non-finite from there on). :func:`finite_state` tells whether a
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
    """The epoch's training-loss sum, step by step, on the device; `first_nonfinite` reads it once.

    `total` is the sum so far (what the epoch's mean loss and a mid-epoch checkpoint are made of).
    Each step writes `total + its loss` into its own slot, in the order and precision of a running
    `total += loss`, so the buffer holds every step's running sum for one add per step. A NaN or
    infinite loss leaves every later sum non-finite, of its own kind (NaN, inf or -inf): the first
    non-finite slot is the step that diverged."""

    def __init__(self, steps_per_epoch: int, device: torch.device | str):
        self.sums = torch.zeros(max(1, steps_per_epoch), dtype=torch.float32, device=device)
        self.start_epoch()

    def start_epoch(self, first_step: int = 0, loss_sum: torch.Tensor | None = None) -> None:
        """A new epoch from `first_step` (0-based; > 0 when resuming mid-way), whose steps before it
        summed to `loss_sum` (the saved sum on a resume; None: zero)."""
        self.first_step, self.recorded = first_step, 0
        self.total = torch.zeros((), dtype=self.sums.dtype, device=self.sums.device) if loss_sum is None else loss_sum

    def record(self, step: int, loss: torch.Tensor) -> None:
        """`step`: 0-based in the epoch; `loss`: its loss sum (detached). One device add, no sync."""
        slot = step - self.first_step
        self.total = torch.add(self.total, loss, out=self.sums[slot])
        self.recorded = slot + 1

    def first_nonfinite(self) -> tuple[int, float] | None:
        """(0-based step in the epoch, its loss's kind: nan, inf or -inf) of the first non-finite
        loss, else None (one sync)."""
        seen = self.sums[: self.recorded]
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
