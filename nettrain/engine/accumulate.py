"""Gradient accumulation (`trainer.accumulate_steps`): several batches, one optimizer step.

The epoch's batches are taken in groups of `steps`; the last group may be shorter, and its last
batch may be partial. Each batch's mean loss is weighted by its share of the group's samples,

    loss_i * n_i / N_group        (n_i samples in batch i, N_group samples in its group)

so the gradients summed over a group equal those of one batch of the whole group, the last
partial group included (dividing by `steps` instead, as many tools do, over-weights a short
group's samples). The optimizer, the scheduler, gradient clipping, the gradient monitor and
the EMA act once per group, so the scheduler and warmup count optimizer steps.

Resume is exact mid-group: a checkpoint taken inside a group carries the partial gradient sums
(see `state_dict`), and the resumed run adds the next batches to them in the same order.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def optimizer_steps(batches_per_epoch: int, steps: int) -> int:
    """Optimizer steps per epoch: one per group of `steps` batches, the last group may be short."""
    return math.ceil(batches_per_epoch / steps)


class Accumulation:
    """Which batch of the epoch comes next, and its group's size: plain Python ints, no host sync."""

    def __init__(self, model: nn.Module, steps: int, num_samples: int, batch_size: int):
        if steps < 1:
            raise ValueError(f"trainer.accumulate_steps={steps}: must be an integer >= 1")
        self.params = list(model.parameters())
        self.steps, self.n, self.batch_size = steps, num_samples, batch_size
        self.batches_per_epoch = math.ceil(num_samples / batch_size)
        self.index = 0  # the next batch's index in its epoch

    def begin(self) -> tuple[bool, int]:
        """For the next batch: (whether it opens a group, the number of samples in its group)."""
        first = self.index - self.index % self.steps
        end = min(first + self.steps, self.batches_per_epoch)
        samples = min(self.n, end * self.batch_size) - first * self.batch_size
        return self.index == first, samples

    def end(self) -> bool:
        """After the batch's backward: True when it closed its group (time for the optimizer step)."""
        self.index += 1
        closes = self.index % self.steps == 0 or self.index == self.batches_per_epoch
        if self.index == self.batches_per_epoch:
            self.index = 0
        return closes

    def state_dict(self) -> dict[str, Any]:
        """The position and, inside a group, the partial gradient sums."""
        inside = self.index % self.steps != 0
        grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params] if inside else []
        return {"index": self.index, "grads": grads}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])
        for param, grad in zip(self.params, state["grads"]):
            param.grad = None if grad is None else grad.to(param.device, param.dtype).clone()
