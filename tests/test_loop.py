"""The loop and the small objects it calls: L1, early stopping with best-weight restore,
gradient means and their warnings, checkpoints, and parity with the tutorial's loop."""

from __future__ import annotations

import math

import pytest
import torch
from simplenet import SimpleNet
from torch import nn

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.data import Batches, mnist_sample
from nettrain.engine.early_stopping import EarlyStopping
from nettrain.engine.loop import l1_penalty
from nettrain.insight.grad_monitor import GradientMonitor
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.metrics import read_metrics

SHORT = ["data=synthetic", "data.num_samples=400", "epochs=3", "early_stopping.enabled=false"]


# -- the tutorial's loop, as a reference ------------------------------------------------------


def tutorial_loop(train_x, train_y, seed: int, epochs: int, batch_size: int, learning_rate: float):
    """The tutorial's pipeline: SimpleNet, CrossEntropyLoss, `param.data -= lr * param.grad`.
    Batches are drawn by shuffled index from a generator seeded with `seed`, as nettrain does."""
    torch.manual_seed(seed)
    model = SimpleNet()
    criterion = nn.CrossEntropyLoss()
    order = torch.Generator().manual_seed(seed)
    losses = []
    for _epoch in range(epochs):
        total = torch.zeros(())
        perm = torch.randperm(len(train_y), generator=order)
        for start in range(0, len(train_y), batch_size):
            idx = perm[start : start + batch_size]
            inputs, labels = train_x[idx].flatten(1), train_y[idx]
            outputs = model(inputs)
            loss = criterion(outputs, labels)
            total += loss.detach() * len(labels)
            model.zero_grad(set_to_none=True)
            loss.backward()
            for param in model.parameters():
                param.data -= learning_rate * param.grad
        losses.append((total / len(train_y)).item())
    return losses, model.state_dict()


def test_parity_with_the_tutorials_hand_written_loop(run):
    summary, out = run(
        "optimizer=manual_sgd",
        "lr=0.01",
        "epochs=3",
        "early_stopping.enabled=false",
        "early_stopping.restore_best=false",
        "seed=7",
    )
    data = mnist_sample()
    ref_losses, ref_weights = tutorial_loop(
        data.train.x, data.train.y, seed=7, epochs=3, batch_size=64, learning_rate=0.01
    )
    losses = [r["train_loss"] for r in read_metrics(out)]
    assert losses == ref_losses  # bit for bit (the CSV holds the full repr)
    weights = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert weights.keys() == ref_weights.keys()
    for key in ref_weights:
        assert torch.equal(weights[key], ref_weights[key]), key


# -- L1 ----------------------------------------------------------------------------------------
def test_l1_penalty_is_the_sum_of_absolute_weights():
    params = [torch.tensor([[1.0, -2.0]]), torch.tensor([[-3.0], [0.5]])]
    assert l1_penalty(params).item() == 6.5


def test_l1_term_is_added_to_the_loss_gradient(tmp_path):
    """With a huge l1, one manual-SGD step moves each weight by lr * (grad + l1 * sign(w)):
    compare two runs that differ only in l1."""
    common = [
        *SHORT,
        "epochs=1",
        "optimizer=manual_sgd",
        "lr=0.01",
        "data.num_samples=40",
        "batch_size=64",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
    ]
    train(make_cfg(*common, "regularization.l1=0"), output_dir=tmp_path / "a")
    train(make_cfg(*common, "regularization.l1=0.5"), output_dir=tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(0)  # the same init both runs saw
    from nettrain.models import MLP

    init = MLP((1, 28, 28), 10).state_dict()
    for key in ("fc1.weight", "fc2.weight"):  # one step: difference = -lr * l1 * sign(w0)
        assert torch.allclose(b[key] - a[key], -0.01 * 0.5 * torch.sign(init[key]), atol=1e-6)
    for key in ("fc1.bias", "fc2.bias"):  # biases are not penalised
        assert torch.allclose(b[key], a[key], atol=1e-6)


def test_l1_makes_weights_sparser(tmp_path):
    args = [*SHORT, "optimizer=sgd", "lr=0.05"]
    train(make_cfg(*args), output_dir=tmp_path / "plain")
    train(make_cfg(*args, "regularization=l1", "regularization.l1=1e-2"), output_dir=tmp_path / "l1")
    plain = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]["fc1.weight"]
    l1 = load_checkpoint(tmp_path / "l1" / "checkpoints" / "last.pt")["model"]["fc1.weight"]
    assert l1.abs().sum() < 0.8 * plain.abs().sum()


# -- early stopping ----------------------------------------------------------------------------
def test_early_stopping_counts_epochs_without_improvement():
    stopper = EarlyStopping(patience=3)
    flags = [stopper.update(v, e) for e, v in enumerate([1.0, 0.8, 0.9, 0.85, 0.81], start=1)]
    assert flags == [True, True, False, False, False] and stopper.should_stop
    assert (stopper.best, stopper.best_epoch) == (0.8, 2)
    maximise = EarlyStopping(monitor="val_acc", mode="max", patience=2, min_delta=0.01)
    assert [maximise.update(v, e) for e, v in enumerate([0.5, 0.505, 0.52], 1)] == [True, False, True]
    assert not maximise.should_stop
    off = EarlyStopping(patience=1, enabled=False)
    off.update(1.0, 1), off.update(2.0, 2)
    assert not off.should_stop and off.best_epoch == 1


def test_run_stops_after_3_epochs_without_improvement_and_restores_best_weights(run):
    # lr far too high after a good start: val loss gets worse and stopping must fire
    summary, out = run(
        "data=synthetic", "data.num_samples=600", "optimizer=sgd", "lr=0.5", "optimizer.momentum=0.9", "epochs=30"
    )
    rows = read_metrics(out)
    val = [r["val_loss"] for r in rows]
    best = min(range(len(val)), key=val.__getitem__)
    assert summary["stopped_early"] and summary["status"] == "early_stopped"
    assert len(rows) == best + 1 + 3 == summary["epochs_run"] < 30  # exactly patience epochs after the best
    assert summary["best_epoch"] == best + 1 and summary["best_val_loss"] == val[best]
    best_ckpt = load_checkpoint(out / "checkpoints" / "best.pt")
    last_ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert best_ckpt["epoch"] == best + 1 and last_ckpt["epoch"] == len(rows)
    # the test split was evaluated with the best weights: re-evaluate them and compare
    from nettrain.data import synthetic
    from nettrain.engine.loop import evaluate
    from nettrain.models import MLP

    model = MLP((1, 28, 28), 10)
    model.load_state_dict(best_ckpt["model"])
    data = synthetic(num_samples=600)
    test = evaluate(model, nn.CrossEntropyLoss(), Batches(data.test, 64, torch.device("cpu")))
    assert (test["loss"], test["acc"]) == pytest.approx((summary["test_loss"], summary["test_acc"]), rel=1e-6)
    model.load_state_dict(last_ckpt["model"])
    assert evaluate(model, nn.CrossEntropyLoss(), Batches(data.test, 64, torch.device("cpu")))["loss"] != pytest.approx(
        summary["test_loss"], rel=1e-6
    )


# -- gradient means ----------------------------------------------------------------------------
def test_gradient_monitor_records_mean_abs_grad_per_parameter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    monitor = GradientMonitor(model.named_parameters())
    expected = {n: 0.0 for n, _ in model.named_parameters()}
    for _ in range(3):
        model.zero_grad()
        model(torch.randn(6, 5)).pow(2).sum().backward()
        monitor.accumulate()
        for n, p in model.named_parameters():  # the tutorial's check: torch.abs(param.grad).mean()
            expected[n] += torch.abs(p.grad).mean().item() / 3
    means = monitor.end_epoch()
    assert list(means) == [f"grad_mean/{n}" for n in expected] + [f"grad_norm/{n}" for n in expected]
    assert [means[f"grad_mean/{n}"] for n in expected] == pytest.approx(list(expected.values()), rel=1e-6)
    assert monitor.end_epoch() == {}  # reset after each epoch


def test_gradient_monitor_leaves_out_overflowed_steps_when_asked():
    param = nn.Parameter(torch.zeros(4))
    monitor = GradientMonitor([("w", param)], skip_nonfinite=True)
    for grad in (torch.full((4,), 2.0), torch.full((4,), float("inf")), torch.full((4,), 4.0)):
        param.grad = grad
        monitor.accumulate()
    assert monitor.end_epoch() == {"grad_mean/w": 3.0, "grad_norm/w": 6.0}  # (2 + 4) / 2 finite steps
    plain = GradientMonitor([("w", param)])
    param.grad = torch.full((4,), float("inf"))
    plain.accumulate()
    assert math.isinf(plain.end_epoch()["grad_mean/w"])


def test_gradient_monitor_samples_every_nth_step():
    param = nn.Parameter(torch.zeros(2))
    monitor = GradientMonitor([("w", param)], every_n_steps=3)
    for value in (1.0, 100.0, 100.0, 4.0, 100.0, 100.0, 7.0):  # steps 1, 4, 7 are sampled
        param.grad = torch.full((2,), value)
        monitor.accumulate()
    assert monitor.end_epoch() == {"grad_mean/w": 4.0, "grad_norm/w": pytest.approx(4 * 2**0.5)}
    param.grad = torch.full((2,), 9.0)  # a new epoch starts sampling at its first step
    monitor.accumulate()
    assert monitor.end_epoch() == {"grad_mean/w": 9.0, "grad_norm/w": pytest.approx(9 * 2**0.5)}
