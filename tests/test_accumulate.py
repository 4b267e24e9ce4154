"""Gradient accumulation: `accumulate_steps` batches of B equal one batch of steps x B, the last
partial group included, and a run stopped inside a group resumes exactly."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.engine.accumulate import Accumulation, optimizer_steps
from nettrain.engine.loop import StopRequest
from nettrain.run.checkpoint import load_checkpoint

# 106 training samples: one batch of 40 -> batches 40, 40, 26; four batches of 10 -> 11 batches
# in groups of 4, 4, 3 holding 40, 40 and 26 samples (the last group short, its last batch partial).
# No batchnorm; momentum, warmup + cosine per step, clipping and L1 all act once per optimizer step.
SETUP = [
    "data=synthetic",
    "data.num_samples=132",
    "data.input_shape=[1,4,4]",
    "data.num_classes=3",
    "model.hidden=[16]",
    "optimizer=sgd",
    "lr=0.2",
    "optimizer.momentum=0.9",
    "scheduler=cosine",
    "scheduler.interval=step",
    "scheduler.warmup_ratio=0.2",
    "regularization.grad_clip=0.5",
    "regularization.l1=1e-3",
    "epochs=3",
    "early_stopping.enabled=false",
]


def rows(run):
    with open(run / "metrics.csv") as f:
        return [
            {k: float(v) for k, v in r.items() if not k.startswith(("epoch_time", "samples_per"))}
            for r in csv.DictReader(f)
        ]


def test_group_sizes_and_weights_count_the_true_samples():
    acc = Accumulation(torch.nn.Linear(2, 2), steps=4, num_samples=106, batch_size=10)
    opens, samples, closes = [], [], []
    for _ in range(11):
        starts, group_samples = acc.begin()
        opens.append(starts)
        samples.append(group_samples)
        closes.append(acc.end())
    assert samples == [40] * 8 + [26] * 3
    assert opens == [True, False, False, False] * 2 + [True, False, False]
    assert closes == [False, False, False, True] * 2 + [False, False, True]
    assert acc.index == 0 and optimizer_steps(11, 4) == 3


def test_accumulated_steps_equal_one_large_batch_including_a_partial_last_group(tmp_path):
    train(make_cfg(*SETUP, "batch_size=40"), output_dir=tmp_path / "large")
    train(make_cfg(*SETUP, "batch_size=10", "trainer.accumulate_steps=4"), output_dir=tmp_path / "accumulated")
    large = load_checkpoint(tmp_path / "large" / "checkpoints" / "last.pt")
    accumulated = load_checkpoint(tmp_path / "accumulated" / "checkpoints" / "last.pt")
    for key, value in large["model"].items():
        torch.testing.assert_close(accumulated["model"][key], value, rtol=1e-5, atol=1e-6)
    a, b = rows(tmp_path / "large"), rows(tmp_path / "accumulated")
    assert [r["lr"] for r in a] == pytest.approx([r["lr"] for r in b], rel=1e-9)  # 3 optimizer steps an epoch
    for ra, rb in zip(a, b):
        assert ra["val_loss"] == pytest.approx(rb["val_loss"], rel=1e-5)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)


def test_a_run_stopped_inside_a_group_resumes_exactly(tmp_path):
    args = [*SETUP, "batch_size=10", "trainer.accumulate_steps=4"]
    train(make_cfg(*args), output_dir=tmp_path / "straight")
    train(make_cfg(*args), output_dir=tmp_path / "resumed", stop=StopRequest(after_steps=14))  # epoch 2, mid-group
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert saved["progress"]["step_in_epoch"] == 3 and saved["accumulation"]["index"] == 3
    assert any(g is not None for g in saved["accumulation"]["grads"])  # the partial sums travel with it
    train(make_cfg(*args, f"resume={tmp_path / 'resumed'}"), output_dir=tmp_path / "resumed")
    assert rows(tmp_path / "resumed") == rows(tmp_path / "straight")
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_accumulate_steps_must_be_positive(cfg_for):
    from nettrain.config.schema import validate
    from nettrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.accumulate_steps=0: must be an integer >= 1"):
        validate(cfg_for("trainer.accumulate_steps=0"))
