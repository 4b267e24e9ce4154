"""Checks for IDX files (the MNIST format) before they are decoded, each with a message that
names the file and what is wrong: an empty file, a truncated header, a wrong magic number, a
size that does not match the header, labels outside the classes, image and label counts that differ.

An IDX file is: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions,
then each dimension as a big-endian 32-bit integer, then the data.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import torch

from nettrain.errors import IdxError

# type byte -> bytes per value
IDX_TYPES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}
# torchvision's file names for MNIST-format datasets, and the dimensions each must have
MNIST_FILES = {
    "train-images-idx3-ubyte": 3,
    "train-labels-idx1-ubyte": 1,
    "t10k-images-idx3-ubyte": 3,
    "t10k-labels-idx1-ubyte": 1,
}


def idx_shape(path: str | Path, ndim: int | None = None) -> tuple[int, ...]:
    """The shape an IDX file's header declares, after checking header, type and size."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise IdxError(f"{path}: the file is empty (an interrupted download?); delete it and fetch it again")
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4:
            raise IdxError(f"{path}: truncated header ({size} bytes; an IDX header has at least 4)")
        zero, kind, dims = struct.unpack(">HBB", head)
        if zero != 0 or kind not in IDX_TYPES or dims == 0:
            raise IdxError(
                f"{path}: wrong magic number 0x{head.hex()} (an IDX file starts with 0x0000 and a type "
                "byte such as 08); is this really an MNIST-format file, or is it still compressed?"
            )
        if ndim is not None and dims != ndim:
            raise IdxError(f"{path}: has {dims} dimensions, expected {ndim}")
        raw = f.read(4 * dims)
    if len(raw) < 4 * dims:
        raise IdxError(f"{path}: truncated header ({size} bytes; its {dims} dimensions need {4 + 4 * dims})")
    shape = struct.unpack(f">{dims}I", raw)
    expected = 4 + 4 * dims + math.prod(shape) * IDX_TYPES[kind]
    if size != expected:
        raise IdxError(
            f"{path}: {size} bytes, but its header {list(shape)} needs {expected} "
            f"({'truncated' if size < expected else 'extra bytes at the end'})"
        )
    return shape


def check_mnist_raw(raw_dir: str | Path) -> None:
    """Check the four MNIST-format files in `raw_dir` that exist (missing ones are reported by
    the loader), and that each split has as many labels as images."""
    raw_dir = Path(raw_dir)
    shapes = {}
    for name, ndim in MNIST_FILES.items():
        if (raw_dir / name).is_file():
            shapes[name] = idx_shape(raw_dir / name, ndim)
    for split in ("train", "t10k"):
        images, labels = shapes.get(f"{split}-images-idx3-ubyte"), shapes.get(f"{split}-labels-idx1-ubyte")
        if images is not None and labels is not None and images[0] != labels[0]:
            raise IdxError(
                f"{raw_dir}: {split}-images-idx3-ubyte has {images[0]} images but "
                f"{split}-labels-idx1-ubyte has {labels[0]} labels; they must match"
            )


def check_labels(labels, num_classes: int, where: str) -> None:
    """Every label in 0..num_classes-1; otherwise name the first bad one by its index."""
    labels = torch.as_tensor(labels)
    bad = torch.nonzero((labels < 0) | (labels >= num_classes))
    if bad.numel():
        i = int(bad[0, 0])
        raise IdxError(
            f"{where}: label {int(labels[i])} at index {i} is outside the {num_classes} classes "
            f"(0..{num_classes - 1}); {bad.shape[0]} label(s) out of range"
        )


def check_counts(n_images: int, n_labels: int, where: str) -> None:
    if n_images != n_labels:
        raise IdxError(f"{where}: {n_images} images but {n_labels} labels; they must match")
