"""Checkpoints: plain tensors and plain data, written atomically, loaded without unpickling code.

A checkpoint is a dict of state dicts (model, optimizer, scheduler, early stopping), the epoch
and the run config as plain containers. It is saved with torch.save and always loaded with
torch.load(..., weights_only=True), which refuses anything but tensors and plain data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from nettrain.files import atomic_write

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)


class Checkpointer:
    """Writes checkpoints/last.pt after every epoch and checkpoints/best.pt on each new best."""

    def __init__(self, directory: str | Path, config: dict[str, Any], enabled: bool = True):
        self.directory, self.config, self.enabled = Path(directory), config, enabled

    def save(self, *, epoch: int, model, optimizer, schedule, early_stopping, metrics: dict,
             is_best: bool) -> None:
        if not self.enabled:
            return
        state = {
            "format": FORMAT_VERSION,
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": schedule.state_dict(),
            "early_stopping": early_stopping.state_dict(),
            "metrics": metrics,
            "config": self.config,
        }
        save_checkpoint(self.directory / "last.pt", state)
        if is_best:
            save_checkpoint(self.directory / "best.pt", state)
