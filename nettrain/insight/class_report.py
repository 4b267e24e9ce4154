"""The per-class report of a classification test: precision, recall, F1 and support for each
class by name, with the confusion matrix they come from; as a dict (the eval/*-report.json
files), as a short console table, and as plots/confusion_matrix.png.

Everything is read off the confusion matrix (rows: the true class, columns: the predicted one),
summed over every process (nettrain/engine/metrics.py), so the report is the whole split's. A
class that is never predicted has precision 0, one that never occurs recall 0 (scikit-learn's
`zero_division=0`). No torch here.

A multi-label test (data.task=multilabel) gets a per-label report instead: each label's 2x2
matrix [[tn, fp], [fn, tp]] (scikit-learn's `multilabel_confusion_matrix` layout) gives its
precision, recall, F1 and support (the samples that have the label); the averages are micro
(from the summed counts) and macro (over every label, as scikit-learn averages multi-label
scores), and the figure is a table of the labels' four counts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nettrain.insight.figures import pyplot, save_png

SHOWN = 10  # classes in the console table; with more, the ones with the lowest F1


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def class_report(matrix: list, class_names: list[str] | None = None) -> dict[str, Any]:
    """The report of confusion matrix `matrix`: per class, the macro and weighted averages, the
    accuracy, the sample count and the matrix itself; a list of per-label 2x2 matrices (multi-label
    data) gives the per-label report (label_report)."""
    if matrix and isinstance(matrix[0][0], list):
        return label_report(matrix, class_names)
    n = len(matrix)
    names = [str(c) for c in class_names] if class_names and len(class_names) == n else [str(i) for i in range(n)]
    total = sum(map(sum, matrix))
    rows: list[dict[str, Any]] = []
    for c in range(n):
        hit, support, predicted = matrix[c][c], sum(matrix[c]), sum(row[c] for row in matrix)
        precision, recall = _ratio(hit, predicted), _ratio(hit, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        rows.append({"class": names[c], "precision": precision, "recall": recall, "f1": f1, "support": support})

    def average(weights: list[float]) -> dict[str, float]:
        return {
            key: _ratio(sum(w * row[key] for w, row in zip(weights, rows)), sum(weights))
            for key in ("precision", "recall", "f1")
        }

    seen = [float(sum(matrix[c]) > 0 or sum(row[c] for row in matrix) > 0) for c in range(n)]
    return {
        "samples": total,
        "accuracy": _ratio(sum(matrix[c][c] for c in range(n)), total),
        "per_class": rows,
        "macro": average(seen),  # over the classes that occur or are predicted, as scikit-learn averages
        "weighted": average([float(row["support"]) for row in rows]),
        "class_names": names,
        "confusion_matrix": matrix,  # rows: true class, columns: predicted class
    }


def label_report(matrices: list[list[list[int]]], label_names: list[str] | None = None) -> dict[str, Any]:
    """The per-label report of multi-label data from each label's [[tn, fp], [fn, tp]]: per label
    precision, recall, F1 and support, their micro, macro and weighted averages, and the share of
    right 0/1 decisions (the label accuracy)."""
    n = len(matrices)
    names = [str(c) for c in label_names] if label_names and len(label_names) == n else [str(i) for i in range(n)]
    rows: list[dict[str, Any]] = []
    for name, ((tn, fp), (fn, tp)) in zip(names, matrices):
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        f1 = _ratio(2 * precision * recall, precision + recall)
        rows.append(
            {"class": name, "precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
            | {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
        )
    tp, fp, fn = (sum(row[key] for row in rows) for key in ("tp", "fp", "fn"))
    micro_p, micro_r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    samples = sum(matrices[0][0]) + sum(matrices[0][1]) if matrices else 0

    def average(weights: list[float]) -> dict[str, float]:
        return {
            key: _ratio(sum(w * row[key] for w, row in zip(weights, rows)), sum(weights))
            for key in ("precision", "recall", "f1")
        }

    return {
        "task": "multilabel",
        "samples": samples,
        "accuracy": _ratio(sum(row["tp"] + row["tn"] for row in rows), samples * n),  # label decisions
        "per_class": rows,  # one row per label
        "micro": {"precision": micro_p, "recall": micro_r, "f1": _ratio(2 * micro_p * micro_r, micro_p + micro_r)},
        "macro": average([1.0] * n),  # over every label
        "weighted": average([float(row["support"]) for row in rows]),
        "class_names": names,  # the label names
        "label_confusion": matrices,  # per label: [[tn, fp], [fn, tp]]
    }


def report_unit(report: dict[str, Any]) -> str:
    """What a row of the report is: a class, or for multi-label data a label."""
    return "label" if report.get("task") == "multilabel" else "class"


def report_lines(report: dict[str, Any], shown: int = SHOWN) -> list[str]:
    """A compact table: one line per class (at most `shown`: with more classes, those with the
    lowest F1, said so), then the macro average."""
    rows = report["per_class"]
    picked = rows if len(rows) <= shown else sorted(rows, key=lambda r: (r["f1"], r["class"]))[:shown]
    width = max(5, *(len(r["class"]) for r in picked))
    width = min(width, 24)
    unit = report_unit(report)
    lines = [f"{unit:<{width}}  precision  recall      f1  support"]
    for row in picked:
        name = row["class"] if len(row["class"]) <= width else row["class"][: width - 1] + "…"
        lines.append(
            f"{name:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}  {row['support']:>7d}"
        )
    for average in ("micro", "macro") if unit == "label" else ("macro",):
        row = report[average]
        lines.append(
            f"{average:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['f1']:>6.4f}  "
            f"{report['samples']:>7d}"
        )
    if len(rows) > shown:
        lines.append(f"({shown} of {len(rows)} {'labels' if unit == 'label' else 'classes'}: those with the lowest F1)")
    return lines


def plot_confusion_matrix(report: dict[str, Any], path: str | Path, split: str = "test split") -> Path:
    """The confusion matrix as a heat map, each row normalised by its class's support (the counts
    written in the cells up to 20 classes), the class names on the axes; for a multi-label report,
    one row per label with its four counts (label_counts_figure)."""
    if report.get("task") == "multilabel":
        return label_counts_figure(report, path, split)
    plt = pyplot()
    matrix, names = report["confusion_matrix"], report["class_names"]
    n = len(matrix)
    rates = [[_ratio(count, sum(row)) for count in row] for row in matrix]
    size = min(4 + 0.4 * n, 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 50:
        ax.set_xticks(range(n), names, rotation=90 if n > 6 else 0)
        ax.set_yticks(range(n), names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(matrix[i][j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if rates[i][j] > 0.5 else "black",
                )
    ax.set(
        title=f"confusion matrix: {split}, {report['samples']} samples", xlabel="predicted class", ylabel="true class"
    )
    save_png(fig, Path(path))
    plt.close(fig)
    return Path(path)


def label_counts_figure(report: dict[str, Any], path: str | Path, split: str = "test split") -> Path:
    """Multi-label data: one row per label, its true positives, false negatives, false positives
    and true negatives, each shaded by its share of the samples (counts written up to 30 labels)."""
    plt = pyplot()
    rows, samples = report["per_class"], report["samples"]
    columns = ("tp", "fn", "fp", "tn")
    counts = [[row[key] for key in columns] for row in rows]
    rates = [[_ratio(count, samples) for count in line] for line in counts]
    fig, ax = plt.subplots(figsize=(6, min(2 + 0.35 * len(rows), 16)))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the samples")
    ax.set_xticks(range(4), ["true pos.", "false neg.", "false pos.", "true neg."])
    if len(rows) <= 50:
        ax.set_yticks(range(len(rows)), [row["class"] for row in rows])
    if len(rows) <= 30:
        for i, line in enumerate(counts):
            for j, count in enumerate(line):
                color = "white" if rates[i][j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
    ax.set(title=f"per-label counts: {split}, {samples} samples", ylabel="label")
    save_png(fig, Path(path))
    plt.close(fig)
    return Path(path)
