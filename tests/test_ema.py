"""EMA of the weights: the average itself, its use for validation and test, and exact resume."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.engine.ema import EMA, inference_weights
from nettrain.engine.evaluation import evaluate_checkpoint
from nettrain.engine.loop import StopRequest
from nettrain.run.checkpoint import load_checkpoint

SETUP = [
    "data=synthetic",
    "data.num_samples=200",
    "data.input_shape=[1,6,6]",
    "data.num_classes=3",
    "model.hidden=[16]",
    "model.norm=batchnorm",
    "batch_size=32",
    "epochs=2",
    "early_stopping.enabled=false",
    "trainer.ema_decay=0.9",
]


def rows(run):
    with open(run / "metrics.csv") as f:
        return [
            {k: v for k, v in r.items() if not k.startswith(("epoch_time", "samples_per"))} for r in csv.DictReader(f)
        ]


def test_ema_moves_each_float_tensor_towards_the_model_and_copies_integer_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(4.0)
    model[1].num_batches_tracked += 5
    ema.update()
    assert torch.allclose(ema.weights["0.weight"], start + 1.0)  # 0.75 * w + 0.25 * (w + 4)
    assert ema.weights["1.num_batches_tracked"] == 5 and ema.updates == 1
    with ema.swapped_in() as swapped:
        assert torch.allclose(swapped[0].weight, start + 1.0)
    assert torch.allclose(model[0].weight, start + 4.0)  # the model's own weights are back
    with pytest.raises(ValueError, match=r"trainer.ema_decay=1.0: must be in \(0, 1\)"):
        EMA(model, decay=1.0)


def test_validation_best_checkpoint_and_test_use_the_ema_weights(tmp_path):
    summary = train(make_cfg(*SETUP), output_dir=tmp_path / "run")
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["ema"]["updates"] == 2 * 5  # 160 training samples / 32: 5 steps an epoch
    assert not torch.equal(last["ema"]["weights"]["fc1.weight"], last["model"]["fc1.weight"])
    assert inference_weights(last) is last["ema"]["weights"]
    # the epoch's val_loss is the EMA weights' (nettrain-eval picks the same weights)
    val = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt", split="val")
    assert val["val_loss"] == pytest.approx(float(rows(tmp_path / "run")[-1]["val_loss"]), rel=1e-6)
    best = evaluate_checkpoint(tmp_path / "run", split="test")  # best.pt
    assert best["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)
    # eval, predict and export build their model with the same (EMA) weights
    from nettrain.engine.build import build_trained

    model = build_trained(last, "last.pt", device="cpu").model
    assert all(torch.equal(v, last["ema"]["weights"][k]) for k, v in model.state_dict().items())
    plain = train(make_cfg(*SETUP, "trainer.ema_decay=null"), output_dir=tmp_path / "plain")
    assert plain["test_loss"] != pytest.approx(summary["test_loss"], rel=1e-3)  # the EMA changed what is tested


def test_ema_resume_is_exact(tmp_path):
    train(make_cfg(*SETUP), output_dir=tmp_path / "straight")
    train(make_cfg(*SETUP), output_dir=tmp_path / "resumed", stop=StopRequest(after_steps=7))
    train(make_cfg(*SETUP, f"resume={tmp_path / 'resumed'}"), output_dir=tmp_path / "resumed")
    assert rows(tmp_path / "resumed") == rows(tmp_path / "straight")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"]
    assert all(torch.equal(a["ema"]["weights"][k], b["ema"]["weights"][k]) for k in a["ema"]["weights"])


def test_ema_decay_is_checked_up_front(cfg_for):
    from nettrain.config.schema import validate
    from nettrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.ema_decay=1.5: must be null \(off\) or a number in \(0, 1\)"):
        validate(cfg_for("trainer.ema_decay=1.5"))
