"""nettrain: configuration-driven training of PyTorch networks."""

__version__ = "0.1.0"
