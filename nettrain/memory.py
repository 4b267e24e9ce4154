"""The rule of thumb for training memory, made concrete for the model at hand.

Training holds, in float32 (4 bytes a value): the weights, their gradients, the optimizer's
per-parameter state (Adam: 2 values, SGD with momentum: 1, plain SGD: 0), and the activations
of one batch kept for the backward pass:

    memory ~ 4 bytes x (parameters x (2 + optimizer slots) + batch_size x activations per sample)

The estimate is printed at the start of a run and stored in summary.json (memory_estimate_mb);
on CUDA the measured peak (cuda_peak_memory_mb) sits beside it. The framework's own workspace
(cuDNN, the CUDA context) comes on top.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BYTES_PER_VALUE = 4


def optimizer_slots(optimizer: torch.optim.Optimizer) -> int:
    """Values of state the optimizer keeps per parameter value."""
    group = optimizer.param_groups[0]
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        return 3 if group.get("amsgrad") else 2
    if isinstance(optimizer, torch.optim.RMSprop):
        return 1 + (group.get("momentum", 0) > 0) + bool(group.get("centered"))
    if isinstance(optimizer, torch.optim.SGD):
        return int(group.get("momentum", 0) > 0)
    from nettrain.optim import ManualSGD

    return 0 if isinstance(optimizer, ManualSGD) else 2  # unknown optimizers: assume Adam-like


def activations_per_sample(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Values produced per sample by the input and every leaf module, from one forward pass."""
    total = [torch.Size(input_shape).numel()]
    hooks = [
        m.register_forward_hook(lambda mod, args, out: total.append(out[0].numel()))
        for m in model.modules()
        if not list(m.children())
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return sum(total)


def estimate_training_memory(
    model: nn.Module, optimizer: torch.optim.Optimizer, input_shape: Sequence[int], batch_size: int
) -> int:
    """Bytes, by the rule of thumb above."""
    params = sum(p.numel() for p in model.parameters())
    return BYTES_PER_VALUE * (
        params * (2 + optimizer_slots(optimizer)) + batch_size * activations_per_sample(model, input_shape)
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
