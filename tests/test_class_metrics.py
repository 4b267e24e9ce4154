"""`metrics=[...]` (torchmetrics, nettrain/engine/metrics.py) and the per-class report
(nettrain/insight/class_report.py): the figures against scikit-learn's on the same predictions,
a run that reports, monitors and summarizes them, resumes exactly with them, and refuses the
names its task does not compute. The 2-process figures are in tests/test_ddp_evaluation.py."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from runs import FixedLogits
from torch import nn

from conftest import make_cfg
from nettrain.config.schema import problems
from nettrain.data import Batches, Split
from nettrain.engine.loop import evaluate
from nettrain.engine.metrics import Measures
from nettrain.errors import ConfigError
from nettrain.insight.class_report import class_report, report_lines
from nettrain.run.metrics import read_metrics


@pytest.fixture
def sklearn_metrics():
    """scikit-learn's metrics, the reference (imported by the tests that compare with it: the rest
    of this file runs without scikit-learn)."""
    return pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed: nothing to compare with")


CLASSIFICATION = ["f1_macro", "f1_micro", "f1_weighted", "precision_macro", "precision_weighted", "recall_macro"]
CLASSIFICATION += ["recall_micro", "auroc", "average_precision", "top2_acc", "acc"]


def predictions(n: int = 61, classes: int = 4, never_predicted: int | None = 3, seed: int = 0):
    """Logits and labels where every class occurs, mostly right, and class `never_predicted` is never the argmax."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    logits = torch.randn(n, classes, generator=g) + 1.5 * nn.functional.one_hot(y, classes)
    if never_predicted is not None:
        logits[:, never_predicted] -= 10.0
    return logits, y


def evaluated(logits: torch.Tensor, y: torch.Tensor, names: list[str], batch_size: int = 8):
    """evaluate() over batches of `batch_size`, with Measures of `names` and the confusion matrix."""
    x = torch.arange(len(y)).float().unsqueeze(1)
    measures = Measures(names, "classification", logits.shape[1], torch.device("cpu"), confusion=True)
    batches = Batches(Split(x, y), batch_size, torch.device("cpu"))
    figures = evaluate(FixedLogits(logits), nn.CrossEntropyLoss(), batches, "classification", 1.0, measures)
    return figures, measures.confusion_matrix


def test_f1_precision_recall_auroc_ap_and_top_k_equal_scikit_learns_on_the_same_predictions(sklearn_metrics):
    logits, y = predictions()
    figures, matrix = evaluated(logits, y, CLASSIFICATION)
    true, probs = y.numpy(), logits.softmax(dim=1).double().numpy()
    pred = probs.argmax(axis=1)
    assert 3 not in pred and set(true) == {0, 1, 2, 3}  # a class never predicted: precision 0 for it
    m = sklearn_metrics
    expected = {
        "acc": m.accuracy_score(true, pred),
        "auroc": m.roc_auc_score(true, probs, multi_class="ovr", average="macro"),
        "average_precision": m.average_precision_score(np.eye(4)[true], probs, average="macro"),
        "top2_acc": m.top_k_accuracy_score(true, probs, k=2),
    }
    for name in CLASSIFICATION:
        score, _, average = name.partition("_")
        if score in ("f1", "precision", "recall"):
            scorer = {"f1": m.f1_score, "precision": m.precision_score, "recall": m.recall_score}[score]
            expected[name] = scorer(true, pred, average=average, zero_division=0)
    assert list(figures) == ["loss", "acc", *(n for n in CLASSIFICATION if n != "acc")]  # acc: the loop's own
    for name, value in expected.items():
        assert figures[name] == pytest.approx(value, abs=1e-6), name
    assert matrix == m.confusion_matrix(true, pred, labels=range(4)).tolist()
    assert sum(map(sum, matrix)) == len(y) == 61


def test_macro_f1_over_the_classes_present_as_scikit_learn_averages(sklearn_metrics):
    logits, y = predictions(n=40, classes=5, never_predicted=None)
    keep = y != 4  # class 4: neither a label nor (after the shift) a prediction
    logits, y = logits[keep], y[keep]
    logits[:, 4] -= 10.0
    figures, matrix = evaluated(logits, y, ["f1_macro", "precision_macro"])
    pred = logits.argmax(dim=1).numpy()
    assert figures["f1_macro"] == pytest.approx(sklearn_metrics.f1_score(y.numpy(), pred, average="macro"), abs=1e-6)
    report = class_report(matrix)
    assert report["macro"]["f1"] == pytest.approx(figures["f1_macro"], abs=1e-6)
    assert report["macro"]["precision"] == pytest.approx(figures["precision_macro"], abs=1e-6)


def test_auroc_and_average_precision_average_over_the_classes_that_occur(sklearn_metrics):
    logits, y = predictions(n=45, classes=4, never_predicted=None)
    keep = y != 2  # class 2 never occurs: it has no ROC curve, and is not counted as 0
    logits, y = logits[keep], y[keep]
    figures, _ = evaluated(logits, y, ["auroc", "average_precision"])
    true, probs = y.numpy(), logits.softmax(dim=1).double().numpy()
    present = [0, 1, 3]
    auroc = np.mean([sklearn_metrics.roc_auc_score(true == c, probs[:, c]) for c in present])
    ap = np.mean([sklearn_metrics.average_precision_score(true == c, probs[:, c]) for c in present])
    assert figures["auroc"] == pytest.approx(auroc, abs=1e-6)
    assert figures["average_precision"] == pytest.approx(ap, abs=1e-6)


def test_the_per_class_report_is_scikit_learns_with_the_class_names(sklearn_metrics):
    logits, y = predictions(n=50, classes=3, never_predicted=2)
    _, matrix = evaluated(logits, y, [])
    report = class_report(matrix, ["cat", "dog", "emu"])
    pred = logits.argmax(dim=1).numpy()
    precision, recall, f1, support = sklearn_metrics.precision_recall_fscore_support(
        y.numpy(), pred, labels=range(3), zero_division=0
    )
    assert [row["class"] for row in report["per_class"]] == ["cat", "dog", "emu"]
    for i, row in enumerate(report["per_class"]):
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision[i], recall[i], f1[i]))
        assert row["support"] == support[i]
    assert report["samples"] == 50 and report["accuracy"] == pytest.approx((pred == y.numpy()).mean())
    weighted = sklearn_metrics.f1_score(y.numpy(), pred, average="weighted", zero_division=0)
    assert report["weighted"]["f1"] == pytest.approx(weighted)
    lines = report_lines(report)
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[3].split()[0] == "emu" and lines[3].split()[1:4] == ["0.0000"] * 3  # never predicted
    assert lines[-1].split()[0] == "macro" and lines[-1].split()[-1] == "50"


def test_with_many_classes_the_console_shows_the_lowest_f1_and_says_so():
    matrix = [[10 if i == j else 0 for j in range(30)] for i in range(30)]
    matrix[7][8], matrix[7][7] = 5, 5  # class 7 half wrong, class 8 predicted for it
    lines = report_lines(class_report(matrix))
    assert len(lines) == 1 + 10 + 1 + 1 and lines[-1] == "(10 of 30 classes: those with the lowest F1)"
    assert [line.split()[0] for line in lines[1:3]] == ["7", "8"]


def test_rmse_is_in_the_targets_units():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(29, 3), torch.randn(29, 1)
    measures = Measures(["rmse", "mae", "r2"], "regression", 1, torch.device("cpu"), target_std=2.5)
    batches = Batches(Split(x, y), 6, torch.device("cpu"))
    figures = evaluate(model, nn.MSELoss(), batches, "regression", 2.5, measures)
    err = (model(x) - y).detach().double().numpy()
    assert list(figures) == ["loss", "r2", "mae", "rmse"]  # r2 and mae: the loop's own sums
    assert figures["rmse"] == pytest.approx(math.sqrt((err**2).mean()) * 2.5, rel=1e-5)


def test_metric_names_are_checked_per_task_in_one_message():
    found = problems(make_cfg("data=synthetic", "metrics=[f1_macro,rmse,f1_average,top0_acc]"))
    assert found == [
        "metrics=['f1_macro', 'rmse', 'f1_average', 'top0_acc']: 'rmse', 'f1_average', 'top0_acc' not computed "
        "for data.task='classification'; allowed: acc, topK_acc, f1_macro, f1_micro, f1_weighted, precision_macro, "
        "precision_micro, precision_weighted, recall_macro, recall_micro, recall_weighted, auroc, average_precision "
        "(K a number, e.g. top5_acc)"
    ]
    regression = ["data=csv", "data.path=t.csv", "data.target=y", "data.task=regression"]
    assert problems(make_cfg(*regression, "metrics=[rmse,auroc]")) == [
        "metrics=['rmse', 'auroc']: 'auroc' not computed for data.task='regression'; allowed: mae, rmse, r2 "
        "(K a number, e.g. top5_acc)"
    ]
    assert problems(make_cfg("data=synthetic", "early_stopping.monitor=val_auroc")) == [
        "early_stopping.monitor='val_auroc': not reported for data.task='classification' (add it: metrics=[auroc]); "
        "allowed: val_loss, val_acc, or val_NAME with NAME in metrics"
    ]
    assert problems(make_cfg("data=synthetic", "metrics=[auroc,top3_acc]", "early_stopping.monitor=val_auroc")) == []


def test_a_top_k_above_the_class_count_is_refused_before_training(tmp_path):
    from nettrain.commands.train import train

    with pytest.raises(ConfigError) as info:
        train(make_cfg("data=synthetic", "data.num_samples=100", "metrics=[top12_acc]"), output_dir=tmp_path / "run")
    assert str(info.value).endswith(
        "metrics=['top12_acc']: top12_acc ranks the top 12 of 10 classes; allowed: top1_acc..top10_acc"
    )
    assert not (tmp_path / "run" / "metrics.csv").exists()


# -- a run with metrics -----------------------------------------------------------------------------

RUN = ["data=synthetic", "data.num_samples=300", "model.hidden=[32]", "batch_size=32", "epochs=3"]
RUN += ["metrics=[f1_macro,auroc]", "early_stopping.monitor=val_f1_macro", "early_stopping.patience=5"]


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A run monitoring val_f1_macro, with its plots; what it printed."""
    from nettrain.commands.train import train

    out = tmp_path_factory.mktemp("reported") / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = train(make_cfg(*RUN, "plots=true"), output_dir=out)
    return summary, out, printed.getvalue()


def test_a_run_reports_its_metrics_every_epoch_and_the_best_follows_the_monitored_one(reported):
    summary, out, printed = reported
    rows = read_metrics(out)
    assert [k for k in rows[0] if k.startswith("val_")] == ["val_loss", "val_acc", "val_f1_macro", "val_auroc"]
    best = max(rows, key=lambda r: (r["val_f1_macro"], -r["epoch"]))  # higher is better; the first such epoch
    assert summary["monitor"] == "val_f1_macro" and summary["best_epoch"] == best["epoch"]
    assert summary["best_val_f1_macro"] == best["val_f1_macro"] and summary["best_val_auroc"] == best["val_auroc"]
    assert 0 <= summary["test_f1_macro"] <= 1 and 0 <= summary["test_auroc"] <= 1
    header = next(line for line in printed.splitlines() if line.startswith("epoch"))
    assert header.split()[:6] == ["epoch", "train_loss", "val_loss", "val_acc", "val_f1_macro", "val_auroc"]
    test_row = next(line for line in printed.splitlines() if line.startswith("  test "))
    assert f"f1_macro {summary['test_f1_macro']:.4f}, auroc {summary['test_auroc']:.4f}" in test_row


def test_the_test_report_sums_to_the_test_size_and_its_macro_f1_is_the_summarys(reported):
    summary, out, printed = reported
    report = json.loads((out / "eval" / "test-report.json").read_text())
    assert report["split"] == "test" and sum(map(sum, report["confusion_matrix"])) == report["samples"] == 30
    assert sum(row["support"] for row in report["per_class"]) == 30
    assert report["class_names"] == [str(i) for i in range(10)]
    assert report["macro"]["f1"] == pytest.approx(summary["test_f1_macro"], abs=1e-6)
    assert report["accuracy"] == pytest.approx(summary["test_acc"], abs=1e-9)
    assert (out / "plots" / "confusion_matrix.png").stat().st_size > 1000
    lines = printed.splitlines()
    at = lines.index("per class, test split (eval/test-report.json):")
    assert lines[at + 1].split() == ["class", "precision", "recall", "f1", "support"]
    assert lines[at + 12].split()[0] == "macro"
    assert any(
        line.startswith("─") and " run completed " in line for line in lines[at + 13 :]
    )  # then the closing table


def test_nettrain_eval_gives_the_runs_test_figures_and_report(reported, capsys):
    from nettrain.commands.evaluate import main

    summary, out, _ = reported
    assert main([str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval" / "best-test.json").read_text())
    for name in ("acc", "f1_macro", "auroc"):
        assert result[f"test_{name}"] == pytest.approx(summary[f"test_{name}"], abs=1e-6), name
    report = json.loads((out / "eval" / "best-test-report.json").read_text())
    assert report["confusion_matrix"] == json.loads((out / "eval" / "test-report.json").read_text())["confusion_matrix"]
    assert (out / "eval" / "best-test-confusion_matrix.png").is_file()  # the run's plots=true
    assert f"per class ({out / 'eval' / 'best-test-report.json'}):" in printed.replace("\n", "")


def test_a_sweep_summary_shows_and_ranks_by_the_monitored_metric(reported, tmp_path):
    import shutil

    from nettrain.commands import summarize as S

    _, out, _ = reported
    for job, f1 in enumerate([0.2, 0.7, 0.4]):
        shutil.copytree(out, tmp_path / "s" / str(job), ignore=shutil.ignore_patterns("checkpoints", "plots"))
        path = tmp_path / "s" / str(job) / "summary.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"best_val_f1_macro": f1, "test_f1_macro": f1}))
    summary = S.collect([tmp_path / "s"])
    assert summary.monitor == "val_f1_macro" and summary.mode == "max" and summary.best == 1
    header, rows = S.table_rows(summary)
    assert {"best val_f1_macro", "best val_auroc", "test f1_macro", "test auroc"} <= set(header)
    assert [row[header.index("test f1_macro")] for row in rows] == ["0.2000", "0.7000", "0.4000"]
    assert "monitor val_f1_macro (higher is better)" in S.to_markdown(summary)


def test_a_resumed_run_with_metrics_is_the_uninterrupted_one(reported, tmp_path):
    from nettrain.commands.train import train
    from nettrain.engine.interrupt import StopRequest

    _, straight, _ = reported
    out = tmp_path / "run"
    train(make_cfg(*RUN), output_dir=out, stop=StopRequest(after_steps=11))  # in epoch 2 (8 steps an epoch)
    with pytest.raises(ConfigError) as info:  # other metrics would change metrics.csv's columns mid-run
        train(make_cfg(*RUN, "metrics=[f1_macro]", f"resume={out}"), output_dir=out)
    assert "metrics: ['f1_macro', 'auroc'] -> ['f1_macro']" in str(info.value)
    resumed = train(make_cfg(*RUN, f"resume={out}"), output_dir=out)
    timing = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(out)] == [
        {k: v for k, v in r.items() if k not in timing} for r in read_metrics(straight)
    ]
    first = json.loads((straight / "summary.json").read_text())
    for key in ("best_epoch", "best_val_f1_macro", "test_f1_macro", "test_auroc", "test_acc"):
        assert resumed[key] == first[key], key
    assert (out / "eval" / "test-report.json").read_text() == (straight / "eval" / "test-report.json").read_text()
