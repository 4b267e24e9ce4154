"""The metrics of `metrics=[...]` beyond the loop's own sums, with torchmetrics, and the
confusion matrix behind the per-class report.

`evaluate` (nettrain/engine/loop.py) keeps its fast path: loss and accuracy (classification),
R² and MAE (regression) from sums on the device. A :class:`Measures` adds what those sums cannot
give: top-k accuracy, F1, precision and recall (macro, micro, weighted), AUROC and average
precision, RMSE (torchmetrics), and for the test the confusion matrix (counts on the device). For
multi-label data (data.task=multilabel) the scores are torchmetrics' multilabel ones on each
label's sigmoid (a label is predicted above 0.5), and the confusion counts are each label's 2x2. It
is updated with every batch of a rank's share and computed once per pass: torchmetrics gathers
every rank's states over the process group (counts for the scores, every sample's probabilities
for AUROC and average precision) and one all-reduce adds the confusion counts, so N processes
give the figures one process gives.

torchmetrics is imported only by a run that lists metrics: its import loads scipy and takes
seconds, and the confusion matrix every classification test gives needs none of it.

The names and what each task allows are in nettrain/config/schema.py (TASK_METRICS), which
checks them before anything is built.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from nettrain.config.schema import TOP_K, computed_metrics
from nettrain.engine import distributed
from nettrain.errors import ConfigError

SCORES = {"f1": "MulticlassF1Score", "precision": "MulticlassPrecision", "recall": "MulticlassRecall"}
PER_CLASS = {"auroc": "MulticlassAUROC", "average_precision": "MulticlassAveragePrecision"}
# data.task=multilabel: each label's sigmoid, thresholded at 0.5 for the scores (torchmetrics' default)
LABEL_SCORES = {"f1": "MultilabelF1Score", "precision": "MultilabelPrecision", "recall": "MultilabelRecall"}
PER_LABEL = {"auroc": "MultilabelAUROC", "average_precision": "MultilabelAveragePrecision"}


def build_metric(name: str, task: str, num_classes: int, names: list[str]) -> Any:
    """The torchmetrics metric for `name` (checked against `task` up front); a top-k accuracy
    with k above the class count is a ConfigError naming `names` (the `metrics` list)."""
    import torchmetrics.classification as tmc  # about 1 s to import (scipy); only runs with metrics=[...]
    import torchmetrics.regression as tmr

    if task == "regression":  # rmse: the root of the mean squared error, scaled to the target's units by Measures
        return tmr.MeanSquaredError(squared=False)
    n = num_classes  # validate_args=False: the inputs are the model's, no per-batch checks (and host syncs)
    if task == "multilabel":  # each label against its absence; AUROC and AP averaged over the labels by Measures
        if name in PER_LABEL:
            return getattr(tmc, PER_LABEL[name])(n, average="none", validate_args=False)
        score, average = name.rsplit("_", 1)
        return getattr(tmc, LABEL_SCORES[score])(n, average=average, validate_args=False)
    if top := TOP_K.match(name):
        k = int(top.group(1))
        if k > n:
            raise ConfigError(
                [f"metrics={names}: {name} ranks the top {k} of {n} classes; allowed: top1_acc..top{n}_acc"]
            )
        return tmc.MulticlassAccuracy(n, top_k=k, average="micro", validate_args=False)
    if name in PER_CLASS:  # each class against the rest; averaged over the classes present by Measures
        return getattr(tmc, PER_CLASS[name])(n, average="none", validate_args=False)
    score, average = name.rsplit("_", 1)
    return getattr(tmc, SCORES[score])(n, average=average, validate_args=False)


class Measures:
    """The torchmetrics of `names` for `task` on `device` (the names the loop's sums give left
    out), and the confusion matrix when `confusion` (classification)."""

    def __init__(
        self,
        names: Iterable[str],
        task: str,
        num_classes: int,
        device: torch.device,
        target_std: float = 1.0,
        confusion: bool = False,
    ):
        names = list(names)
        self.task, self.target_std, self.num_classes, self.device = task, target_std, num_classes, device
        self.metrics = {
            name: build_metric(name, task, num_classes, names).to(device) for name in computed_metrics(names, task)
        }
        # counts on the device, added over the ranks: true x predicted, and each class's samples;
        # multilabel: each label's true positives, false positives, false negatives, true negatives
        self.confusion = task in ("classification", "multilabel") and confusion
        self.per_class = bool(set(self.metrics) & set(PER_CLASS))
        self.counts = torch.zeros(0, dtype=torch.long, device=device)
        # the last pass's: rows true, columns predicted; multilabel: per label [[tn, fp], [fn, tp]]
        self.confusion_matrix: list[list[int]] | list[list[list[int]]] | None = None
        self.updated = False
        self.reset()

    def __bool__(self) -> bool:
        return bool(self.metrics) or self.confusion

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
        c = self.num_classes
        if self.task == "multilabel":
            size = 4 * c if self.confusion or self.per_class else 0
        else:
            size = c * c if self.confusion else c if self.per_class else 0
        self.counts = torch.zeros(size, dtype=torch.long, device=self.device)
        self.updated = False

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: the model's outputs (logits, or standardised values) and the targets."""
        if self.task == "classification":
            c = self.num_classes
            if self.confusion:
                self.counts += torch.bincount(y * c + out.argmax(dim=1), minlength=c * c)
            elif self.per_class:
                self.counts += torch.bincount(y, minlength=c)
            if self.metrics:
                probs = out.float().softmax(dim=1)
                for metric in self.metrics.values():
                    metric.update(probs, y)
        elif self.task == "multilabel":
            if self.counts.numel():
                predicted, true = out > 0, y > 0.5  # logit > 0: sigmoid > 0.5
                both = torch.stack([predicted & true, predicted & ~true, ~predicted & true, ~predicted & ~true])
                self.counts += both.sum(dim=1).flatten()  # (4, labels): tp, fp, fn, tn
            if self.metrics:
                probs, target = out.float().sigmoid(), y.long()
                for metric in self.metrics.values():
                    metric.update(probs, target)
        else:
            for metric in self.metrics.values():
                metric.update(out.float(), y.float())
        self.updated = True

    def compute(self) -> dict[str, float]:
        """The pass's figures over every rank's samples (a collective: every rank calls it), by
        name; the confusion matrix in `confusion_matrix`."""
        if not self.updated:  # a rank without samples: stored probabilities need their shape to be gathered
            for metric in self.metrics.values():
                if any(isinstance(getattr(metric, state), list) for state in metric._defaults):
                    empty = torch.empty(0, self.num_classes, device=self.device)
                    shape = (0, self.num_classes) if self.task == "multilabel" else (0,)
                    metric.update(empty, torch.empty(shape, dtype=torch.long, device=self.device))
        if self.counts.numel():
            distributed.all_reduce_sum(self.counts)  # every rank's counts, in one call
        c = self.num_classes
        if self.task == "multilabel":  # a label's curve needs samples with and without it
            tp, fp, fn, tn = self.counts.view(4, c) if self.counts.numel() else torch.zeros(4, c, dtype=torch.long)
            present = ((tp + fn) > 0) & ((fp + tn) > 0)
        else:
            present = (self.counts.view(c, c).sum(dim=1) if self.confusion else self.counts) > 0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")  # such a rank
            warnings.filterwarnings(
                "ignore", message="No positive samples in targets"
            )  # a class absent: left out below
            figures = {name: self._value(name, metric.compute(), present) for name, metric in self.metrics.items()}
        if self.confusion and self.task == "multilabel":
            self.confusion_matrix = [[[n, p], [m, t]] for t, p, m, n in self.counts.view(4, c).t().tolist()]
        elif self.confusion:
            self.confusion_matrix = self.counts.view(c, c).tolist()
        if self.task == "regression":
            figures = {name: value * self.target_std for name, value in figures.items()}  # rmse in the target's units
        self.reset()
        return figures

    @staticmethod
    def _value(name: str, value: torch.Tensor, present: torch.Tensor) -> float:
        """A metric's figure; AUROC and average precision: the mean over the classes that occur
        (one without samples has no curve; nan when no class occurs), for multilabel data over the
        labels that some samples have and some lack."""
        if name not in PER_CLASS:
            return float(value)
        return float(value[present].mean()) if bool(present.any()) else math.nan
