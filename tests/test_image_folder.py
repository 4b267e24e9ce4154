"""data=image_folder: decoding, the split cut, the on-disk cache, bad files, and training."""

from __future__ import annotations

import os

import pytest
import torch
from made_data import CLASSES, image_folder, write_png

from nettrain.data.image_folder import image_folder as load
from nettrain.errors import DataError


def test_folder_is_decoded_to_uint8_with_its_own_size_channels_and_class_names(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=20, size=12, splits=("train", "test"))
    data = load(str(root), cache=False, val_fraction=0.2)
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (1, 12, 12)
    assert data.meta["class_names"] == list(CLASSES) and data.num_classes == 3
    # test/ is used as it is; val is cut from train (20% of 60), train keeps the rest
    assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 15)
    assert data.meta["channels"] == 1 and data.meta["image_size"] == [12, 12]
    assert 0 < data.meta["mean"][0] < 1 and 0 < data.meta["std"][0] < 1


def test_channels_and_image_size_convert_and_resize(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=4, size=12, channels=3)
    data = load(str(root), cache=False, channels=1, image_size=8)
    assert data.input_shape == (1, 8, 8) and len(data.meta["mean"]) == 1
    assert load(str(root), cache=False).input_shape == (3, 12, 12)


def test_mixed_sizes_need_an_image_size(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=4, size=12)
    write_png(root / "train" / CLASSES[0] / "big.png", torch.zeros(20, 20, dtype=torch.uint8).numpy())
    with pytest.raises(DataError, match=r"data.image_size=None: the images have 2 different sizes"):
        load(str(root), cache=False)
    assert load(str(root), cache=False, image_size=12).input_shape == (1, 12, 12)


def test_cache_is_built_then_used_and_rebuilt_when_a_file_changes(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=6)
    cache = tmp_path / "cache"
    first = load(str(root), cache_dir=str(cache))
    assert any(n.startswith("image cache: built") for n in first.notes)
    entries = list(cache.glob("image_folder-*.pt"))
    assert len(entries) == 1 and not list(cache.glob(".*tmp"))  # written atomically, no leftovers
    second = load(str(root), cache_dir=str(cache))
    assert any(n.startswith("image cache: used") for n in second.notes)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    # a changed file (new content, new size and mtime) gives a new key: the cache is rebuilt
    changed = root / "train" / CLASSES[1] / "000.png"
    write_png(changed, torch.full((12, 12), 255, dtype=torch.uint8).numpy())
    os.utime(changed, ns=(1, 1))
    third = load(str(root), cache_dir=str(cache))
    assert any(n.startswith("image cache: built") for n in third.notes)
    assert len(list(cache.glob("image_folder-*.pt"))) == 2
    # cache=False neither reads nor writes it
    assert load(str(root), cache=False, cache_dir=str(tmp_path / "off")).notes == []
    assert not (tmp_path / "off").exists()


def test_the_default_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = image_folder(tmp_path / "imgs", per_class=4)
    load(str(root))
    assert len(list((tmp_path / "xdg" / "nettrain").glob("image_folder-*.pt"))) == 1


def test_a_corrupt_image_is_named_and_skipped_only_when_asked(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=6)
    bad = root / "train" / CLASSES[2] / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=rf"{bad}: not a readable image .*data.on_bad_file=skip"):
        load(str(root), cache=False)
    data = load(str(root), cache=False, on_bad_file="skip")
    assert any(str(bad) in n and n.startswith("skipped") for n in data.notes)
    assert len(data.train) + len(data.val) + len(data.test) == 18


def test_a_folder_without_train_or_classes_is_explained(tmp_path):
    with pytest.raises(DataError, match=r"needs a train/ folder with one sub-folder per class"):
        load(str(tmp_path), cache=False)
    (tmp_path / "train" / "only").mkdir(parents=True)
    with pytest.raises(DataError, match=r"train/ needs at least 2 class folders"):
        load(str(tmp_path), cache=False)


# -- in_memory=false: files decoded per batch --------------------------------------------------------


def test_files_decoded_per_batch_stand_in_for_the_decoded_tensor(tmp_path):
    from nettrain.data.image_folder import ImageFiles, decode_image

    root = image_folder(tmp_path / "imgs", per_class=20, size=12, splits=("train", "test"))
    eager = load(str(root), cache=False, val_fraction=0.2)
    lazy = load(str(root), cache=False, val_fraction=0.2, in_memory=False)
    assert isinstance(lazy.train.x, ImageFiles) and not isinstance(eager.train.x, ImageFiles)
    # the same split cut, shapes, statistics and samples, none decoded up front
    assert lazy.input_shape == eager.input_shape and lazy.meta == eager.meta
    for split in ("train", "val", "test"):
        a, b = getattr(eager, split), getattr(lazy, split)
        assert torch.equal(a.y, b.y) and b.x.shape == a.x.shape and b.x.nbytes == a.x.nbytes
        assert torch.equal(b.x.to("cpu"), a.x)
    assert torch.equal(lazy.train.x[3], decode_image(root / lazy.train.x.rels[3], (12, 12), 1))
    assert torch.equal(lazy.train.x[torch.tensor([5, 1])].to("cpu"), eager.train.x[torch.tensor([5, 1])])
    assert any("decoded per batch" in n for n in lazy.notes)
    before = lazy.fingerprint()
    os.utime(root / lazy.train.x.rels[0], ns=(1, 1))  # a changed file changes the data's fingerprint
    assert load(str(root), cache=False, val_fraction=0.2, in_memory=False).fingerprint() != before


def test_a_file_whose_pixels_fail_is_named_when_its_batch_is_decoded(tmp_path):
    from nettrain.data.image_folder import ImageFiles

    root = image_folder(tmp_path / "imgs", per_class=4)
    good = root / "train" / CLASSES[0] / "000.png"
    bad = root / "train" / CLASSES[0] / "cut.png"
    bad.write_bytes(good.read_bytes()[:60])  # the header reads, the pixels do not
    files = ImageFiles(root, [str(bad.relative_to(root))], (12, 12), 1)
    with pytest.raises(DataError, match=rf"{bad}: cannot be decoded"):
        files[0]


def test_training_with_files_decoded_by_workers_gives_the_in_memory_runs_numbers(tmp_path):
    """in_memory=false with 2 DataLoader workers: the same sample order, so the same losses and
    weights as the decoded-in-memory run, and no cache written."""
    from conftest import make_cfg
    from nettrain.commands.train import train
    from nettrain.run.checkpoint import load_checkpoint
    from nettrain.run.metrics import read_metrics

    root = image_folder(tmp_path / "imgs", per_class=20, size=12, splits=("train", "test"))
    common = ["data=image_folder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "epochs=2"]
    common += ["batch_size=16", "model=cnn", "model.channels=[4,8]", "model.hidden=16"]
    train(make_cfg(*common), output_dir=tmp_path / "memory")
    (tmp_path / "cache").rename(tmp_path / "cache-of-the-first-run")
    train(make_cfg(*common, "data.in_memory=false", "data.num_workers=2"), output_dir=tmp_path / "files")
    assert not (tmp_path / "cache").exists()
    drop = ("epoch_time_s", "samples_per_s")
    rows = [
        [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(tmp_path / d)] for d in ("memory", "files")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 2
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["model"] for d in ("memory", "files"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".bmp", ".webp"])
def test_every_listed_image_format_is_found_and_decoded(tmp_path, suffix):
    from PIL import Image

    root = image_folder(tmp_path / "imgs", per_class=4, size=12)
    for png in list(root.rglob("*.png")):  # the same images in another format
        with Image.open(png) as img:
            img.save(png.with_suffix(suffix), quality=100) if suffix in (".jpg", ".jpeg") else img.save(
                png.with_suffix(suffix), **({"lossless": True} if suffix == ".webp" else {})
            )
        png.unlink()
    data = load(str(root), cache=False)
    channels = 3 if suffix == ".webp" else 1  # WebP has no grayscale mode: Pillow reads it as RGB
    assert len(data.train) + len(data.val) + len(data.test) == 12 and data.input_shape == (channels, 12, 12)
    assert data.train.x.dtype == torch.uint8 and data.meta["class_names"] == list(CLASSES)
