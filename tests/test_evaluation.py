"""The one evaluation (nettrain/engine/loop.py `evaluate`) against a hand computation over the whole split,
and the run folder's one writer (nettrain/run/folder.py RunWriter): everything on rank 0, nothing elsewhere.
The 2-process runs are in tests/test_ddp_evaluation.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from nettrain.data import Batches, Split
from nettrain.engine.loop import evaluate
from nettrain.run import launch
from nettrain.run.folder import RunWriter


def linear(inputs: int, outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(inputs, outputs)


def test_classification_loss_and_accuracy_are_the_means_over_the_whole_split():
    model = linear(5, 3)
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    result = evaluate(model, nn.CrossEntropyLoss(), Batches(Split(x, y), 7, torch.device("cpu")))  # 4 x 7 + 2
    logits = model(x).detach().double().numpy()
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(30), y.numpy()].mean()
    accuracy = (logits.argmax(axis=1) == y.numpy()).mean()
    assert list(result) == ["loss", "acc"]
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["acc"] == pytest.approx(accuracy, abs=1e-12)


def test_regression_loss_r2_and_mae_in_the_targets_units():
    model = linear(4, 1)
    x = torch.randn(23, 4)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.3 * torch.randn(23, 1)).float()
    result = evaluate(model, nn.MSELoss(), Batches(Split(x, y), 5, torch.device("cpu")), "regression", target_std=2.5)
    pred, target = model(x).detach().double().numpy(), y.double().numpy()
    err = pred - target
    assert list(result) == ["loss", "r2", "mae"]
    assert result["loss"] == pytest.approx((err**2).mean(), rel=1e-6)
    assert result["r2"] == pytest.approx(1 - (err**2).sum() / ((target - target.mean()) ** 2).sum(), rel=1e-6)
    assert result["mae"] == pytest.approx(np.abs(err).mean() * 2.5, rel=1e-6)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_rank_without_samples_contributes_zeros_to_the_sums(task):
    # 1 sample, 2 ranks: rank 1 has no share of the only batch, yet must take part in the all-reduce
    x = torch.randn(1, 3)
    y = torch.zeros(1, dtype=torch.long) if task == "classification" else torch.zeros(1, 1)
    batches = Batches(Split(x, y), 4, torch.device("cpu"), rank=1, world_size=2)
    assert list(batches) == []
    loss_fn = nn.CrossEntropyLoss() if task == "classification" else nn.MSELoss()
    result = evaluate(linear(3, 2 if task == "classification" else 1), loss_fn, batches, task)
    assert set(result.values()) == {0.0}


def test_the_writer_writes_on_rank_0_and_nothing_on_the_other_ranks(tmp_path, monkeypatch):
    from nettrain.engine.checkpointer import Checkpointer
    from nettrain.insight.report import save_plots
    from nettrain.run.metrics import MetricsWriter
    from nettrain.run.summary import RunStatus, RunSummary

    monkeypatch.chdir(tmp_path)  # a relative run folder, as `--out verify` or `hydra.run.dir=run` give
    rows = [{"epoch": 1, "train_loss": 1.0, "val_loss": 2.0, "lr": 0.1}]
    monkeypatch.setattr(launch, "_context", launch.Context(rank=1, world_size=2, backend="gloo"))
    other = RunWriter("run")
    assert not other.enabled
    called = []
    assert other.run(lambda: called.append(1) or "done") is None and called == []
    with other.lock():
        other.json("summary.json", {"a": 1})
        other.run(save_plots, rows, other.path("plots"))
        MetricsWriter(other.path("metrics.csv"), other).write(rows)
        Checkpointer(other.path("checkpoints"), {}, writer=other).save(None, None, is_best=True)
        summary = RunSummary(RunStatus.DIVERGED, error="the training loss became nan", epochs_run=1).write(other)
    assert summary["status"] == "diverged"  # every rank has the summary; rank 0 alone writes it
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(launch, "_context", launch.Context())  # one process: rank 0
    main = RunWriter("run")
    assert main.enabled and main.run(lambda: "done") == "done"
    with main.lock():
        main.json("summary.json", {"a": 1})
        MetricsWriter(main.path("metrics.csv"), main).write(rows)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".nettrain.lock", "metrics.csv", "summary.json"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == {"a": 1}
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("epoch,train_loss")
