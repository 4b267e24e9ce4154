"""Fine-tuning: frozen parameters, per-prefix learning rates, and no weight decay on norms and biases.

A *prefix* names parameters by their place in the model, as `model.named_parameters()` spells
them, and matches at a dot: `fc1` is `fc1.weight` and `fc1.bias` (not `fc10.weight`), `layer4.1`
is the second block of `layer4`, `fc.bias` is that one tensor; a trailing dot (`features.`)
is the same as none.

- `model.freeze=[prefixes]`: those parameters get `requires_grad=False`, so they get no gradient
  and no update, weight decay and momentum included (torch's optimizers skip a parameter without
  a gradient). They stay in the optimizer's groups, so `model.unfreeze_at_epoch=N` only turns
  their gradients on from epoch N, and the optimizer's state and checkpoints keep one layout.
- `optimizer.param_groups={prefix: lr}`: a learning rate of its own for each prefix (the
  longest matching prefix wins); every other parameter keeps the top-level `lr`. The schedulers
  scale each group's own rate.
- `optimizer.decay_norm_and_bias=false` (the shipped optimizers' setting): norm layers' weights
  and every bias get weight_decay 0; a config without the key (every run saved before it existed,
  or an optimizer option of one's own) decays every parameter, as torch does.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from nettrain.engine import distributed
from nettrain.errors import ConfigError

# the norm layers whose weights (scales) and biases get no weight decay unless decay_norm_and_bias
NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
DECAYS_EVERYTHING = True  # decay_norm_and_bias when a config does not say: torch's own rule, and nettrain's before


def matches(name: str, prefix: str) -> bool:
    """The parameter `name` lies under `prefix` (at a dot), or is it."""
    prefix = prefix.rstrip(".")
    return name == prefix or name.startswith(prefix + ".")


def top_level_names(model: nn.Module) -> list[str]:
    """The first part of every parameter name, in order: what a prefix can start with."""
    return list(dict.fromkeys(name.split(".")[0] for name, _ in model.named_parameters()))


def check_prefixes(model: nn.Module, key: str, prefixes: list[str]) -> None:
    """A ConfigError naming `key`, each prefix that matches no parameter, and the names that exist."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(matches(name, p) for name in names)]
    if unmatched:
        raise ConfigError(
            [
                f"{key}={list(prefixes)}: {', '.join(repr(p) for p in unmatched)} "
                f"match{'es' if len(unmatched) == 1 else ''} no parameter of the model; allowed: parameter-name "
                f"prefixes, which start with one of {', '.join(top_level_names(model))} "
                "(nettrain-train dry_run=true shows the model)"
            ]
        )


def freeze(model: nn.Module, prefixes: list[str]) -> list[nn.Parameter]:
    """Set requires_grad=False on every parameter under `prefixes` (model.freeze); returns them."""
    check_prefixes(model, "model.freeze", prefixes)
    frozen = [p for name, p in model.named_parameters() if any(matches(name, pre) for pre in prefixes)]
    for param in frozen:
        param.requires_grad_(False)
    return frozen


def norm_and_bias_names(model: nn.Module) -> set[str]:
    """The names of the parameters of norm layers and of every bias."""
    found = set()
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, NORM_LAYERS) or name == "bias":
                found.add(f"{module_name}.{name}" if module_name else name)
    return found


def param_groups(
    model: nn.Module, lrs: dict[str, float], weight_decay: float, decay_norm_and_bias: bool
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: every parameter (frozen ones too), grouped by its prefix's
    learning rate (`lrs`, the longest matching prefix; none: the optimizer's own lr) and, when
    `weight_decay` > 0 and not `decay_norm_and_bias`, split into decayed and not decayed. The
    groups without a prefix come first (the metrics' `lr` column reads the first group), then one
    per prefix in the order given; each group's parameters keep the model's order."""
    check_prefixes(model, "optimizer.param_groups", list(lrs))
    no_decay = norm_and_bias_names(model) if weight_decay > 0 and not decay_norm_and_bias else set()
    order = [None, *lrs]
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        prefix = max((p for p in lrs if matches(name, p)), key=lambda p: len(p.rstrip(".")), default=None)
        groups.setdefault((order.index(prefix), name in no_decay), []).append(param)
    built = []
    for (place, undecayed), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params}
        if order[place] is not None:
            group["lr"] = float(lrs[order[place]])  # type: ignore[index]  # a prefix, not None
        if undecayed:
            group["weight_decay"] = 0.0
        built.append(group)
    return built


class Unfreeze:
    """model.unfreeze_at_epoch: the frozen parameters train from epoch `at_epoch` on.

    The loop calls it at the start of every epoch; it sets requires_grad from the epoch number
    alone, so a run resumed before or after that epoch (or inside it) trains as an uninterrupted
    one. Under torchrun the DistributedDataParallel wrapper is built again when the set of trained
    parameters changes: it all-reduces only the gradients of the parameters it was built with."""

    def __init__(self, state: Any, frozen: list[nn.Parameter], at_epoch: int, prefixes: list[str]):
        self.state, self.frozen, self.at_epoch, self.prefixes = state, frozen, at_epoch, prefixes

    def __call__(self, epoch: int) -> str | None:
        """Set the frozen parameters' requires_grad for `epoch`; a note when it changed."""
        trains = epoch >= self.at_epoch
        if all(p.requires_grad == trains for p in self.frozen):
            return None
        for param in self.frozen:
            param.requires_grad_(trains)
        if self.state.ddp is not None:
            self.state.ddp = distributed.wrap(self.state.model, self.state.device)
        count = sum(p.numel() for p in self.frozen)
        return (
            f"epoch {epoch}: the parameters of model.freeze={self.prefixes} {'train' if trains else 'are frozen'} "
            f"from here on (model.unfreeze_at_epoch={self.at_epoch}; {count:,} parameters)"
        )
