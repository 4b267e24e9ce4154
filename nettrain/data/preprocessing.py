"""The preprocessing a trained model needs, kept with it.

Every data option describes its inputs in `DataSplits.meta`, a plain dict saved in each
checkpoint under `preprocessing`, so a model can be used without its data set
(`nettrain-predict`):

- images: `kind: image`, `channels`, `image_size` [H, W], per-channel `mean` and `std` (in [0, 1]
  pixel units), `class_names`;
- tables: `kind: table`, the `target` column, each feature's statistics or categories, the
  categorical encoding (nettrain/data/tabular.py);
- both: `task` (classification | regression).

Images held as uint8 are normalised on the training device, per batch, by :class:`Normalize`.
"""

from __future__ import annotations

from typing import Any

import torch


class Normalize:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std, on x's device; float input passes through."""

    def __init__(self, mean: list[float], std: list[float], device: torch.device | str = "cpu"):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # one fused op per batch: x * scale - mean / std
        self.neg_shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        return torch.addcmul(self.neg_shift, x.float(), self.scale)


def input_transform(meta: dict[str, Any], x: torch.Tensor, device: torch.device) -> Normalize | None:
    """The per-batch transform for a split stored as `x`: Normalize for uint8 images, else None."""
    if x.dtype == torch.uint8 and meta.get("kind") == "image":
        return Normalize(meta["mean"], meta["std"], device)
    return None


def describe(meta: dict[str, Any]) -> str:
    """One line for the console: the task, the classes or the target, the input preprocessing."""
    if not meta:
        return ""
    parts = [meta.get("task", "classification")]
    names = meta.get("class_names")
    if names:
        shown = ", ".join(str(n) for n in names[:10]) + (f", ... ({len(names)})" if len(names) > 10 else "")
        parts.append(f"classes: {shown}")
    if meta.get("kind") == "image":
        parts.append(
            f"images {meta['channels']}x{meta['image_size'][0]}x{meta['image_size'][1]}, "
            f"mean {meta['mean']}, std {meta['std']}"
        )
    elif meta.get("kind") == "table":
        parts.append(f"target {meta['target']!r}, {len(meta['features'])} feature columns")
    return "; ".join(parts)


class PreprocessingRecord:
    """The data's preprocessing as a checkpointed part (TrainState.extras['preprocessing']).

    Saved in every checkpoint under `preprocessing`, so `nettrain-predict` can use the model
    without the data set. Nothing to restore on resume: the data is rebuilt from the same config."""

    def __init__(self, meta: dict[str, Any]):
        self.meta = meta

    def state_dict(self) -> dict[str, Any]:
        return self.meta

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
