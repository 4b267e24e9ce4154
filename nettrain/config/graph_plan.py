"""Whether the training step can be one CUDA graph (`trainer.cuda_graph` = auto | on | off),
decided from the settings alone, without torch.

The config check (nettrain/config/schema.py) refuses `on` with a setting that cannot be captured
before anything is built, and the builder (nettrain/engine/build.py) decides again for the device it
got; nettrain/engine/cuda_graph.py captures the step when the plan says so. Being torch-free keeps
the decision testable on any machine and config errors fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SETTINGS = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
# The optimizers whose step runs inside a graph, and how: `capturable` (its step keeps the step
# count and the learning rate on the device), `fused` (the fused kernel takes a device lr), or
# plain tensor arithmetic that captures as it is (ManualSGD's `param -= lr * grad`).
CAPTURABLE_OPTIMIZERS = {
    "torch.optim.Adam": "capturable",
    "torch.optim.AdamW": "capturable",
    "torch.optim.RMSprop": "capturable",
    "torch.optim.SGD": "fused",
    "nettrain.optim.ManualSGD": "tensor",
}


@dataclass
class Plan:
    """Whether the step is captured; if not, each feature that stops it, as 'key=value: why'."""

    setting: str
    capture: bool
    fallbacks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how a captured step is set up (second graph, ...)

    def message(self) -> str | None:
        """What to tell the user: why `auto` uses the eager step (None when there is nothing to say)."""
        if self.capture or not self.fallbacks:
            return None
        return f"trainer.cuda_graph={self.setting}: the eager step is used: " + "; ".join(self.fallbacks)

    def refusal(self) -> list[str]:
        """The config problems of `on` when the step cannot be captured (empty otherwise)."""
        if self.setting != "on":
            return []
        return [
            f"trainer.cuda_graph='on': cannot capture the training step: {why}; use "
            "trainer.cuda_graph=auto to fall back to the eager step, or off"
            for why in self.fallbacks
        ]


def compile_mode(value: Any) -> str | None:
    """`trainer.compile` -> the torch.compile mode, or None for no compilation."""
    if value is True:
        return "default"
    if value is False or value is None:
        return None
    return str(value)


def plan(
    setting: str,
    *,
    device: str,
    precision: str = "32",
    in_memory: bool = True,
    optimizer: str | None = None,
    optimizer_options: dict | None = None,
    fused_optimizer: str = "auto",
    compile: Any = False,
    train_size: int | None = None,
    batch_size: int | None = None,
    world_size: int = 1,
    eager_only: list[str] | None = None,
) -> Plan:
    """Decide whether the training step can be one CUDA graph, from the settings alone.

    `device` is the device's name (`cuda`, `cuda:1`, `cpu`, `mps`) or `auto` when it is not known
    yet (config validation): then only what holds on any device is judged. A CPU or MPS run under
    `auto` is eager without a word; everything else that blocks capture is named.
    """
    if setting == "off":
        return Plan(setting, False)
    device_type = device.split(":")[0]
    fallbacks: list[str] = []
    if device_type not in ("cuda", "auto"):
        if setting == "auto":
            return Plan(setting, False)  # CUDA graphs are a CUDA feature; nothing to report
        fallbacks.append(f"device={device!r}: CUDA graphs need a CUDA device")
    if precision == "fp16":
        fallbacks.append(
            "trainer.precision='fp16': its GradScaler checks the gradients for inf/NaN "
            "on the host every step (a sync a graph cannot hold); bf16 needs no scaler "
            "and is captured"
        )
    if not in_memory:
        fallbacks.append(
            "data.in_memory=false: batches come from a DataLoader on the host, while the "
            "graph gathers each batch from the tensors held on the device"
        )
    fallbacks += eager_only or []  # settings the caller knows run outside a captured step
    if world_size > 1:
        fallbacks.append(
            f"distributed training ({world_size} processes): DistributedDataParallel all-reduces the "
            "gradients from hooks outside a captured step"
        )
    fallbacks += _optimizer_fallbacks(optimizer, optimizer_options or {}, fused_optimizer)
    mode = compile_mode(compile)
    if mode in ("reduce-overhead", "max-autotune"):
        fallbacks.append(
            f"trainer.compile={mode!r}: torch.compile's own CUDA graphs cannot nest inside "
            "the step's graph; use trainer.compile=default (or true) with the graph step"
        )
    notes = []
    if train_size and batch_size and train_size % batch_size:
        notes.append(f"the last batch has {train_size % batch_size} samples: it gets a graph of its own")
    return Plan(setting, not fallbacks, fallbacks, notes)


def _optimizer_fallbacks(target: str | None, options: dict, fused_optimizer: str) -> list[str]:
    if target is None:
        return []
    how = CAPTURABLE_OPTIMIZERS.get(target)
    if how is None:
        return [
            f"optimizer._target_={target!r}: its step is not known to be capturable; captured: "
            + ", ".join(CAPTURABLE_OPTIMIZERS)
        ]
    if how == "fused" and fused_optimizer == "off":
        why = "its foreach step reads a tensor learning rate on the host; the fused kernel (auto or on) takes it"
        return [f"optimizer._target_={target!r} with trainer.fused_optimizer='off': {why}"]
    if how == "fused" and (options.get("dampening") or 0) != 0:
        why = "SGD's first momentum step ignores dampening, which a graph captured after it cannot reproduce"
        return [f"optimizer.dampening={options['dampening']}: {why}"]
    return []


def optimizer_kwargs(target: str) -> dict[str, bool]:
    """Extra constructor arguments that make the optimizer's step capturable."""
    return {"capturable": True} if CAPTURABLE_OPTIMIZERS.get(target) == "capturable" else {}
