"""Watching gradient means to catch vanishing or exploding gradients.

The tutorial's check, `print(torch.abs(param.grad).mean())`, for every parameter tensor and
every step, without a host sync per step: the per-tensor sums of |grad| and gradient norms are
accumulated on the device (torch._foreach_norm, ord=1 and 2) and read once per epoch. The
monitor also decides which steps are sampled, for the rest of the diagnosis (nettrain/insight/diagnosis.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class GradientMonitor:
    def __init__(
        self,
        named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
        enabled: bool = True,
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
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.numels = torch.tensor([p.numel() for p in self.params], dtype=dtype, device=device)
        # one buffer, so that a sampled step adds to both sums at once: row 0 sums |grad| per
        # tensor, row 1 sums ||grad|| per tensor
        self.stats = torch.zeros(2, len(self.params), dtype=dtype, device=device)
        self.sums, self.norm_sums = self.stats[0], self.stats[1]
        self.skip_nonfinite = skip_nonfinite
        self.finite_steps = torch.zeros((), dtype=dtype, device=device)  # counted on the device
        self.steps = 0
        # called when sampling_next() or sampled_last() may have changed: after a counted step
        # (also one whose update the GradScaler skips) that changes either, each epoch's reset
        # and a restore (nettrain/insight/diagnosis.py)
        self.on_count: list[Callable[[], None]] = []

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
        if self.calls % self.every_n_steps < 3 or self.every_n_steps < 3:
            self._counted()  # sampling_next() turns on at 0, both change at 1, sampled_last() turns off at 2
        if (self.calls - 1) % self.every_n_steps:
            return False
        self.steps += 1
        return True

    def _counted(self) -> None:
        for listener in self.on_count:
            listener()

    def add_sums(self) -> None:
        """Add this step's sum |grad| and gradient norm per parameter tensor to the epoch's sums
        (device work only: one stack and one add into the sums, whatever the number of tensors)."""
        grads = [p.grad for p in self.params]
        present = [g for g in grads if g is not None]
        n = len(self.params)
        if len(present) == n:
            stats = torch.stack([*self._abs_sums(present), *torch._foreach_norm(present, 2)]).view(2, n)
        else:  # a parameter without a gradient this step counts as zero
            stats = torch.zeros(2, n, dtype=self.stats.dtype, device=self.stats.device)
            if present:
                found = torch.stack([*self._abs_sums(present), *torch._foreach_norm(present, 2)])
                idx = torch.tensor([i for i, g in enumerate(grads) if g is not None], device=stats.device)
                stats.index_copy_(1, idx, found.view(2, -1).to(stats.dtype))
        if self.skip_nonfinite:
            finite = torch.isfinite(stats).all()
            stats = torch.where(finite, stats, 0.0)
            self.finite_steps += finite
        self.stats.add_(stats)  # float32 statistics are added exactly, in the sums' float64

    @staticmethod
    def _abs_sums(grads: list[torch.Tensor]) -> tuple[torch.Tensor, ...] | list[torch.Tensor]:
        """sum |g| per tensor: one fused multi-tensor kernel on CUDA; on CPU, where torch has no
        fused kernel for it, abs().sum() per tensor is the faster of the two (benchmarks/)."""
        if grads[0].device.type == "cuda":
            return list(torch._foreach_norm(grads, 1))
        return [g.abs().sum() for g in grads]

    def sampling_next(self) -> bool:
        """Whether the step about to run (its forward pass) is one the monitor samples."""
        return self.enabled and self.calls % self.every_n_steps == 0

    def sampled_last(self) -> bool:
        """Whether the step whose gradients were just accumulated was sampled (for its update)."""
        return self.enabled and self.calls > 0 and (self.calls - 1) % self.every_n_steps == 0

    def end_epoch(self) -> dict[str, float]:
        """Per parameter over the epoch's sampled steps: {'grad_mean/<name>': mean |grad|,
        'grad_norm/<name>': mean ||grad||}; resets."""
        if not self.enabled or self.steps == 0:
            return {}
        steps = self.finite_steps.clamp(min=1) if self.skip_nonfinite else self.steps
        stats = torch.cat([self.sums / self.numels, self.norm_sums]) / steps
        values = stats.tolist()  # the one host sync per epoch
        self.stats.zero_()
        self.finite_steps.zero_()
        self.steps = self.calls = 0
        self._counted()
        n = len(self.names)
        return {
            **{f"grad_mean/{name}": m for name, m in zip(self.names, values[:n])},
            **{f"grad_norm/{name}": v for name, v in zip(self.names, values[n:])},
        }

    def state_dict(self) -> dict:
        return {
            "sums": self.sums.clone(),
            "norm_sums": self.norm_sums.clone(),
            "steps": self.steps,
            "calls": self.calls,
            "finite_steps": self.finite_steps.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        if "norm_sums" in state:  # checkpoints from before gradient norms were recorded have none
            self.norm_sums.copy_(state["norm_sums"])
        self.steps, self.calls = int(state["steps"]), int(state["calls"])
        self.finite_steps.copy_(state["finite_steps"])
        self._counted()
