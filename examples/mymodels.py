"""A model of your own for nettrain: any class whose constructor takes `input_shape` and
`num_classes` (plus its own keys) and whose forward maps a batch to logits.

    PYTHONPATH=examples nettrain-train --config-dir examples/conf model=twolayer
"""

import math

from torch import nn


class TwoLayer(nn.Sequential):
    def __init__(self, input_shape, num_classes, width=64):
        super().__init__(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )
