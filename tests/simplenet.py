"""The tutorial's network, verbatim, as the reference the tests compare nettrain's models and loop
against. A module of its own rather than in conftest.py: conftest is imported by pytest-xdist's
controller too, which then spends ~3 s on `import torch` before it starts the workers."""

from torch import nn


class SimpleNet(nn.Module):
    """The tutorial's network, verbatim: 784-256-10 with ReLU, on flattened images."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 256)
        self.fc2 = nn.Linear(256, 10)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.fc1(x))
        x = self.fc2(x)
        return x
