"""The GPU-speed settings, checked on CPU: mixed precision (bf16, fp16 + GradScaler),
torch.compile, channels_last and fused optimizers."""

from __future__ import annotations

import pytest
import torch

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.config.schema import validate
from nettrain.engine.build import fused_kwargs
from nettrain.engine.loop import StopRequest
from nettrain.engine.precision import Precision
from nettrain.errors import ConfigError
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.metrics import read_metrics

SHORT = ["data=synthetic", "data.num_samples=400", "epochs=2", "early_stopping.enabled=false"]


def val_losses(run):
    return [r["val_loss"] for r in read_metrics(run)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_float32_but_not_identically(tmp_path, precision):
    train(make_cfg(*SHORT), output_dir=tmp_path / "fp32")
    summary = train(make_cfg(*SHORT, f"trainer.precision={precision}"), output_dir=tmp_path / precision)
    assert summary["precision"] == precision
    full, mixed = val_losses(tmp_path / "fp32"), val_losses(tmp_path / precision)
    assert mixed != full  # autocast really ran in lower precision
    assert mixed == pytest.approx(full, rel=0.05)


def test_autocast_lowers_the_matmul_precision():
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with Precision("bf16", "cpu").autocast():
        assert layer(x).dtype == torch.bfloat16
    with Precision("32", "cpu").autocast():
        assert layer(x).dtype == torch.float32


def test_fp16_uses_a_grad_scaler_whose_state_is_checkpointed_and_resumed(tmp_path):
    args = [*SHORT, "trainer.precision=fp16"]
    train(make_cfg(*args), output_dir=tmp_path / "straight")
    state = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert state["grad_scaler"]["scale"] > 1  # loss scaling was on
    train(make_cfg(*args), output_dir=tmp_path / "resumed", stop=StopRequest(after_steps=7))
    train(make_cfg(*args, f"resume={tmp_path / 'resumed'}"), output_dir=tmp_path / "resumed")
    assert val_losses(tmp_path / "resumed") == val_losses(tmp_path / "straight")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["grad_scaler"] == state["grad_scaler"]


def test_compile_compiles_the_model_in_place(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    train(make_cfg(*SHORT, "epochs=1", "trainer.compile=true"), output_dir=tmp_path / "run")
    assert compiled == ["MLP"]
    assert "fc1.weight" in load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    compiled.clear()
    train(make_cfg(*SHORT, "epochs=1"), output_dir=tmp_path / "plain")
    assert compiled == []


def test_channels_last_puts_conv_weights_in_nhwc(tmp_path):
    cnn = [*SHORT, "epochs=1", "model=cnn", "model.channels=[4,8]", "model.hidden=16"]
    train(make_cfg(*cnn, "trainer.channels_last=on"), output_dir=tmp_path / "nhwc")
    weight = load_checkpoint(tmp_path / "nhwc" / "checkpoints" / "last.pt")["model"]["conv2.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    train(make_cfg(*cnn), output_dir=tmp_path / "auto")  # auto: only on CUDA
    assert load_checkpoint(tmp_path / "auto" / "checkpoints" / "last.pt")["model"]["conv2.weight"].is_contiguous()


def test_fused_optimizers_on_cuda_only_by_default():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_kwargs("torch.optim.Adam", cuda) == {"fused": True}
    assert fused_kwargs("torch.optim.Adam", cpu) == {}
    assert fused_kwargs("torch.optim.RMSprop", cuda) == {}  # no fused kernel
    assert fused_kwargs("nettrain.optim.ManualSGD", cuda, "on") == {}
    assert fused_kwargs("torch.optim.AdamW", cpu, "on") == {"fused": True}
    assert fused_kwargs("torch.optim.SGD", cuda, "off") == {}


def test_fused_on_cpu_trains(tmp_path):
    summary = train(make_cfg(*SHORT, "epochs=1", "trainer.fused_optimizer=on"), output_dir=tmp_path / "run")
    assert summary["status"] == "completed"


def test_bad_trainer_settings_are_named():
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("trainer.precision=16", "trainer.channels_last=yes"))
    assert "trainer.precision='16': allowed: 32, bf16, fp16" in str(info.value)
    assert "trainer.channels_last='yes': allowed: auto, on, off" in str(info.value)
