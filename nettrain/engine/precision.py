"""Numeric precision of the training step: float32, or mixed precision with bf16 or fp16.

`trainer.precision`: `32` (default), `bf16` (autocast to bfloat16; no loss scaling needed) or
`fp16` (autocast to float16 with a GradScaler, so small gradients do not underflow). Works on
CUDA, and on CPU where torch supports it. Used by the loop as:

    with precision.autocast():
        loss = loss_fn(model(x), y)
    precision.backward(loss)
    precision.unscale_(optimizer)      # real gradients for the monitor and for clipping
    precision.step(optimizer)
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    def __init__(self, precision: str = "32", device: torch.device | str = "cpu"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: allowed: {', '.join(PRECISIONS)}")
        self.precision = precision
        self.device_type = torch.device(device).type
        self.dtype = PRECISIONS[precision]
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=precision == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()  # float32: no autocast at all, not even a disabled one
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
