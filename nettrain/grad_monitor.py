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
    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
        enabled: bool = True,
        vanishing_below: float = 1e-7,
        exploding_above: float = 1e2,
        ratio: float = 1e3,
        skip_nonfinite: bool = False,
        every_n_steps: int = 1,
    ):
        """every_n_steps: sample the gradients of every n-th step (the first of the epoch included);
        the mean over the sampled steps estimates the epoch's mean at 1/n of the cost.
        skip_nonfinite: leave out steps whose gradients overflowed (fp16: the GradScaler skips
        those updates too), still without a host sync."""
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: must be an integer >= 1")
        self.every_n_steps = every_n_steps
        self.calls = 0  # steps seen this epoch, sampled or not
        named = [(n, p) for n, p in named_parameters if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.enabled = enabled and bool(self.params)
        self.vanishing_below, self.exploding_above, self.ratio = vanishing_below, exploding_above, ratio
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.numels = torch.tensor([p.numel() for p in self.params], dtype=dtype, device=device)
        self.sums = torch.zeros(len(self.params), dtype=dtype, device=device)
        self.skip_nonfinite = skip_nonfinite
        self.finite_steps = torch.zeros((), dtype=dtype, device=device)  # counted on the device
        self.steps = 0

    def accumulate(self) -> None:
        """Call after loss.backward(): adds this step's sum |grad| per parameter tensor."""
        if self.tick():
            self.add_sums()

    def tick(self) -> bool:
        """Count a step; True when this step's gradients are sampled (host-side bookkeeping only:
        the CUDA graph step calls it, then replays the graph that holds add_sums)."""
        if not self.enabled:
            return False
        self.calls += 1
        if (self.calls - 1) % self.every_n_steps:
            return False
        self.steps += 1
        return True

    def add_sums(self) -> None:
        """Add this step's sum |grad| per parameter tensor to the epoch's sums (device work only)."""
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        if len(present) == len(grads):
            norms = torch.stack(self._abs_sums(present))
        else:  # a parameter without a gradient this step counts as zero
            idx = [i for i, g in enumerate(grads) if g is not None]
            norms = torch.zeros_like(self.sums)
            if idx:
                norms.index_add_(
                    0, torch.tensor(idx, device=norms.device), torch.stack(self._abs_sums(present)).to(norms.dtype)
                )
        if self.skip_nonfinite:
            finite = torch.isfinite(norms).all()
            norms = torch.where(finite, norms, torch.zeros_like(norms))
            self.finite_steps += finite
        self.sums += norms

    @staticmethod
    def _abs_sums(grads: list[torch.Tensor]) -> tuple[torch.Tensor, ...] | list[torch.Tensor]:
        """sum |g| per tensor: one fused multi-tensor kernel on CUDA; on CPU, where torch has no
        fused kernel for it, abs().sum() per tensor is the faster of the two (benchmarks/)."""
        if grads[0].device.type == "cuda":
            return torch._foreach_norm(grads, 1)
        return [g.abs().sum() for g in grads]

    def end_epoch(self) -> dict[str, float]:
        """Mean |grad| per parameter over the epoch's steps, as {'grad_mean/<name>': value}; resets."""
        if not self.enabled or self.steps == 0:
            return {}
        steps = self.finite_steps.clamp(min=1) if self.skip_nonfinite else self.steps
        means = (self.sums / steps / self.numels).tolist()  # the one host sync per epoch
        self.sums.zero_()
        self.finite_steps.zero_()
        self.steps = self.calls = 0
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
                warnings.append(
                    f"vanishing gradient in {name}: mean |grad| {value:.3g} "
                    f"< grad_monitor.vanishing_below={self.vanishing_below:g}"
                )
            elif value > self.exploding_above:
                warnings.append(
                    f"exploding gradient in {name}: mean |grad| {value:.3g} "
                    f"> grad_monitor.exploding_above={self.exploding_above:g}"
                )
            elif len(means) > 2 and median > 0 and value < median / self.ratio:
                warnings.append(
                    f"vanishing gradient in {name}: mean |grad| {value:.3g} is over "
                    f"{self.ratio:g}x below the median layer ({median:.3g})"
                )
            elif len(means) > 2 and median > 0 and value > median * self.ratio:
                warnings.append(
                    f"exploding gradient in {name}: mean |grad| {value:.3g} is over "
                    f"{self.ratio:g}x above the median layer ({median:.3g})"
                )
        return warnings

    def state_dict(self) -> dict:
        return {
            "sums": self.sums.clone(),
            "steps": self.steps,
            "calls": self.calls,
            "finite_steps": self.finite_steps.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.steps, self.calls = int(state["steps"]), int(state["calls"])
        self.finite_steps.copy_(state["finite_steps"])
