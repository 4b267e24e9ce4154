"""nettrain: configuration-driven training of PyTorch networks.

`fit` runs a training from Python (a notebook, a script) as `nettrain-train` does; importing
nettrain imports neither torch nor Hydra: `fit` imports them when it is called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from omegaconf import DictConfig

__version__ = "0.1.0"
__all__ = ["__version__", "fit"]


def fit(*overrides: str | DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Train as `nettrain-train OVERRIDES` would, in this process, and return the run's summary
    (a dict: summary.json's content).

        from nettrain import fit
        summary = fit("optimizer=sgd", "lr=0.05", "epochs=3")
        summary = fit(cfg)                                   # a config composed already

    `output_dir`: the run folder (default: outputs/<date>/<time>, as for the command). A bad
    override raises nettrain.errors.ConfigError with the message the command prints.
    See nettrain/commands/api.py."""
    from nettrain.commands.api import fit as run  # Hydra and, once training starts, torch

    return run(*overrides, output_dir=output_dir)
