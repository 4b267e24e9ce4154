"""Class imbalance: the training split's class counts, balanced class weights, and the weighted
sampler's per-sample weights.

Balanced weights are scikit-learn's `compute_class_weight('balanced')`: w_c = n / (k * n_c) for
n training samples of k classes, n_c of class c, so that every class weighs as much in total.
`loss.class_weights=balanced` gives them to the loss (:class:`ClassWeightedLoss`);
`data.sampler=balanced` draws each training sample with probability w_c / n (with replacement),
so each epoch draws every class about equally often. Both count the training split alone, never
validation or test.

:class:`ClassWeights` keeps the counts and the weights in use in every checkpoint (`class_weights`),
so `nettrain-eval` weighs the loss as training did without reading the training split again, and
summary.json records them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nettrain.errors import ConfigError


def class_counts(labels: torch.Tensor, num_classes: int) -> list[int]:
    """Samples of each class among `labels` (int64 class indices), in class order."""
    return torch.bincount(labels.cpu(), minlength=num_classes).tolist()


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """n / (k * n_c) for each class c of the k in `counts`; 0.0 for a class without samples (it
    is never drawn, and has no balanced loss weight: :func:`loss_weights` refuses it)."""
    n, k = sum(counts), len(counts)
    return [n / (k * count) if count else 0.0 for count in counts]


def loss_weights(setting: Any, counts: Sequence[int], class_names: Sequence[str] | None = None) -> list[float] | None:
    """The loss's per-class weights for `loss.class_weights` = `setting`: None (no weights),
    `balanced` (from the training split's `counts`), or one weight per class as given. A list of
    the wrong length, or `balanced` with a class the training split lacks, is a ConfigError."""
    if setting is None:
        return None
    k = len(counts)
    names = list(class_names) if class_names else [str(c) for c in range(k)]
    if isinstance(setting, str):  # `balanced`: the checks in the schema allow no other string
        absent = [names[c] for c, count in enumerate(counts) if count == 0]
        if absent:
            raise ConfigError(
                [
                    f"loss.class_weights='balanced': class {', '.join(map(repr, absent))} has no sample in the "
                    "training split, so its balanced weight n / (k * 0) is infinite; give the weights as a list, "
                    f"one per class in order: {', '.join(names)}"
                ]
            )
        return balanced_weights(counts)
    weights = [float(w) for w in setting]
    if len(weights) != k:
        raise ConfigError(
            [
                f"loss.class_weights={list(setting)}: {len(weights)} weight(s) for {k} classes; allowed: one weight "
                f"per class, in class order: {', '.join(names)}"
            ]
        )
    return weights


def sample_weights(labels: torch.Tensor, class_weights: Sequence[float]) -> torch.Tensor:
    """Each sample's weight for the sampler: its class's weight (float64, on the CPU)."""
    return torch.tensor(class_weights, dtype=torch.float64)[labels.cpu()]


class ClassWeightedLoss(nn.Module):
    """A loss built with per-class `weight`s and reduction='none', averaged over the samples: a
    batch's loss is mean_i w_(y_i) * loss_i, where torch's own reduction would divide by the sum of
    the weights. So `loss x batch size` is the batch's weighted sum, and sums over batches and
    processes give the same figure for any batch size and any number of processes (evaluation
    adds such sums; DDP averages such means). Soft targets (mixup, cutmix) already reduce so in
    torch. With balanced weights the training split's mean weight is 1: the loss keeps its scale."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    @property
    def name(self) -> str:
        """The weighted loss's name, for the loss plot and the console."""
        return f"{type(self.loss).__name__}, class-weighted"

    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(out, target).mean()


def loss_name(loss: nn.Module) -> str:
    """The loss's name, as the plot and the console show it (a class-weighted loss says so)."""
    return loss.name if isinstance(loss, ClassWeightedLoss) else type(loss).__name__


@dataclass
class ClassWeights:
    """The training split's class counts and the class weights a run uses, as a checkpointed part
    (TrainState.extras['class_weights']). Nothing to restore on resume: the data and the settings
    it comes from are rebuilt from the same config."""

    train_counts: list[int]  # samples of each class in the training split
    loss: list[float] | None = None  # the loss's `weight` (loss.class_weights), or None
    sampler: list[float] | None = None  # data.sampler=balanced: each sample of class c drawn with weight w_c, or None

    def state_dict(self) -> dict[str, Any]:
        return {"train_counts": list(self.train_counts), "loss": self.loss, "sampler": self.sampler}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Fixed by the config and the data, which resume already checks."""

    def describe(self, class_names: Sequence[str] | None = None) -> str | None:
        """One console line on the weights in use (None when neither the loss nor the sampler weighs classes)."""
        if self.loss is None and self.sampler is None:
            return None
        names = list(class_names) if class_names else [str(c) for c in range(len(self.train_counts))]

        def each(values: Sequence[float]) -> str:
            return ", ".join(f"{name} {value:.3g}" for name, value in zip(names, values))

        parts = [f"training split {each(self.train_counts)}"]
        parts += [f"loss weights {each(self.loss)}"] if self.loss is not None else []
        parts += ["sampler: balanced (each class about equally often)"] if self.sampler is not None else []
        return "class balance: " + "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        """summary.json's `class_weights`: the counts, the loss's weights and the sampler's (None when unused)."""
        return self.state_dict()
