"""Data sets the tests write: PNG folders of separable images, CSV tables, a tiny CIFAR."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "stripe")


def class_image(label: int, rng: np.random.Generator, size: int = 12, channels: int = 1) -> np.ndarray:
    """uint8 (size, size[, 3]): noise plus a bright block whose place depends on the class."""
    img = rng.integers(0, 70, size=(size, size, channels), dtype=np.uint8)
    third = size // 3
    img[:, label * third : (label + 1) * third, :] = rng.integers(180, 255)
    return img[:, :, 0] if channels == 1 else img


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def image_folder(
    root: Path,
    per_class: int = 30,
    size: int = 12,
    channels: int = 1,
    seed: int = 0,
    splits: tuple[str, ...] = ("train",),
) -> Path:
    """ROOT/<split>/<class>/NNN.png for each split, `per_class` images per class (fewer in val/test)."""
    rng = np.random.default_rng(seed)
    for split in splits:
        n = per_class if split == "train" else max(3, per_class // 4)
        for label, name in enumerate(CLASSES):
            for i in range(n):
                write_png(root / split / name / f"{i:03d}.png", class_image(label, rng, size, channels))
    return root


def table(path: Path, n: int = 300, seed: int = 0, task: str = "classification", missing: int = 0) -> Path:
    """A CSV with two numeric columns, one categorical column and a noise column.

    classification: label = 'high' when 2*a - b + colour effect > 0, else 'low';
    regression: value = 3*a - 2*b + colour effect + small noise."""
    rng = np.random.default_rng(seed)
    colours = ["red", "green", "blue"]
    effect = {"red": -1.5, "green": 0.0, "blue": 1.5}
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["a", "b", "colour", "noise", "label" if task == "classification" else "value"])
        for i in range(n):
            a, b = rng.normal(10, 3), rng.normal(-5, 2)
            colour = colours[rng.integers(0, 3)]
            score = 2 * (a - 10) / 3 - (b + 5) / 2 + effect[colour]
            target = (
                ("high" if score > 0 else "low")
                if task == "classification"
                else f"{3 * a - 2 * b + 4 * effect[colour] + rng.normal(0, 0.1):.4f}"
            )
            row = [f"{a:.4f}", f"{b:.4f}", colour, f"{rng.normal():.4f}", target]
            if i < missing:
                row[1] = ""
            writer.writerow(row)
    return path


LABELS = ("red", "round", "large")  # multilabel_table's label columns


def multilabel_table(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A CSV with three numeric columns, a noise column and three 0/1 label columns, each decided
    by one feature's sign (red: x > 0, round: y > 0, large: z > 0), so any number of labels hold."""
    rng = np.random.default_rng(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["x", "y", "z", "noise", *LABELS])
        for _ in range(n):
            x, y, z = rng.normal(size=3)
            writer.writerow(
                [f"{x:.4f}", f"{y:.4f}", f"{z:.4f}", f"{rng.normal():.4f}", int(x > 0), int(y > 0), int(z > 0)]
            )
    return path


def multilabel_images(root: Path, n: int = 60, size: int = 12, seed: int = 0) -> Path:
    """ROOT/train/NNN.png and ROOT/labels.csv (file, left, right): a bright block on the left
    half, the right half, both or neither of each noisy grayscale image, one label per half."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        left, right = i % 2, (i // 2) % 2
        img = rng.integers(0, 70, size=(size, size), dtype=np.uint8)
        half = size // 2
        if left:
            img[:, :half] = 220
        if right:
            img[:, half:] = 220
        write_png(root / "train" / f"{i:03d}.png", img)
        rows.append([f"train/{i:03d}.png", left, right])
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "left", "right"])
        writer.writerows(rows)
    return root


def tiny_cifar(root: Path, name: str = "CIFAR10", per_batch: int = 20, seed: int = 0) -> Path:
    """A CIFAR in torchvision's on-disk layout (pickled dicts of uint8 rows), from random arrays
    with a class-dependent bright stripe so that it can be learned. The checksums torchvision
    knows are those of the official files: tests pass `check_integrity` for these (see
    `accept_tiny_cifar`)."""
    import pickle

    rng = np.random.default_rng(seed)
    classes = 10 if name == "CIFAR10" else 100
    label_key, names_key = ("labels", "label_names") if name == "CIFAR10" else ("fine_labels", "fine_label_names")

    def batch(n):
        labels = rng.integers(0, classes, size=n)
        images = rng.integers(0, 80, size=(n, 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, :, :, (label % 8) * 4 : (label % 8) * 4 + 4] = 250
        return {"data": images.reshape(n, -1), label_key: [int(v) for v in labels]}

    if name == "CIFAR10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
        files["test_batch"] = batch(per_batch)
        files["batches.meta"] = {names_key: [f"class{i}" for i in range(classes)]}
    else:
        folder = root / "cifar-100-python"
        files = {
            "train": batch(per_batch * 5),
            "test": batch(per_batch),
            "meta": {names_key: [f"class{i}" for i in range(classes)]},
        }
    folder.mkdir(parents=True, exist_ok=True)
    for file, content in files.items():
        with open(folder / file, "wb") as f:
            pickle.dump(content, f)
    return root


def accept_tiny_cifar(monkeypatch) -> None:
    """torchvision checks CIFAR files against the official MD5s; the tiny copy only needs to exist."""
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


# a user's own model module and a config option naming it, as docs/how-to/own-model.md shows
USER_MODEL = textwrap.dedent('''
    """A user's model: a _target_ class taking input_shape and num_classes plus its own keys."""
    import math

    from torch import nn


    class TwoLayer(nn.Sequential):
        def __init__(self, input_shape, num_classes, width=8):
            super().__init__(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                             nn.Linear(width, num_classes))
    ''')
USER_OPTION = "_target_: mymodels.TwoLayer\nwidth: 12\n"
