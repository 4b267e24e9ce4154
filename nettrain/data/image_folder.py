"""`data=image_folder`: your own images, ROOT/train/<class>/*.png (+ optional val/ and test/).

The images are decoded once (Pillow), converted to `channels`, resized to `image_size` and kept
as uint8 tensors (N, C, H, W); the training device normalises them per batch with the train
split's per-channel mean and std (nettrain/data/preprocessing.py). Missing val/ or test/ folders are
cut from train by `val_fraction`/`test_fraction` with `split_seed`.

The decoded tensors are cached in `cache_dir` (default: $XDG_CACHE_HOME/nettrain, else
~/.cache/nettrain), the one place outside a run folder that nettrain writes. The cache key is a
hash of every file's path, size and mtime and of the decode settings, so any change to the files
builds a new cache entry; reading the folder then costs one stat() per file.

With `data.in_memory=false` (a folder too big to decode into memory) nothing is decoded up front
or cached: each split holds its file list (ImageFiles), the DataLoader's `num_workers` workers
decode each batch's files in the run's sample order, and the mean and std come from a seeded
sample of 2,000 train images.

Multi-label images (`task: multilabel`) name their labels in a CSV, `labels_file` (relative to
ROOT, or absolute): a header `file,<label>,<label>,...`, then one row per image with its path
relative to ROOT and a 0 or 1 under each label. The path's first folder picks the split (`val/`,
`test/`; any other path is a training image, e.g. `train/0001.png`), missing splits are cut from
train as above, and the files the CSV does not list are not read. The label columns are the
label names; y is float32 (N, labels).
"""

from __future__ import annotations

import csv as csv_module
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nettrain.data import DataSplits, Split, _split_indices
from nettrain.errors import DataError
from nettrain.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SPLITS = ("train", "val", "test")
CACHE_VERSION = 1  # part of the cache key: a change to the decoding code bumps it


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/nettrain, else ~/.cache/nettrain."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nettrain"


def list_images(folder: Path) -> list[Path]:
    """The image files under `folder` (any depth), by extension, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_mode(mode: str) -> int:
    """Pillow mode -> channels: grayscale modes (L, LA, 1, I, F, I;16) give 1, the rest 3."""
    return 1 if mode in ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "La") else 3


def decode_image(path: str | Path, size: tuple[int, int] | None, channels: int) -> torch.Tensor:
    """One image file -> uint8 (channels, H, W), resized (bilinear, antialiased) to `size` = (H, W)."""
    with Image.open(path) as file:
        img = file.convert("L" if channels == 1 else "RGB")
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.height, img.width, channels).permute(2, 0, 1).contiguous()


def _probe(path: Path) -> tuple[tuple[int, int], int]:
    """(H, W) and channels from the file's header, without decoding the pixels."""
    with Image.open(path) as img:
        return (img.height, img.width), image_mode(img.mode)


def _as_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


class Folder:
    """The file list of ROOT: per split, (relative path, class index) pairs; the class names."""

    def __init__(self, root: Path):
        self.root = root
        if not (root / "train").is_dir():
            found = sorted(p.name for p in root.iterdir()) if root.is_dir() else None
            what = "does not exist" if found is None else f"holds {found[:8] or 'nothing'}"
            raise DataError(
                f"data.root={str(root)!r}: needs a train/ folder with one sub-folder per class "
                f"(train/<class>/*.png); {what}"
            )
        self.classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if len(self.classes) < 2:
            raise DataError(
                f"data.root={str(root)!r}: train/ needs at least 2 class folders; found {self.classes or 'none'}"
            )
        self.files: dict[str, list[tuple[str, Any]]] = {}  # (relative path, class index or 0/1 labels)
        for split in SPLITS:
            folder = root / split
            if not folder.is_dir():
                continue
            extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in self.classes)
            if extra:
                raise DataError(
                    f"data.root={str(root)!r}: {split}/ has classes that train/ lacks: {extra}; allowed: {self.classes}"
                )
            self.files[split] = [
                (str(path.relative_to(root)), index)
                for index, name in enumerate(self.classes)
                if (folder / name).is_dir()
                for path in list_images(folder / name)
            ]
        if not self.files["train"]:
            raise DataError(f"data.root={str(root)!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) in train/<class>/")

    def key(self, settings: dict[str, Any]) -> str:
        """A hash of every file's path, size and mtime and of the decode settings."""
        h = hashlib.sha256(
            json.dumps(
                {
                    "version": CACHE_VERSION,
                    "root": str(self.root.resolve()),
                    "classes": self.classes,
                    "settings": settings,
                },
                allow_nan=False,
            ).encode()
        )
        for split, files in self.files.items():
            for rel, label in files:
                st = os.stat(self.root / rel)
                h.update(f"{split}\0{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:24]


class LabelledFolder(Folder):
    """The file list of a labels file (task: multilabel): per split, (relative path, 0/1 labels) pairs;
    `classes` holds the label names."""

    def __init__(self, root: Path, labels_file: str):
        self.root = root
        path = Path(os.path.expanduser(str(labels_file)))
        path = path if path.is_absolute() else root / path
        self.labels_path = path
        where = f"data.labels_file={str(labels_file)!r}"
        if not path.is_file():
            raise DataError(f"{where}: no such file ({path}); allowed: a CSV relative to data.root, or absolute")
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = [row for row in csv_module.reader(f) if row]
        header = [c.strip() for c in (table[0] if table else [])]
        if len(header) < 3 or header[0] != "file" or len(set(header)) != len(header):
            raise DataError(
                f"{where}: header {header}; allowed: file,<label>,<label>,... (a `file` column, then 2 or "
                "more distinct label names)"
            )
        self.classes = header[1:]
        self.files = {}
        for line, row in enumerate(table[1:], start=2):
            rel = row[0].strip() if row else ""
            values = [v.strip() for v in row[1:]]
            if len(row) != len(header) or any(v not in ("0", "1") for v in values):
                raise DataError(
                    f"{where}: line {line} {row}; allowed: a file path, then 0 or 1 for each of {self.classes}"
                )
            if not (root / rel).is_file() or Path(rel).suffix.lower() not in IMAGE_EXTENSIONS:
                raise DataError(
                    f"{where}: line {line}: {rel!r} is not an image file under data.root={str(root)!r} "
                    f"({', '.join(IMAGE_EXTENSIONS)})"
                )
            split = Path(rel).parts[0] if Path(rel).parts[0] in ("val", "test") else "train"
            self.files.setdefault(split, []).append((Path(rel).as_posix(), tuple(int(v) for v in values)))
        if not self.files.get("train"):
            raise DataError(f"{where}: lists no training images (paths outside val/ and test/)")


def _probe_folder(
    folder: Folder, image_size: Any, channels: int | None, on_bad_file: str, warn: Callable[[str], None]
) -> tuple[tuple[int, int], int, list[str]]:
    """Read every file's header: the size and channels to decode to (the images' own when not set
    and all agree), and the unreadable files, each named (on_bad_file=fail: the first stops it)."""
    skipped: list[str] = []
    shapes = set()
    for files in folder.files.values():
        for rel, _ in files:
            try:
                shapes.add(_probe(folder.root / rel))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is named
                message = f"{folder.root / rel}: not a readable image ({type(exc).__name__}: {exc})"
                if on_bad_file == "fail":
                    raise DataError(f"{message}; fix or remove it, or set data.on_bad_file=skip") from None
                warn(f"skipped {message}")
                skipped.append(rel)
    size = _as_size(image_size)
    if size is None:
        sizes = sorted({s for s, _ in shapes})
        if len(sizes) != 1:
            raise DataError(
                f"data.image_size=None: the images have {len(sizes)} different sizes "
                f"(H, W) {sizes[:4]}{' ...' if len(sizes) > 4 else ''}; set data.image_size=N"
            )
        size = sizes[0]
    if channels is None:
        found = sorted({c for _, c in shapes})
        if len(found) != 1:
            raise DataError(
                "data.channels=None: the folder mixes grayscale and colour images; "
                "set data.channels=1 (grayscale) or data.channels=3 (RGB)"
            )
        channels = found[0]
    return size, channels, skipped


def _decode_folder(
    folder: Folder, image_size: Any, channels: int | None, on_bad_file: str, warn: Callable[[str], None]
) -> dict[str, Any]:
    """Decode every file: {"splits": {split: {"x", "y"}}, "skipped": [...], "size", "channels"}."""
    size, channels, skipped = _probe_folder(folder, image_size, channels, on_bad_file, warn)
    bad = set(skipped)
    splits: dict[str, dict[str, torch.Tensor]] = {}
    for split, files in folder.files.items():
        images, labels = [], []
        for rel, label in files:
            if rel in bad:
                continue
            try:
                images.append(decode_image(folder.root / rel, size, channels))
            except Exception as exc:  # noqa: BLE001 - a header that parses but pixels that do not
                message = f"{folder.root / rel}: cannot be decoded ({type(exc).__name__}: {exc})"
                if on_bad_file == "fail":
                    raise DataError(f"{message}; fix or remove it, or set data.on_bad_file=skip") from None
                warn(f"skipped {message}")
                skipped.append(rel)
                continue
            labels.append(label)
        x = torch.stack(images) if images else torch.zeros((0, channels, *size), dtype=torch.uint8)
        splits[split] = {"x": x, "y": torch.tensor(labels, dtype=torch.int64)}
    return {"splits": splits, "skipped": skipped, "size": list(size), "channels": channels}


class ImageFiles:
    """Image files decoded when read: what a split holds with `in_memory=false` in place of its
    uint8 tensor (N, C, H, W), for folders too big to decode into memory.

    It stands in for that tensor where nettrain uses one: `len`, `shape`, `dtype`, `nbytes`;
    `files[i]` decodes file i (the DataLoader's workers call it, batch by batch, in the run's
    sample order); `files[index]` for a slice, a list or a tensor of indices is that subset (the
    val/test cut); `to(device)` decodes them all, for the few samples that checks run on."""

    dtype = torch.uint8

    def __init__(self, root: Path, rels: list[str], size: tuple[int, int], channels: int):
        self.root, self.rels, self.size, self.channels = root, list(rels), (int(size[0]), int(size[1])), channels

    def __len__(self) -> int:
        return len(self.rels)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rels), self.channels, *self.size))

    @property
    def nbytes(self) -> int:
        return len(self.rels) * self.channels * self.size[0] * self.size[1]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int) or (isinstance(index, torch.Tensor) and index.dim() == 0):
            path = self.root / self.rels[int(index)]
            try:
                return decode_image(path, self.size, self.channels)
            except Exception as exc:  # noqa: BLE001 - a file whose pixels fail: named, never silent
                raise DataError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc}); fix or remove it") from None
        if isinstance(index, slice):
            return ImageFiles(self.root, self.rels[index], self.size, self.channels)
        picked = index.tolist() if isinstance(index, torch.Tensor) else list(index)
        return ImageFiles(self.root, [self.rels[int(i)] for i in picked], self.size, self.channels)

    def to(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.rels:
            return torch.zeros(tuple(self.shape), dtype=torch.uint8).to(*args, **kwargs)
        return torch.stack([self[i] for i in range(len(self))]).to(*args, **kwargs)

    def contiguous(self, **kwargs: Any) -> ImageFiles:
        return self  # decoded per batch: a memory format applies to the batch

    def fingerprint(self) -> bytes:
        """What identifies the data without decoding it: each file's path, size and mtime."""
        h = hashlib.sha256()
        for rel in self.rels:
            st = os.stat(self.root / rel)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.digest()


def _files_folder(
    folder: Folder, image_size: Any, channels: int | None, on_bad_file: str, warn: Callable[[str], None]
) -> dict[str, Any]:
    """Like _decode_folder, with the headers read and nothing decoded: ImageFiles per split."""
    size, channels, skipped = _probe_folder(folder, image_size, channels, on_bad_file, warn)
    bad = set(skipped)
    splits = {}
    for split, files in folder.files.items():
        kept = [(rel, label) for rel, label in files if rel not in bad]
        splits[split] = {
            "x": ImageFiles(folder.root, [rel for rel, _ in kept], size, channels),
            "y": torch.tensor([label for _, label in kept], dtype=torch.int64),
        }
    return {"splits": splits, "skipped": skipped, "size": list(size), "channels": channels}


def _load_cache(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt, never trusted
        return None


STATS_SAMPLE = 2000  # train images decoded for the mean and std when they are decoded per batch


def _stats_sample(files: Any, seed: int) -> torch.Tensor:
    """Up to STATS_SAMPLE train images, a seeded random choice, decoded: the normalisation's sample."""
    if len(files) <= STATS_SAMPLE:
        return files.to("cpu")
    pick = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed))[:STATS_SAMPLE]
    return files[pick.sort().values].to("cpu")


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), in [0, 1] units (std floored at 1e-3)."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for chunk in x.split(4096):  # bounded memory for large folders
        f = chunk.to(torch.float64).div_(255.0)
        total += f.sum(dim=(0, 2, 3))
        squares += f.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return [round(v, 6) for v in mean.tolist()], [round(v, 6) for v in std.tolist()]


def image_meta(
    class_names: list[str],
    channels: int,
    size: list[int],
    mean: list[float],
    std: list[float],
    task: str = "classification",
) -> dict[str, Any]:
    """The preprocessing a classifier of these images needs, as plain data for the checkpoint."""
    return {
        "kind": "image",
        "task": task,
        "class_names": list(class_names),
        "channels": channels,
        "image_size": list(size),
        "mean": list(mean),
        "std": list(std),
    }


def image_folder(
    root: str = "???",
    image_size: Any = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    on_bad_file: str = "fail",
    cache: bool = True,
    cache_dir: str | None = None,
    in_memory: bool = True,
    task: str = "classification",
    labels_file: str | None = None,
) -> DataSplits:
    """Classes from ROOT/train/<class>/, decoded to uint8 (N, C, H, W); see the module docstring.
    in_memory=False (data.in_memory): nothing is decoded up front or cached; the DataLoader's
    workers decode each batch's files (ImageFiles), and mean/std come from a sample of train.
    task=multilabel: the images and their 0/1 labels listed in `labels_file` (LabelledFolder)."""
    if on_bad_file not in ("skip", "fail"):
        raise DataError(f"data.on_bad_file={on_bad_file!r}: allowed: skip, fail")
    if (task == "multilabel") != (labels_file is not None):
        raise DataError(
            f"data.task={task!r} with data.labels_file={labels_file!r}: allowed: task=multilabel with a labels "
            "file, or task=classification with class folders"
        )
    root_path = Path(os.path.expanduser(str(root)))
    folder = Folder(root_path) if labels_file is None else LabelledFolder(root_path, labels_file)
    notes: list[str] = []
    settings = {"image_size": list(_as_size(image_size) or []), "channels": channels, "on_bad_file": on_bad_file}
    if isinstance(folder, LabelledFolder):
        settings["labels_file"] = str(folder.labels_path.resolve())
    decoded = None
    cache_path = None
    if not in_memory:
        decoded = _files_folder(folder, image_size, channels, on_bad_file, notes.append)
        notes.append(f"images: decoded per batch from {len(folder.files['train'])} train files (data.in_memory=false)")
    elif cache:
        cache_path = Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir()
        cache_path = cache_path / f"image_folder-{folder.key(settings)}.pt"
        decoded = _load_cache(cache_path) if cache_path.is_file() else None
        if decoded is not None:
            notes.append(f"image cache: used {cache_path}")
            notes += [
                f"skipped {root_path / rel}: not a readable image (found when the cache was built)"
                for rel in decoded["skipped"]
            ]
    if decoded is None:  # in memory, without a usable cache entry
        decoded = _decode_folder(folder, image_size, channels, on_bad_file, notes.append)
        if cache_path is not None:
            atomic_write(cache_path, lambda tmp: torch.save(decoded, tmp))
            notes.append(f"image cache: built {cache_path}")
    parts = decoded["splits"]
    if task == "multilabel":  # 0/1 per label, as the loss takes them: float32 (N, labels)
        width = len(folder.classes)
        for part in parts.values():
            part["y"] = part["y"].reshape(len(part["x"]), width).to(torch.float32)
    train = Split(parts["train"]["x"], parts["train"]["y"])
    cut = [f for split, f in (("val", val_fraction), ("test", test_fraction)) if split not in parts]
    pieces = _split_indices(len(train), cut, split_seed)
    taken = {}
    for split in ("val", "test"):
        if split in parts:
            taken[split] = Split(parts[split]["x"], parts[split]["y"])
        else:
            idx = pieces.pop(0)
            taken[split] = Split(train.x[idx], train.y[idx])
    rest = pieces.pop(0)
    train = Split(train.x[rest], train.y[rest])
    if len(train) == 0:
        raise DataError(f"data.root={str(root_path)!r}: no training images left after the val/test cut")
    mean, std = channel_stats(train.x if in_memory else _stats_sample(train.x, split_seed))
    meta = image_meta(folder.classes, decoded["channels"], decoded["size"], mean, std, task)
    return DataSplits(
        "image_folder", train, taken["val"], taken["test"], num_classes=len(folder.classes), meta=meta, notes=notes
    )
