"""The tutorial's SimpleNet (784-256-10, ReLU), generalised: `model=mlp`.

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

from nettrain.config.schema import ACTIVATIONS, NORMS
from nettrain.models.layers import _check, init_weights, make_activation


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
