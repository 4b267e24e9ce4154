"""Exponential moving average of the weights (`trainer.ema_decay`).

After every optimizer step, each floating-point tensor of the model's state (parameters and
float buffers such as BatchNorm's running statistics) moves towards the model's:

    ema = decay * ema + (1 - decay) * weight        (one fused torch._foreach_lerp_, no host sync)

Integer buffers (BatchNorm's num_batches_tracked) are copied. The average starts from the
model's weights when training starts. Validation, the best checkpoint, restore_best and the
test use the averaged weights (`swapped_in`); training continues on the model's own weights.
The EMA lives in TrainState.extras["ema"], so checkpoints carry it and resume stays exact; a
checkpoint's `ema` entry is what `inference_weights` picks for eval, predict and export.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class EMA:
    """An exponential moving average of `model`'s state, updated by `update()` after each step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"trainer.ema_decay={decay}: must be in (0, 1), e.g. 0.999")
        self.model, self.decay = model, decay
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._pairs()
        self.updates = 0

    def _pairs(self) -> None:
        own = self.model.state_dict()
        float_keys = [k for k, v in self.weights.items() if v.is_floating_point()]
        self._ema_float = [self.weights[k] for k in float_keys]
        self._model_float = [own[k] for k in float_keys]
        self._ema_other = [self.weights[k] for k in self.weights if k not in float_keys]
        self._model_other = [own[k] for k in self.weights if k not in float_keys]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._ema_float, [t.detach() for t in self._model_float], 1.0 - self.decay)
        for ema, current in zip(self._ema_other, self._model_other):
            ema.copy_(current)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[nn.Module]:
        """The model with the averaged weights for the duration of the block, then its own again."""
        own = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.weights)
        try:
            yield self.model
        finally:
            self.model.load_state_dict(own)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state["weights"].items():
            self.weights[key].copy_(value)
        self.updates = int(state["updates"])


def inference_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to evaluate, predict or export from a checkpoint: the EMA's when the run kept
    one, else the model's."""
    ema = checkpoint.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("weights"), dict):
        return ema["weights"]
    return checkpoint["model"]
