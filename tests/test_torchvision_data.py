"""data=cifar10 / cifar100 / torchvision on a tiny CIFAR written by the test in torchvision's layout."""

from __future__ import annotations

import pytest
import torch
from made_data import accept_tiny_cifar, tiny_cifar

from nettrain.data.vision import cifar10, cifar100, torchvision_classification
from nettrain.errors import DataError


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    accept_tiny_cifar(monkeypatch)
    tiny_cifar(tmp_path, "CIFAR10")
    tiny_cifar(tmp_path, "CIFAR100")
    return tmp_path


def test_cifar10_and_cifar100_load_as_uint8_with_class_names(cifar_root):
    data = cifar10(str(cifar_root), val_fraction=0.1)
    assert data.train.x.dtype == torch.uint8 and data.input_shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 20)
    assert data.meta["class_names"][:2] == ["class0", "class1"] and len(data.meta["mean"]) == 3
    assert cifar100(str(cifar_root)).num_classes == 100


def test_any_dataset_by_name_through_its_own_items_resized(cifar_root):
    data = torchvision_classification("CIFAR10", str(cifar_root), image_size=16, channels=1)
    assert data.input_shape == (1, 16, 16) and data.num_classes == 10


def test_missing_files_and_unknown_names_are_explained(tmp_path):
    with pytest.raises(DataError, match=r"data.root='.*': no CIFAR10 data found .* set data.download=true"):
        cifar10(str(tmp_path))
    with pytest.raises(DataError, match=r"data.name='Imagenette2': not a torchvision data set"):
        torchvision_classification("Imagenette2", str(tmp_path))
