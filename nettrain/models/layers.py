"""The building blocks the tutorial names: activations (ReLU, GELU, ...), weight initialisation
(Kaiming, Xavier) and the parameter count."""

from __future__ import annotations

from torch import nn

from nettrain.config.schema import ACTIVATIONS, INITS

_ACTIVATION_MODULES = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}
assert tuple(_ACTIVATION_MODULES) == ACTIVATIONS


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: allowed: {', '.join(allowed)}")


def make_activation(name: str) -> nn.Module:
    _check("activation", name, ACTIVATIONS)
    return _ACTIVATION_MODULES[name]()


def init_weights(model: nn.Module, init: str = "default") -> nn.Module:
    """Initialise every Linear and Conv weight by `init` and zero their biases.

    `default` keeps PyTorch's own initialisation. `kaiming_normal` is the tutorial's
    `nn.init.kaiming_normal_(w, mode='fan_in')`: std = sqrt(2 / fan_in).
    """
    _check("init", init, INITS)
    if init == "default":
        return model
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if init == "kaiming_normal":
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif init == "kaiming_uniform":
                nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="relu")
            elif init == "xavier_normal":
                nn.init.xavier_normal_(module.weight)
            elif init == "xavier_uniform":
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
