"""Gradient diagnosis: per-layer statistics on sampled steps, and a verdict with advice each epoch.

On the steps the gradient monitor samples (grad_monitor.every_n_steps), on the device and
without a host sync per step:

- `grad_mean/<param>`: mean |grad| (the gradient monitor), `grad_norm/<param>`: ||grad||;
- `update_ratio/<param>`: ||w_after - w_before|| / ||w_before|| of the optimizer step
  (torch.optim step hooks: the weights are copied before a sampled step);
- `dead_units/<layer>`: for the layer feeding a ReLU-family activation (relu, leaky_relu, gelu,
  silu, elu, relu6), the fraction of its units whose activation was never positive on any
  sample of the epoch's sampled steps (forward hooks; a conv channel is one unit).

`diagnose` turns an epoch's row into a verdict, `healthy`, `vanishing`, `exploding` or
`dead units`, with the layers named and what to change, for example:

    vanishing: fc1's gradients are 2e-06 of fc8's: try model.init=kaiming_normal,
    model.norm=batchnorm, model.activation=relu or gelu, or fewer layers
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import torch
from torch import nn

from nettrain.insight.figures import pyplot, save_png

RELU_FAMILY = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.ReLU6)
HEALTHY, VANISHING, EXPLODING, DEAD = "healthy", "vanishing", "exploding", "dead units"
OVERFITTING = "overfitting"  # the run's verdict (not an epoch's): validation worse from the first epoch


def _feeding_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name of the Linear/Conv layer that feeds it, activation module) for each ReLU-family module."""
    found: list[tuple[str, nn.Module]] = []
    last = None
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            last = name
        elif isinstance(module, RELU_FAMILY):
            found.append((last or name, module))
    return found


def _removed(handles: list[Any]) -> list[Any]:
    """Remove each hook handle; returns the empty list that replaces them."""
    for handle in handles:
        handle.remove()
    return []


class TrainingDiagnostics:
    """Update ratios and dead units on sampled steps; attach once, read once per epoch.

    `in_forward()` tells, during a forward pass, whether this step will be sampled, and
    `after_backward()`, at the optimizer step, whether it was (the gradient monitor decides,
    so all statistics come from the same steps)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        in_forward: Callable[[], bool],
        after_backward: Callable[[], bool] | None = None,
        enabled: bool = True,
        activations: bool = True,
    ):
        """activations=False: no forward hooks, so no dead units (a compiled model, whose
        graph would be recompiled each time a hook comes or goes)."""
        self.in_forward, self.after_backward, self.enabled = in_forward, after_backward or in_forward, enabled
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params: list[torch.Tensor] = [p for _, p in named]
        device = self.params[0].device if self.params else torch.device("cpu")
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.ratio_sums = torch.zeros(len(self.params), dtype=dtype, device=device)
        self.ratio_steps = 0
        self._before: list[torch.Tensor] = []  # the weights before a sampled step
        # kept between sampled steps on a CPU, where a fresh copy costs page faults each time; on
        # an accelerator the caching allocator makes the copy cheap, and keeping it would add a
        # copy of the weights to the memory held while activations peak
        self._keep_copy = device.type == "cpu"
        self._size: torch.Tensor | None = None  # their norms, while a sampled step is under way
        self.layers = _feeding_layers(model) if activations else []
        self.fired: dict[str, torch.Tensor] = {}
        self.optimizer = optimizer
        self.active = enabled and bool(self.params)  # False: no hooks ever, empty rows
        self._step_handles: list[Any] = []
        self._forward_handles: list[Any] = []
        self._hooks = [(act, self._activity(layer)) for layer, act in self.layers]
        if self.active:
            self.follow_sampling()

    # -- hooks ------------------------------------------------------------------------------
    def follow_sampling(self) -> None:
        """Hooks only around the sampled steps: forward hooks while the next step's forward is
        sampled (a module with a hook takes torch's slower call path on every forward, about 3%
        of a small MLP's step on a CPU), and the optimizer's step hooks while the step just
        counted is (each hooked step costs torch's hook dispatch and two calls, about 0.5% of
        that step). Called by the gradient monitor each time it counts a step
        (GradientMonitor.on_count: also a step whose update the GradScaler skips), and after each
        epoch's reset and a restore (after a hooked optimizer step: the forward hooks). The hooks still ask
        in_forward() and after_backward(), so one left on for a step that is not sampled records
        nothing."""
        if not self.active:
            return
        self._follow_forward()
        step = self.after_backward()
        if step and not self._step_handles:
            self._step_handles = [
                self.optimizer.register_step_pre_hook(self._pre_step),
                self.optimizer.register_step_post_hook(self._post_step),
            ]
        elif not step and self._step_handles:
            self._step_handles = _removed(self._step_handles)

    def _follow_forward(self) -> None:
        wanted = bool(self._hooks) and self.in_forward()
        if wanted and not self._forward_handles:
            self._forward_handles = [act.register_forward_hook(hook) for act, hook in self._hooks]
        elif not wanted and self._forward_handles:
            self._forward_handles = _removed(self._forward_handles)

    def _pre_step(self, optimizer, args, kwargs) -> None:
        if not self.after_backward():
            return
        with torch.no_grad():  # the parameters themselves: no detached views to make per step
            if self._before:
                torch._foreach_copy_(self._before, self.params)
            else:
                self._before = [p.detach().clone() for p in self.params]
            size = torch.stack(torch._foreach_norm(self._before, 2))
            self._size = size.to(self.ratio_sums.dtype).clamp_min_(1e-30)

    def _post_step(self, optimizer, args, kwargs) -> None:
        if self._size is not None:
            with torch.no_grad():
                torch._foreach_sub_(self._before, self.params)  # -(w_after - w_before)
                moved = torch.stack(torch._foreach_norm(self._before, 2))
                self.ratio_sums.add_(moved / self._size)  # float32 norms over float64 sizes: a float64 ratio
            self.ratio_steps += 1
            self._size = None
            if not self._keep_copy:
                self._before = []
        self._follow_forward()  # not the step hooks: torch is iterating over them now

    def _activity(self, layer: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not module.training or not isinstance(out, torch.Tensor) or out.dim() < 2:
                return
            if not self.in_forward():
                return
            with torch.no_grad():
                # a unit fired when its largest activation over the batch (and, for a conv
                # channel, over its positions) is positive: one reduction, no boolean copy
                dims = (0, *range(2, out.dim()))
                positive = out.amax(dim=dims) > 0
                seen = self.fired.get(layer)
                if seen is None or seen.shape != positive.shape:
                    self.fired[layer] = positive
                else:
                    seen.logical_or_(positive)

        return hook

    # -- per epoch ----------------------------------------------------------------------------
    def end_epoch(self) -> dict[str, float]:
        """{'update_ratio/<param>': mean over sampled steps, 'dead_units/<layer>': fraction}; resets."""
        row: dict[str, float] = {}
        if not self.enabled:
            return row
        self.follow_sampling()  # the gradient monitor starts a new epoch: its first step is sampled
        parts = []
        if self.ratio_steps:
            parts.append((self.ratio_sums / self.ratio_steps).float())
        dead_layers = list(self.fired)
        parts += [1 - self.fired[layer].float().mean().reshape(1) for layer in dead_layers]
        if not parts:
            return row
        values = torch.cat([p.reshape(-1).float() for p in parts]).tolist()  # the one host sync
        if self.ratio_steps:
            row.update({f"update_ratio/{n}": v for n, v in zip(self.names, values[: len(self.names)])})
            values = values[len(self.names) :]
        row.update({f"dead_units/{layer}": v for layer, v in zip(dead_layers, values)})
        self.ratio_sums.zero_()
        self.ratio_steps = 0
        self.fired = {}
        return row

    def remove(self) -> None:
        _removed(self._step_handles + self._forward_handles)
        self.active, self._step_handles, self._forward_handles, self._hooks = False, [], [], []

    def state_dict(self) -> dict[str, Any]:
        return {
            "ratio_sums": self.ratio_sums.clone(),
            "ratio_steps": self.ratio_steps,
            "fired": {k: v.clone() for k, v in self.fired.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratio_sums.copy_(state["ratio_sums"])
        self.ratio_steps = int(state["ratio_steps"])
        # copies: the hook adds to them in place
        self.fired = {k: v.to(self.ratio_sums.device, copy=True) for k, v in state.get("fired", {}).items()}
        self.follow_sampling()


# -- the verdict ------------------------------------------------------------------------------


@dataclass
class Thresholds:
    spread: float = 1e3  # vanishing: a weight layer's mean |grad| this many times below the largest
    vanishing_below: float = 1e-7  # vanishing: a mean |grad| below this
    exploding_above: float = 1e2  # exploding: a mean |grad| above this
    update_ratio_above: float = 0.1  # exploding: a step moves a weight tensor by more than this fraction
    norm_growth: float = 10.0  # exploding: the total gradient norm grew this many times in one epoch
    dead_fraction: float = 0.5  # dead units: this fraction of a layer's units never fired


@dataclass
class Diagnosis:
    epoch: int
    verdict: str
    findings: list[str] = field(default_factory=list)  # one line per problem, with advice

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "verdict": self.verdict, "findings": list(self.findings)}


def _stat(row: dict[str, Any], prefix: str) -> dict[str, float]:
    return {k[len(prefix) + 1 :]: v for k, v in row.items() if k.startswith(prefix + "/") and v is not None}


def _layer(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else param


def total_norm(row: dict[str, Any]) -> float | None:
    norms = _stat(row, "grad_norm")
    return math.sqrt(sum(v * v for v in norms.values())) if norms else None


def diagnose(
    row: dict[str, Any], previous: dict[str, Any] | None, weights: list[str], lr: float, t: Thresholds | None = None
) -> Diagnosis:
    """The verdict for one epoch's metrics row (with previous: the epoch before, for growth).

    weights: the weight matrices and conv kernels, input side first (biases and norm scales
    are left out of the layer comparisons)."""
    t = t or Thresholds()
    means, ratios, dead = _stat(row, "grad_mean"), _stat(row, "update_ratio"), _stat(row, "dead_units")
    found: dict[str, list[str]] = {EXPLODING: [], VANISHING: [], DEAD: []}
    clip = "regularization.grad_clip=1.0"

    bad = [n for stat in (means, _stat(row, "grad_norm")) for n, v in stat.items() if not math.isfinite(v)]
    if bad or not math.isfinite(row.get("train_loss", 0.0)):
        where = ", ".join(sorted({_layer(n) for n in bad})) or "the loss"
        found[EXPLODING].append(
            f"gradients became inf/NaN in {where}: lower lr (now {lr:g}, try lr={lr / 10:g}) or set {clip}"
        )
    norm, before = total_norm(row), total_norm(previous) if previous else None
    if norm and before and math.isfinite(norm) and norm > t.norm_growth * before:
        found[EXPLODING].append(
            f"gradient norm grew {norm / before:.0f}x in one epoch ({before:.3g} -> "
            f"{norm:.3g}): lower lr (now {lr:g}) or set {clip}"
        )
    fast = {n: v for n, v in ratios.items() if n in weights and math.isfinite(v) and v > t.update_ratio_above}
    if fast:
        name, value = max(fast.items(), key=lambda kv: kv[1])
        found[EXPLODING].append(
            f"each step moves {_layer(name)}'s weights by {value:.0%} of their size (healthy: "
            f"about 0.1%): lower lr (now {lr:g}, try lr={lr / 10:g}) or set {clip}"
        )
    big = [n for n in weights if means.get(n, 0) > t.exploding_above]
    if big:
        found[EXPLODING].append(
            f"mean |grad| above {t.exploding_above:g} in {', '.join(map(_layer, big))}: lower lr or set {clip}"
        )

    layers = [(n, means[n]) for n in weights if n in means and math.isfinite(means[n])]
    if len(layers) >= 2 and not found[EXPLODING]:
        low, high = min(layers, key=lambda kv: kv[1]), max(layers, key=lambda kv: kv[1])
        advice = "try model.init=kaiming_normal, model.norm=batchnorm, model.activation=relu or gelu, or fewer layers"
        if high[1] > 0 and low[1] < high[1] / t.spread:
            found[VANISHING].append(
                f"{_layer(low[0])}'s gradients are {low[1] / high[1]:.0e} of {_layer(high[0])}'s: {advice}"
            )
        elif low[1] < t.vanishing_below:
            found[VANISHING].append(f"{_layer(low[0])}'s mean |grad| is {low[1]:.1e}: {advice}")
    dying = {n: v for n, v in dead.items() if v >= t.dead_fraction}
    if dying:
        names = ", ".join(f"{n} ({v:.0%})" for n, v in dying.items())
        found[DEAD].append(
            f"units that never fired this epoch: {names}: try model.activation=leaky_relu or gelu, "
            f"a lower lr (now {lr:g}), or model.init=kaiming_normal"
        )
    verdict = next((v for v in (EXPLODING, VANISHING, DEAD) if found[v]), HEALTHY)
    return Diagnosis(int(row.get("epoch", 0)), verdict, [f"{v}: {line}" for v in found for line in found[v]])


def weight_names(model: nn.Module) -> list[str]:
    """Weight matrices and conv kernels, in the model's order (input side first)."""
    return [n for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]


def summary_of(diagnoses: list[Diagnosis], validation: str | None = None) -> dict[str, Any]:
    """For summary.json: the last epoch's verdict, and every epoch's; with `validation` (a run
    whose validation got worse from its first epoch) the verdict of an otherwise healthy run is
    `overfitting`, and the finding is listed with the last epoch's."""
    last = diagnoses[-1] if diagnoses else None
    verdict = last.verdict if last else None
    if validation and verdict in (HEALTHY, None):
        verdict = OVERFITTING
    return {
        "verdict": verdict,
        "findings": (list(last.findings) if last else []) + ([f"{OVERFITTING}: {validation}"] if validation else []),
        "epochs": [d.to_dict() for d in diagnoses],
    }


def worse_from_the_start(history: list[dict[str, Any]], min_epochs: int = 3) -> str | None:
    """What to say when validation got worse from the first epoch on: every later epoch's val_loss
    above the first's (at least `min_epochs` epochs) while the training loss fell. The model learns
    the training data and nothing that carries over to new data, from the start: an lr too high
    for the model, or a model that overfits at once (too large for the data). None otherwise."""
    rows = [r for r in history if _finite(r.get("val_loss")) and _finite(r.get("train_loss"))]
    if len(rows) < min_epochs or len(rows) != len(history):
        return None
    first, last = rows[0], rows[-1]
    if not all(r["val_loss"] > first["val_loss"] for r in rows[1:]) or not last["train_loss"] < first["train_loss"]:
        return None
    lr = first.get("lr")
    lower = f"a lower lr (now {lr:g}, try lr={lr / 10:g})" if _finite(lr) and lr > 0 else "a lower lr"
    return (
        f"validation got worse from the first epoch: val_loss {first['val_loss']:.4g} at epoch "
        f"{int(first['epoch'])}, above it at every later epoch ({last['val_loss']:.4g} at epoch {int(last['epoch'])}), "
        f"while train_loss fell ({first['train_loss']:.4g} -> {last['train_loss']:.4g}): likely an lr too high "
        f"or overfitting from the start; try {lower}, a smaller model, regularization.weight_decay or "
        "regularization.dropout, or more data"
    )


def _finite(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the plot ---------------------------------------------------------------------------------

PANELS = (
    ("grad_mean", "mean |grad|", True),
    ("grad_norm", "gradient norm", True),
    ("update_ratio", "update / weight  ||dw|| / ||w||", True),
    ("dead_units", "dead units (fraction)", False),
)


def plot_gradients(rows: list[dict[str, Any]], path: Path) -> bool:
    """plots/gradients.png: each per-layer statistic over the epochs; False when there is nothing to plot."""
    panels = (
        [(prefix, title, log) for prefix, title, log in PANELS if any(k.startswith(prefix + "/") for k in rows[0])]
        if rows
        else []
    )
    if not panels:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
    epochs = [r["epoch"] for r in rows]
    for ax, (prefix, title, log) in zip(axes[:, 0], panels):
        for key in [k for k in rows[0] if k.startswith(prefix + "/")]:
            values = [r.get(key) for r in rows]
            values = [
                v if isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not log) else float("nan")
                for v in values
            ]
            ax.plot(epochs, values, marker="o", markersize=3, label=key[len(prefix) + 1 :])
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()  # fits the panels to the figure: saved without a second layout pass to crop it (5-25% faster)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path, crop=False)
    plt.close(fig)
    return True


class Diagnostician:
    """What the loop calls once per epoch: adds the probe's statistics to the epoch's row and
    returns the verdict. Checkpointed (TrainState.extras) through the probe's state."""

    def __init__(self, probe: TrainingDiagnostics, weights: list[str], thresholds: Thresholds | None = None):
        self.probe, self.weights, self.thresholds = probe, weights, thresholds or Thresholds()

    def end_epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> Diagnosis:
        """history: the rows of the epochs before this one."""
        row.update(self.probe.end_epoch())
        previous = history[-1] if history else None
        return diagnose(row, previous, self.weights, float(row.get("lr", 0.0)), self.thresholds)

    def summary(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """For summary.json: the last epoch's verdict and every epoch's, from the metrics rows, and
        whether validation got worse from the first epoch (`worse_from_the_start`)."""
        return summary_of(diagnoses(history, self.weights, self.thresholds), worse_from_the_start(history))

    def state_dict(self) -> dict[str, Any]:
        return self.probe.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe.load_state_dict(state)


def diagnoses(
    history: list[dict[str, Any]], weights: list[str], thresholds: Thresholds | None = None
) -> list[Diagnosis]:
    """Every epoch's verdict, recomputed from the metrics rows (also after a resume)."""
    return [
        diagnose(row, history[i - 1] if i else None, weights, float(row.get("lr", 0.0)), thresholds)
        for i, row in enumerate(history)
    ]
