"""Optimizers beyond torch.optim: the tutorial's hand-written update as a torch Optimizer."""

from __future__ import annotations

import torch


class ManualSGD(torch.optim.Optimizer):
    """The tutorial's update rule, `param.data -= lr * param.grad`, as a torch.optim.Optimizer.

    It computes exactly what the tutorial's loop computes (lr * grad, then a subtraction), so
    nettrain with optimizer=manual_sgd reproduces that loop bit for bit. torch.optim.SGD without
    momentum performs the same update as one fused multiply-add; the two agree bit for bit when
    lr * grad is exact (lr a power of two) and otherwise within float32 rounding.
    `weight_decay` adds weight_decay * param to the gradient first, as torch.optim.SGD does.
    """

    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr={lr}: must be > 0")
        if weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay}: must be >= 0")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad if weight_decay == 0 else param.grad + weight_decay * param
                param -= lr * grad
        return loss
