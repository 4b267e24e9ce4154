"""model=torchvision (any torchvision classifier, adapted to the data) and model=resnet (nettrain's CIFAR ResNet)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import QUIET, cli
from nettrain.models.from_torchvision import cache_path, torchvision_model
from nettrain.models.resnet import ResNet

TINY_IMAGES = [
    "data=synthetic",
    "data.num_samples=40",
    "data.input_shape=[3,32,32]",
    "data.num_classes=4",
    "batch_size=32",
    "epochs=1",
]


def _train(tmp_path, *overrides):
    """Train through nettrain-train (in this process): a run folder with its .hydra/, as a user has."""
    out = tmp_path / "run"
    result = cli(*QUIET, *overrides, f"hydra.run.dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads((out / "summary.json").read_text()), out


@pytest.mark.slow
def test_resnet18_trains_one_epoch_on_32x32_images(tmp_path):
    summary, out = _train(tmp_path, "model=torchvision", "model.name=resnet18", *TINY_IMAGES)
    assert summary["status"] == "completed" and summary["epochs_run"] == 1
    assert summary["param_count"] == 11_178_564  # resnet18 with 4 classes
    row = (out / "metrics.csv").read_text().splitlines()[1].split(",")
    assert all(float(v) == float(v) for v in row[:4])  # finite train/val losses
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["fc.weight"].shape == (4, 512)
    assert json.loads((out / "summary.json").read_text())["test_acc"] is not None
    _opens_without_trust(out, resume=False)  # resuming costs another resnet18 epoch; model=resnet's test resumes


def test_stem_channels_and_head_follow_the_data():
    model = torchvision_model((1, 32, 32), 7, "resnet18", small_input=True)
    assert model.conv1.weight.shape == (64, 1, 3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    assert sum(p.numel() for p in model.parameters()) == 11_171_271  # 7 classes, 1 channel, 3x3 stem
    mobile = torchvision_model((1, 28, 28), 5, "mobilenet_v3_small").eval()
    assert mobile.features[0][0].in_channels == 1 and mobile(torch.zeros(1, 1, 28, 28)).shape == (1, 5)


def test_vit_is_built_for_the_data_image_size():
    vit = torchvision_model((3, 32, 32), 3, "vit_b_16").eval()
    assert vit.image_size == 32 and vit(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_name_and_small_input_outside_resnets_say_what_is_allowed():
    with pytest.raises(ValueError, match=r"model.name='resnet19'.*did you mean resnet18"):
        torchvision_model((3, 32, 32), 10, "resnet19")
    with pytest.raises(ValueError, match="the CIFAR stem is for the ResNet family"):
        torchvision_model((3, 32, 32), 10, "mobilenet_v3_small", small_input=True)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_except_the_head_and_rgb_kernel_is_summed_for_gray(tmp_path, suffix, capsys):
    pretrained = torchvision_model((3, 64, 64), 1000, "resnet18")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in pretrained.state_dict().items()}, str(path))
    else:
        torch.save(pretrained.state_dict(), path)
    model = torchvision_model((1, 64, 64), 10, "resnet18", weights=str(path))
    assert torch.equal(model.layer1[0].conv1.weight, pretrained.layer1[0].conv1.weight)
    assert torch.allclose(model.conv1.weight, pretrained.conv1.weight.sum(dim=1, keepdim=True))
    assert model.fc.weight.shape == (10, 512)
    assert (
        "did not fit and keep their fresh initialisation: fc.bias, fc.weight" in capsys.readouterr().out
    )  # the head keeps its fresh initialisation


def test_torchvision_weights_come_from_its_cache_and_offline_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import ResNet18_Weights

    with pytest.raises(ValueError) as err:
        torchvision_model((3, 32, 32), 10, "resnet18", weights="DEFAULT")
    cached = cache_path(ResNet18_Weights.DEFAULT.url)
    assert str(cached) in str(err.value) and "downloading is off" in str(err.value)
    assert "model.download=true" in str(err.value) and ResNet18_Weights.DEFAULT.url in str(err.value)
    reference = torchvision_model((3, 32, 32), 1000, "resnet18")
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = torchvision_model((3, 32, 32), 1000, "resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(model.fc.weight, reference.fc.weight)
    with pytest.raises(ValueError, match="allowed: DEFAULT, IMAGENET1K_V1"):
        torchvision_model((3, 32, 32), 10, "resnet18", weights="IMAGENET9K")


def test_nettrain_resnet20_is_the_cifar_resnet_and_trains(tmp_path):
    assert sum(p.numel() for p in ResNet((3, 32, 32), 10, depth=20).parameters()) == 272_474
    with pytest.raises(ValueError, match="must be 6n \\+ 2"):
        ResNet((3, 32, 32), 10, depth=18)
    summary, out = _train(tmp_path, "model=resnet", "model.depth=8", "model.width=8", *TINY_IMAGES)
    assert summary["status"] == "completed"
    _opens_without_trust(out)


def _opens_without_trust(run_dir, resume=True):
    """A run of a model option nettrain ships is evaluated, exported and resumed as it is: no --trust."""
    from nettrain.commands.evaluate import main as eval_main
    from nettrain.commands.export import main as export_main

    assert eval_main([str(run_dir)]) == 0
    assert export_main([str(run_dir), "--format", "safetensors"]) == 0
    if not resume:
        return
    resumed = cli(f"resume={run_dir}", "epochs=2", cwd=run_dir.parent)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run_dir / "summary.json").read_text())["epochs_run"] == 2
