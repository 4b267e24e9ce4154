"""Evaluation under torchrun: 2 gloo processes validate and test as one process does
(classification and regression).

The 2-process runs start their workers as torchrun would (tests/torchrun.py `workers`)."""

from __future__ import annotations

import json

import pytest
from made_data import table
from torchrun import workers

from conftest import make_cfg
from nettrain.metrics import read_metrics

pytestmark = pytest.mark.slow

BASE = ["epochs=3", "early_stopping.enabled=false", "console.show_config=false", "console.show_model=false"]
CLASSIFICATION = ["data=synthetic", "data.num_samples=400"]
REGRESSION = ["data=csv", "data.target=value", "data.task=regression", "batch_size=32", "lr=1e-2"]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_two_processes_validate_and_test_as_one_process_does(task, tmp_path):
    from nettrain.train import train

    if task == "regression":
        overrides = [*REGRESSION, f"data.path={table(tmp_path / 'r.csv', n=300, task='regression')}", *BASE]
        metrics = ("loss", "r2", "mae")
    else:
        overrides = [*CLASSIFICATION, *BASE]
        metrics = ("loss", "acc")
    one = train(make_cfg(*overrides, "plots=false"), output_dir=tmp_path / "one")
    proc = workers("nettrain-train", *overrides, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (one["world_size"], two["world_size"]) == (1, 2)
    rows_one, rows_two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["epoch"] for r in rows_one] == [r["epoch"] for r in rows_two] == [1, 2, 3]
    for a, b in zip(rows_one, rows_two):
        for key in ("train_loss", *(f"val_{m}" for m in metrics)):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (key, a["epoch"], a[key], b[key])
    for key in (f"test_{m}" for m in metrics):
        assert two[key] == pytest.approx(one[key], rel=1e-5), (key, one[key], two[key])
    assert (two["best_epoch"], two["best_val_loss"]) == (one["best_epoch"], pytest.approx(one["best_val_loss"], 1e-5))
