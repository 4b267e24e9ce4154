"""Watching gradient means to catch vanishing or exploding gradients.

The tutorial's check, `print(torch.abs(param.grad).mean())`, for every parameter tensor and
every step, without a host sync per step: the per-tensor sums of |grad| are accumulated on the
device with one fused multi-tensor op (torch._foreach_norm, ord=1) and read once per epoch.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

import torch


class GradientMonitor:
    def __init__(self, named_parameters: Iterable[tuple[str, torch.nn.Parameter]], enabled: bool = True,
                 vanishing_below: float = 1e-7, exploding_above: float = 1e2, ratio: float = 1e3):
        named = [(n, p) for n, p in named_parameters if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.enabled = enabled and bool(self.params)
        self.vanishing_below, self.exploding_above, self.ratio = vanishing_below, exploding_above, ratio
        device = self.params[0].device if self.params else torch.device("cpu")
        self.numels = torch.tensor([p.numel() for p in self.params], dtype=torch.float64, device=device)
        self.sums = torch.zeros(len(self.params), dtype=torch.float64, device=device)
        self.steps = 0

    def accumulate(self) -> None:
        """Call after loss.backward(): adds this step's sum |grad| per parameter tensor."""
        if not self.enabled:
            return
        grads = [p.grad for p in self.params]
        if all(g is not None for g in grads):
            self.sums += torch.stack(torch._foreach_norm(grads, 1)).to(torch.float64)
        else:  # a parameter without a gradient this step counts as zero
            idx = [i for i, g in enumerate(grads) if g is not None]
            if idx:
                norms = torch.stack(torch._foreach_norm([grads[i] for i in idx], 1)).to(torch.float64)
                self.sums.index_add_(0, torch.tensor(idx, device=self.sums.device), norms)
        self.steps += 1

    def end_epoch(self) -> dict[str, float]:
        """Mean |grad| per parameter over the epoch's steps, as {'grad_mean/<name>': value}; resets."""
        if not self.enabled or self.steps == 0:
            return {}
        means = (self.sums / self.steps / self.numels).tolist()  # the one host sync per epoch
        self.sums.zero_()
        self.steps = 0
        return {f"grad_mean/{n}": m for n, m in zip(self.names, means)}

    def check(self, means: dict[str, float]) -> list[str]:
        """Warnings for layers whose gradient mean is vanishing or exploding."""
        if not means:
            return []
        median = statistics.median(means.values())
        warnings = []
        for key, value in means.items():
            name = key.removeprefix("grad_mean/")
            if value < self.vanishing_below:
                warnings.append(f"vanishing gradient in {name}: mean |grad| {value:.3g} "
                                f"< grad_monitor.vanishing_below={self.vanishing_below:g}")
            elif value > self.exploding_above:
                warnings.append(f"exploding gradient in {name}: mean |grad| {value:.3g} "
                                f"> grad_monitor.exploding_above={self.exploding_above:g}")
            elif len(means) > 2 and median > 0 and value < median / self.ratio:
                warnings.append(f"vanishing gradient in {name}: mean |grad| {value:.3g} is over "
                                f"{self.ratio:g}x below the median layer ({median:.3g})")
            elif len(means) > 2 and median > 0 and value > median * self.ratio:
                warnings.append(f"exploding gradient in {name}: mean |grad| {value:.3g} is over "
                                f"{self.ratio:g}x above the median layer ({median:.3g})")
        return warnings

    def state_dict(self) -> dict:
        return {"sums": self.sums.clone(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.steps = int(state["steps"])
