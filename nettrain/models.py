"""Models: the tutorial's SimpleNet generalised (MLP), a small CNN, and weight initialisation.

Components take plain keyword arguments, so they work without Hydra:

    MLP(input_shape=(1, 28, 28), num_classes=10, hidden=[256])   # == the tutorial's SimpleNet

Layers carry the tutorial's names (fc1, fc2, ...), so parameters read `fc1.weight` in the
gradient monitor and in checkpoints, and a SimpleNet state dict loads into MLP(hidden=[256]).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from nettrain.config import ACTIVATIONS, INITS, NORMS

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


class MLP(nn.Sequential):
    """Flatten -> [Linear -> norm -> activation -> dropout] per hidden width -> Linear.

    With hidden=[256], activation='relu', no norm and no dropout this is exactly the tutorial's
    SimpleNet: fc1 = Linear(784, 256), ReLU, fc2 = Linear(256, 10).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
        init: str = "default",
    ):
        _check("activation", activation, ACTIVATIONS)
        _check("norm", norm, NORMS)
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout={dropout}: must be a probability in [0, 1)")
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        width = math.prod(input_shape)
        for i, h in enumerate(hidden, start=1):
            layers[f"fc{i}"] = nn.Linear(width, h, bias=norm != "batchnorm")  # BatchNorm cancels a bias
            if norm == "batchnorm":
                layers[f"bn{i}"] = nn.BatchNorm1d(h)
            elif norm == "layernorm":
                layers[f"ln{i}"] = nn.LayerNorm(h)
            layers[f"act{i}"] = make_activation(activation)
            if dropout > 0:
                layers[f"dropout{i}"] = nn.Dropout(dropout)
            width = h
        layers[f"fc{len(hidden) + 1}"] = nn.Linear(width, num_classes)
        super().__init__(layers)
        init_weights(self, init)


class CNN(nn.Sequential):
    """[Conv3x3 -> norm -> activation -> MaxPool2] per entry of `channels`, then
    Flatten -> fc1 (hidden) -> activation -> dropout -> fc2 (classes)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        activation: str = "relu",
        norm: str = "none",
        dropout: float = 0.0,
        init: str = "default",
    ):
        _check("activation", activation, ACTIVATIONS)
        _check("norm", norm, NORMS)
        if len(input_shape) != 3:
            raise ValueError(
                f"CNN takes images (C, H, W); the data's input shape is {list(input_shape)}: "
                "use model=mlp for table-shaped data"
            )
        in_ch, height, width = input_shape
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, out_ch in enumerate(channels, start=1):
            layers[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=norm != "batchnorm")
            if norm == "batchnorm":
                layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
            elif norm == "layernorm":
                layers[f"ln{i}"] = nn.GroupNorm(1, out_ch)  # normalises over (C, H, W) per sample
            layers[f"act{i}"] = make_activation(activation)
            layers[f"pool{i}"] = nn.MaxPool2d(2)
            in_ch, height, width = out_ch, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"channels={list(channels)}: too many pooling stages for input {list(input_shape)}")
        layers["flatten"] = nn.Flatten()
        layers["fc1"] = nn.Linear(in_ch * height * width, hidden)
        layers["act_fc"] = make_activation(activation)
        if dropout > 0:
            layers["dropout"] = nn.Dropout(dropout)
        layers["fc2"] = nn.Linear(hidden, num_classes)
        super().__init__(layers)
        init_weights(self, init)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
