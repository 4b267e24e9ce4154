"""The metrics of `metrics=[...]` beyond the loop's own sums, with torchmetrics, and the
confusion matrix behind the per-class report.

`evaluate` (nettrain/engine/loop.py) keeps its fast path: loss and accuracy (classification),
R² and MAE (regression) from sums on the device. A :class:`Measures` adds what those sums cannot
give: top-k accuracy, F1, precision and recall (macro, micro, weighted), AUROC and average
precision, RMSE, and, for the test, the confusion matrix. It is updated with every batch of a
rank's share and computed once per pass; torchmetrics gathers every rank's states over the
process group (a sum of counts for the scores and the matrix, every rank's probabilities for
AUROC and average precision), so N processes give the figures one process gives.

The names and what each task allows are in nettrain/config/schema.py (TASK_METRICS), which
checks them before anything is built.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import torch
from torchmetrics import Metric
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from torchmetrics.regression import MeanSquaredError

from nettrain.config.schema import TOP_K, computed_metrics
from nettrain.errors import ConfigError

SCORES = {"f1": MulticlassF1Score, "precision": MulticlassPrecision, "recall": MulticlassRecall}
PER_CLASS = {"auroc": MulticlassAUROC, "average_precision": MulticlassAveragePrecision}


class Support(Metric):
    """How many samples of each class there are (summed over the processes)."""

    counts: torch.Tensor

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, y: torch.Tensor) -> None:
        self.counts += torch.bincount(y, minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        return self.counts


def build_metric(name: str, task: str, num_classes: int, names: list[str]) -> Metric:
    """The torchmetrics metric for `name` (checked against `task` up front); a top-k accuracy
    with k above the class count is a ConfigError naming `names` (the `metrics` list)."""
    if task == "regression":  # rmse: the root of the mean squared error, scaled to the target's units by Measures
        return MeanSquaredError(squared=False)
    n = num_classes  # validate_args=False: the inputs are the model's, no per-batch checks (and host syncs)
    if top := TOP_K.match(name):
        k = int(top.group(1))
        if k > n:
            raise ConfigError(
                [f"metrics={names}: {name} ranks the top {k} of {n} classes; allowed: top1_acc..top{n}_acc"]
            )
        return MulticlassAccuracy(n, top_k=k, average="micro", validate_args=False)
    if name in PER_CLASS:  # each class against the rest; averaged over the classes present by Measures
        return PER_CLASS[name](n, average="none", validate_args=False)
    score, average = name.rsplit("_", 1)
    return SCORES[score](n, average=average, validate_args=False)


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
        self.task, self.target_std, self.num_classes = task, target_std, num_classes
        self.metrics = {
            name: build_metric(name, task, num_classes, names).to(device) for name in computed_metrics(names, task)
        }
        self.support = Support(num_classes).to(device) if set(self.metrics) & set(PER_CLASS) else None
        self.confusion = None
        if confusion and task == "classification":
            self.confusion = MulticlassConfusionMatrix(num_classes, validate_args=False).to(device)
        self.confusion_matrix: list[list[int]] | None = (
            None  # the last pass's, every rank's samples: rows true, columns predicted
        )
        self.updated = False

    def __bool__(self) -> bool:
        return bool(self.metrics) or self.confusion is not None

    def _all(self) -> list[Metric]:
        return [*self.metrics.values(), *(m for m in (self.support, self.confusion) if m is not None)]

    def reset(self) -> None:
        for metric in self._all():
            metric.reset()
        self.updated = False

    def update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch: the model's outputs (logits, or standardised values) and the targets."""
        if self.task == "classification":
            probs = out.float().softmax(dim=1)
            for metric in self._all():
                metric.update(probs, y)
        else:
            for metric in self.metrics.values():
                metric.update(out.float(), y.float())
        self.updated = True

    def compute(self) -> dict[str, float]:
        """The pass's figures over every rank's samples (a collective: every rank calls it), by name;
        the confusion matrix in `confusion_matrix`."""
        if not self.updated:  # a rank without samples: stored probabilities need their shape to be gathered
            for metric in self._all():
                if any(isinstance(getattr(metric, state), list) for state in metric._defaults):
                    metric.update(
                        torch.empty(0, self.num_classes, device=metric.device),
                        torch.empty(0, dtype=torch.long, device=metric.device),
                    )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")  # such a rank
            warnings.filterwarnings(
                "ignore", message="No positive samples in targets"
            )  # a class absent: left out below
            present = self.support.compute() > 0 if self.support is not None else None
            figures = {name: self._value(name, metric.compute(), present) for name, metric in self.metrics.items()}
            if self.confusion is not None:
                self.confusion_matrix = self.confusion.compute().tolist()
        if self.task == "regression":
            figures = {name: value * self.target_std for name, value in figures.items()}  # rmse in the target's units
        self.reset()
        return figures

    @staticmethod
    def _value(name: str, value: torch.Tensor, present: torch.Tensor | None) -> float:
        """A metric's figure; AUROC and average precision: the mean over the classes that occur
        (one without samples has no curve; nan when no class occurs)."""
        if name in PER_CLASS and present is not None:
            return float(value[present].mean()) if bool(present.any()) else math.nan
        return float(value)
