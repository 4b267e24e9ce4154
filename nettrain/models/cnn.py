"""A small convolutional network for images: `model=cnn`."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from nettrain.config.schema import ACTIVATIONS, NORMS
from nettrain.models.layers import _check, init_weights, make_activation


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
