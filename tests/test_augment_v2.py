"""augment=... (torchvision.transforms.v2 per image, on the device): each transform changes the batch
and keeps its shape and dtype, draws only from the data generator, and resumes bit for bit."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from made_data import image_folder

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.engine.interrupt import StopRequest
from nettrain.errors import ConfigError
from nettrain.run.checkpoint import load_checkpoint

pytest.importorskip("torchvision.transforms.v2", reason="augment=... needs torchvision's transforms.v2 (0.15 or later)")

from nettrain.data.augment import ImageAugment  # noqa: E402  (after the skip: it builds v2 transforms)

# each transform on its own, as augment.KEY=VALUE
EACH = {
    "resized_crop": "augment.resized_crop=0.3",
    "flip": "augment.flip=true",
    "color_jitter": "augment.color_jitter=0.5",
    "randaugment": "augment.policy=randaugment",
    "trivialaugment": "augment.policy=trivialaugment",
    "erasing": "augment.erasing=1.0",
}
SETTINGS = {
    "resized_crop": {"resized_crop": 0.3},
    "flip": {"flip": True},
    "color_jitter": {"color_jitter": 0.5},
    "randaugment": {"policy": "randaugment"},
    "trivialaugment": {"policy": "trivialaugment"},
    "erasing": {"erasing": 1.0},
}
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised RGB images with structure (a ramp plus noise), as the loop hands them over."""
    g = torch.Generator().manual_seed(7)
    ramp = torch.linspace(0, 1, 12).view(1, 1, 1, 12).expand(n, 3, 12, 12)
    pixels = (0.6 * ramp + 0.4 * torch.rand(n, 3, 12, 12, generator=g)).clamp(0, 1)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (pixels - mean) / std, torch.arange(n) % 3


def augment(name: str, seed: int = 0) -> ImageAugment:
    return ImageAugment(MEAN, STD, (12, 12), **SETTINGS[name], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(SETTINGS))
def test_each_transform_changes_the_batch_and_keeps_its_shape_and_dtype(name):
    x, y = batch()
    out, same_y = augment(name)(x, y)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(same_y, y)
    changed = [not torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    assert sum(changed) >= 2, changed  # per image: some images changed (a flip leaves about half alone)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_draws_are_the_generators_and_the_global_rng_is_left_alone(name):
    x, y = batch()
    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    first, _ = augment(name, seed=3)(x, y)
    assert torch.equal(torch.rand(3), expected_next)  # dropout's draws are as if no augmentation ran
    torch.manual_seed(999)
    again, _ = augment(name, seed=3)(x, y)
    assert torch.equal(first, again)
    other, _ = augment(name, seed=4)(x, y)
    assert not torch.equal(first, other)


def test_each_image_gets_its_own_draw():
    x, _ = batch()
    same = x[:1].expand(8, -1, -1, -1).clone()
    out, _ = augment("resized_crop")(same, torch.zeros(8, dtype=torch.long))
    assert len({tuple(o.flatten()[:20].tolist()) for o in out}) > 1


def test_the_standard_preset_composes():
    cfg = make_cfg("augment=standard")
    assert dict(cfg.augment) == {
        "resized_crop": 0.35,
        "flip": True,
        "color_jitter": None,
        "policy": "trivialaugment",
        "erasing": 0.25,
    }
    assert make_cfg().augment.policy == "none"


# -- exact resume ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes of 12x12 RGB PNGs, 10 per class: 24 training images, 3 steps of 8 per epoch."""
    return image_folder(tmp_path_factory.mktemp("images") / "imgs", per_class=10, channels=3)


def common(folder: Path, cache: Path) -> list[str]:
    return [
        "data=image_folder",
        f"data.root={folder}",
        f"data.cache_dir={cache}",
        "data.val_fraction=0.1",
        "data.test_fraction=0.1",
        "regularization=dropout",  # the global RNG's draws too must come out the same
        "model.hidden=[32]",
        "epochs=2",
        "batch_size=8",
        "early_stopping.enabled=false",
        "grad_monitor.enabled=false",
    ]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def unaugmented(folder, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The control: the same run without augmentation, to show each augmented run differs from it."""
    out = tmp_path_factory.mktemp("unaugmented") / "run"
    train(make_cfg(*common(folder, out.parent / "cache")), output_dir=out)
    return weights(out)


@pytest.mark.parametrize("name", list(EACH))
def test_a_run_stopped_mid_epoch_resumes_bit_identically(folder, unaugmented, tmp_path, name):
    args = [*common(folder, tmp_path / "cache"), EACH[name]]
    straight, out = tmp_path / "straight", tmp_path / "run"
    train(make_cfg(*args), output_dir=straight)
    first = train(make_cfg(*args), output_dir=out, stop=StopRequest(after_steps=5))  # mid epoch 2
    assert first["status"] == "interrupted"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["step_in_epoch"] == 2
    train(make_cfg(*args, f"resume={out}"), output_dir=out)
    a, b = weights(straight), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert rows(straight) == rows(out)
    assert not all(torch.equal(a[k], unaugmented[k]) for k in a)  # the augmentation ran


def test_image_transforms_are_refused_for_data_that_is_no_images(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(make_cfg("augment=standard", "data=csv", "data.path=t.csv", "data.target=y"), output_dir=tmp_path)
    assert str(err.value).count("\n  - ") == 1
    assert (
        "augment.resized_crop=0.35, augment.flip=True, augment.policy='trivialaugment', augment.erasing=0.25: "
        "image transforms, and data=csv gives a table; allowed for image data only: augment=none"
    ) in str(err.value)
