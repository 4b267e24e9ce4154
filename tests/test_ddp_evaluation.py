"""Evaluation and writing under torchrun: 2 gloo processes validate and test as one process does
(classification and regression, the metrics=[...] of torchmetrics and the per-class report
included), and only rank 0 writes in the run folder, a diverged run too.

The 2-process runs start their workers as torchrun would (tests/torchrun.py `workers`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from made_data import LABELS, multilabel_table, table
from torchrun import workers

from conftest import make_cfg
from nettrain.run.metrics import read_metrics

pytestmark = pytest.mark.slow

BASE = ["epochs=3", "early_stopping.enabled=false", "console.show_config=false", "console.show_model=false"]
CLASSIFICATION = ["data=synthetic", "data.num_samples=400"]
REGRESSION = ["data=csv", "data.target=value", "data.task=regression", "batch_size=32", "lr=1e-2"]
MULTILABEL = ["data=csv", f"data.target=[{','.join(LABELS)}]", "data.task=multilabel", "loss=bce_with_logits"]
MULTILABEL += ["batch_size=32", "lr=1e-2", "metrics=[f1_micro,f1_macro,recall_micro,auroc,average_precision]"]
# epoch 1 trains normally; the step scheduler then multiplies lr by 1e9: epoch 2 diverges
DIVERGING = ["data=synthetic", "data.num_samples=300", "model.hidden=[16]", "batch_size=32", "optimizer=sgd"]
DIVERGING += ["lr=0.05", "epochs=3", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=1e9"]


@pytest.mark.parametrize("task", ["classification", "regression", "multilabel"])
def test_two_processes_validate_and_test_as_one_process_does(task, tmp_path):
    from nettrain.commands.train import train

    if task == "multilabel":
        overrides = [*MULTILABEL, f"data.path={multilabel_table(tmp_path / 'm.csv', n=300)}", *BASE]
        metrics = ("loss", "acc", "f1_micro", "f1_macro", "recall_micro", "auroc", "average_precision")
    elif task == "regression":
        overrides = [*REGRESSION, f"data.path={table(tmp_path / 'r.csv', n=300, task='regression')}", *BASE]
        overrides.append("metrics=[rmse]")
        metrics = ("loss", "r2", "mae", "rmse")
    else:
        overrides = [*CLASSIFICATION, *BASE, "metrics=[f1_macro,precision_weighted,auroc,average_precision,top3_acc]"]
        metrics = ("loss", "acc", "f1_macro", "precision_weighted", "auroc", "average_precision", "top3_acc")
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
    if task == "multilabel":  # the per-label report: each label's counts over both ranks' shares
        report_one, report_two = (
            json.loads((tmp_path / r / "eval" / "test-report.json").read_text()) for r in ("one", "two")
        )
        assert report_two["label_confusion"] == report_one["label_confusion"] and report_two["samples"] == 30
    if task == "classification":  # the per-class report: the confusion matrix over both ranks' shares
        report_one, report_two = (
            json.loads((tmp_path / r / "eval" / "test-report.json").read_text()) for r in ("one", "two")
        )
        assert report_two["confusion_matrix"] == report_one["confusion_matrix"]
        assert report_two["samples"] == sum(map(sum, report_two["confusion_matrix"])) == 40


# In each worker: every atomic write (a temporary file, then os.replace) is recorded in a file per
# rank, and the plots are on (the workers helper turns them off).
RECORD_WRITES = """
import os, sys, tempfile
sys.argv = [a for a in sys.argv if a != "plots=false"] + ["plots=true"]
_log = os.path.join({folder!r}, "writes-rank" + os.environ["RANK"])
def _record(what, path):
    with open(_log, "a") as f:
        f.write(what + " " + os.path.abspath(os.fspath(path)) + "\\n")
_replace, _mkstemp = os.replace, tempfile.mkstemp
def replace(src, dst, *args, **kwargs):
    _record("replace", dst)
    return _replace(src, dst, *args, **kwargs)
def mkstemp(*args, **kwargs):
    fd, name = _mkstemp(*args, **kwargs)
    _record("temp", name)
    return fd, name
os.replace, tempfile.mkstemp = replace, mkstemp
"""


def writes(folder: Path, rank: int, run_dir: Path) -> list[str]:
    """What rank `rank` wrote inside `run_dir`: 'replace NAME' and 'temp NAME' lines, NAME relative."""
    log = folder / f"writes-rank{rank}"
    lines = log.read_text().splitlines() if log.exists() else []
    inside = [line.split(" ", 1) for line in lines if line.split(" ", 1)[1].startswith(str(run_dir.resolve()))]
    return [f"{what} {Path(path).relative_to(run_dir.resolve())}" for what, path in inside]


def test_a_diverged_run_under_torchrun_is_written_by_rank_0_alone(tmp_path):
    import fresh

    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    proc = fresh.torchrun(
        "nettrain.commands.train:main",
        "nettrain-train",
        *DIVERGING,
        "console.show_config=false",
        "console.show_model=false",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        setup=RECORD_WRITES.format(folder=str(logs)),
    )
    assert proc.returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"]) == ("diverged", 1), summary
    assert proc.stderr.count("the run diverged") >= 1
    assert writes(logs, 1, run_dir) == []  # rank 1 made no file in the run folder, not even a temporary one
    by_rank_0 = writes(logs, 0, run_dir)
    assert by_rank_0.count("replace summary.json") == 1, by_rank_0
    assert by_rank_0.count("replace plots/loss.png") == 1, by_rank_0
    assert (run_dir / "plots" / "loss.png").is_file()
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")) == []
