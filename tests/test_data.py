"""Data: the offline MNIST sample, torchvision datasets from IDX files, synthetic data, batching."""

from __future__ import annotations

import os

import pytest
import torch

from conftest import write_mnist_raw
from nettrain.data import NORMALISATION, Batches, mnist_sample, synthetic, torchvision_dataset
from nettrain.errors import DataError


def test_mnist_sample_is_5000_real_digits_split_deterministically():
    data = mnist_sample()
    assert (len(data.train), len(data.val), len(data.test)) == (4000, 500, 500)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    assert torch.bincount(labels).tolist() == [500] * 10
    assert abs(data.train.x.mean().item()) < 0.1  # normalised with MNIST's mean and std
    again = mnist_sample()
    assert torch.equal(again.val.x, data.val.x) and torch.equal(again.test.y, data.test.y)
    other = mnist_sample(split_seed=1)
    assert not torch.equal(other.test.y, data.test.y)
    assert data.fingerprint() == again.fingerprint() != other.fingerprint()


def test_the_digits_are_parsed_once_per_file_version_and_each_run_gets_its_own_tensors(tmp_path, monkeypatch):
    import gzip

    import nettrain.data as data_module

    rows = [[(3 * i + j) % 256 for j in range(784)] + [i % 10] for i in range(20)]
    path = tmp_path / "mnist_5k.csv.gz"
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    monkeypatch.setattr(data_module, "mnist_sample_path", lambda: path)
    parsed = []
    loadtxt = data_module.np.loadtxt
    monkeypatch.setattr(data_module.np, "loadtxt", lambda *a, **k: parsed.append(a[0]) or loadtxt(*a, **k))
    first = mnist_sample(val_fraction=0.2, test_fraction=0.2)
    before = first.train.x.clone()
    first.train.x.add_(1.0)  # a run changing its own tensors changes nothing for the next
    second = mnist_sample(val_fraction=0.2, test_fraction=0.2)
    assert len(parsed) == 1
    assert torch.equal(second.train.x, before) and torch.equal(second.train.y, first.train.y)
    rows[0][-1] = 7  # a new version of the file is read again
    path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    mnist_sample(val_fraction=0.2, test_fraction=0.2)
    assert len(parsed) == 2


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_torchvision_datasets_load_idx_files_from_the_raw_folder(tmp_path, name):
    write_mnist_raw(tmp_path, name, n_train=100, n_test=30)
    data = torchvision_dataset(name=name, root=str(tmp_path), val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (80, 20, 30)
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.name == name
    assert data.test.y.tolist() == [i % 10 for i in range(30)]  # the official test split, in order
    mean, std = NORMALISATION[name]
    for image, label in zip(data.test.x, data.test.y.tolist()):  # each image's class blob is 255
        r, c = divmod(label, 5)
        assert image[0, 4 + r * 10, 2 + c * 5].item() == pytest.approx((1.0 - mean) / std)


def test_missing_torchvision_files_name_root_and_download(tmp_path):
    with pytest.raises(DataError) as info:
        torchvision_dataset(name="MNIST", root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert f"data.root='{tmp_path / 'nowhere'}'" in message
    assert "MNIST/raw" in message and "data.download=true" in message


def test_synthetic_is_deterministic_and_learnable():
    data = synthetic(num_samples=500, input_shape=[1, 4, 4], num_classes=3)
    assert (len(data.train), len(data.val), len(data.test)) == (400, 50, 50)
    assert torch.equal(synthetic(num_samples=500, input_shape=[1, 4, 4], num_classes=3).train.x, data.train.x)
    assert set(data.train.y.unique().tolist()) == {0, 1, 2}


def test_batches_cover_the_split_once_per_pass_in_a_seeded_order():
    data = synthetic(num_samples=100, input_shape=[1, 2, 2], num_classes=2, val_fraction=0.1, test_fraction=0.1)
    batches = Batches(data.train, 32, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 3
    first = list(batches)
    assert [len(y) for _, y in first] == [32, 32, 16]
    seen = torch.cat([x for x, _ in first]).flatten(1)
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, data.train.x.flatten(1).tolist()))
    second = list(batches)
    assert not torch.equal(first[0][0], second[0][0])  # a new permutation each pass
    again = list(Batches(data.train, 32, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))


def test_in_memory_and_dataloader_paths_give_the_same_batches():
    data = synthetic(num_samples=200, input_shape=[1, 4, 4], num_classes=3)
    fast = Batches(data.train, 16, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(3))
    loader = Batches(
        data.train, 16, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(3), in_memory=False
    )
    for _ in range(2):
        pairs = list(zip(fast, loader, strict=True))
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_atomic_writes_leave_no_temporaries_and_the_usual_mode(tmp_path):
    import os
    import stat

    from nettrain.files import write_json

    path = write_json(tmp_path / "sub" / "x.json", {"a": 1})
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
