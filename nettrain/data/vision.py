"""`data=cifar10`, `data=cifar100` and `data=torchvision`: image classification sets from
torchvision's catalogue, decoded once into uint8 tensors (N, C, H, W) that the training device
normalises per batch with the train split's per-channel mean and std.

CIFAR's `.data` array is used directly. Any other data set (`data=torchvision data.name=SVHN`)
is read once through its own `__getitem__`, each image converted to `channels` and resized to
`image_size` (both default to the first image's own). torchvision reads the files from `root`
(or downloads them there with `download=true`); for CIFAR those are the pickled Python batches of
the official archive, which torchvision's loader unpickles: use files from the official download
only (the same holds for any torchvision data set stored as pickles).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import torch
import torchvision
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image

from nettrain.data import DataSplits, Split, _split_indices, download_source
from nettrain.data.image_folder import _as_size, channel_stats, image_meta
from nettrain.errors import DataError


def _open(name: str, root: str, download: bool, part: str | None) -> Any:
    """torchvision.datasets.<name> for one part (train/test; None: the only one), or None when the
    class has no such part."""
    cls = getattr(torchvision.datasets, name)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if "root" in params:
        kwargs["root"] = root
    if "download" in params:
        kwargs["download"] = download
    if part is not None:
        if "train" in params:
            kwargs["train"] = part == "train"
        elif "split" in params:
            kwargs["split"] = part
        else:
            return None
    try:
        return cls(**kwargs)
    except (RuntimeError, FileNotFoundError) as exc:
        hint = (
            "put the files there or set data.download=true"
            if not download
            else "the download failed; check the network or fetch the files by hand"
        )
        raise DataError(f"data.root={root!r}: no {name} data found ({exc}); {hint}") from None
    except ValueError as exc:  # e.g. a `split` value the class does not have
        if part is not None and "split" in params:
            return None
        raise DataError(f"data.name={name!r}: {exc}") from None
    except OSError as exc:
        raise DataError(
            f"data.download=True: could not fetch {name} from {download_source(cls)} into {root!r} ({exc}); "
            "place the files in data.root and set data.download=false"
        ) from None


def _decode_all(dataset: Any, name: str, size: tuple[int, int] | None, channels: int | None):
    """Every (image, label) of a torchvision data set -> uint8 (N, C, H, W), int64 labels."""
    images, labels = [], []
    for i in range(len(dataset)):
        img, label = dataset[i]
        if isinstance(img, torch.Tensor):
            img = to_pil_image(img)
        if not isinstance(img, Image.Image) or not isinstance(label, int):
            raise DataError(
                f"data.name={name!r}: not an image classification data set "
                f"(item 0 is {type(img).__name__}, {type(label).__name__})"
            )
        channels = channels or (1 if img.mode in ("1", "L", "LA", "I", "F", "I;16") else 3)
        img = img.convert("L" if channels == 1 else "RGB")
        size = size or (img.height, img.width)
        if (img.height, img.width) != size:
            img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        images.append(pil_to_tensor(img))
        labels.append(label)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), size, channels


def torchvision_classification(
    name: str = "CIFAR10",
    root: str = "data",
    download: bool = False,
    image_size: Any = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
) -> DataSplits:
    """Any torchvision classification data set by class name; see the module docstring.

    Its official test split is the test split (test_fraction is cut from train only when it has
    none); val_fraction of its train split is held out for validation."""
    if name not in getattr(torchvision.datasets, "__all__", ()):
        raise DataError(
            f"data.name={name!r}: not a torchvision data set; allowed: a class of "
            "torchvision.datasets, e.g. CIFAR10, CIFAR100, SVHN, STL10, Flowers102, FakeData"
        )
    root = os.path.expanduser(str(root))
    train_set = _open(name, root, download, "train")
    test_set = _open(name, root, download, "test") if train_set is not None else None
    if train_set is None:
        train_set = _open(name, root, download, None)
    size = _as_size(image_size)
    if name in ("CIFAR10", "CIFAR100") and test_set is not None and size is None and channels in (None, 3):
        x = torch.from_numpy(train_set.data).permute(0, 3, 1, 2).contiguous()
        y = torch.tensor(train_set.targets, dtype=torch.int64)
        test_x = torch.from_numpy(test_set.data).permute(0, 3, 1, 2).contiguous()
        test_y = torch.tensor(test_set.targets, dtype=torch.int64)
        size, channels = (x.shape[2], x.shape[3]), 3
    else:
        x, y, size, channels = _decode_all(train_set, name, size, channels)
        if test_set is not None:
            test_x, test_y, _, _ = _decode_all(test_set, name, size, channels)
    classes = [str(c) for c in getattr(train_set, "classes", [])] or [str(i) for i in range(int(y.max()) + 1)]
    if test_set is None:
        val_idx, test_idx, train_idx = _split_indices(len(y), [val_fraction, test_fraction], split_seed)
        test = Split(x[test_idx], y[test_idx])
    else:
        val_idx, train_idx = _split_indices(len(y), [val_fraction], split_seed)
        test = Split(test_x, test_y)
    train = Split(x[train_idx], y[train_idx])
    mean, std = channel_stats(train.x)
    meta = image_meta(classes, channels, list(size), mean, std)
    return DataSplits(name, train, Split(x[val_idx], y[val_idx]), test, num_classes=len(classes), meta=meta)


def cifar10(root: str = "data", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0) -> DataSplits:
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB) from ROOT/cifar-10-batches-py."""
    return torchvision_classification("CIFAR10", root, download, val_fraction=val_fraction, split_seed=split_seed)


def cifar100(root: str = "data", download: bool = False, val_fraction: float = 0.1, split_seed: int = 0) -> DataSplits:
    """CIFAR-100 (fine labels; 50,000 train / 10,000 test, 32x32 RGB) from ROOT/cifar-100-python."""
    return torchvision_classification("CIFAR100", root, download, val_fraction=val_fraction, split_seed=split_seed)
