"""Multi-label classification (data.task=multilabel): a separable table learns, its scores equal
scikit-learn's on the same predictions, a resumed run is the uninterrupted one, the combinations
that do not apply are refused with one message, image folders read a labels file, and
nettrain-predict, -eval and -export take the run. The 2-process figures are in
tests/test_ddp_evaluation.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from made_data import LABELS, multilabel_images, multilabel_table
from runs import FixedLogits, run_cli
from torch import nn

from conftest import make_cfg
from nettrain.data import Batches, Split
from nettrain.engine.loop import StopRequest, evaluate
from nettrain.engine.metrics import Measures
from nettrain.insight.class_report import class_report, report_lines
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.metrics import read_metrics

TARGET = f"data.target=[{','.join(LABELS)}]"
METRICS = "metrics=[f1_micro,f1_macro,precision_micro,recall_macro,auroc,average_precision]"


def run_args(path: Path) -> list[str]:
    return [
        "data=csv",
        f"data.path={path}",
        "data.task=multilabel",
        TARGET,
        "loss=bce_with_logits",
        METRICS,
        "early_stopping.monitor=val_f1_micro",
        "early_stopping.enabled=false",
        "epochs=4",
        "lr=1e-2",
        "batch_size=32",
        "model.hidden=[16]",
        "plots=false",
    ]


STEPS_PER_EPOCH = 8  # 240 training rows / 32


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    return multilabel_table(tmp_path_factory.mktemp("ml") / "tags.csv", n=300)


@pytest.fixture(scope="module")
def straight(table, tmp_path_factory):
    """The uninterrupted run and its summary."""
    from nettrain.commands.train import train

    out = tmp_path_factory.mktemp("straight") / "run"
    return out, train(make_cfg(*run_args(table)), output_dir=out)


def test_a_separable_multilabel_table_learns(straight):
    out, summary = straight
    assert summary["status"] == "completed"
    assert summary["class_names"] == list(LABELS)
    assert summary["test_f1_micro"] >= 0.8 and summary["test_f1_macro"] >= 0.8, summary
    assert summary["test_acc"] >= 0.8 and summary["test_auroc"] >= 0.9
    rows = read_metrics(out)
    assert rows[-1]["val_f1_micro"] > rows[0]["val_f1_micro"] - 0.05 and rows[-1]["val_loss"] < rows[0]["val_loss"]
    best = max(rows, key=lambda r: r["val_f1_micro"])  # early_stopping.monitor=val_f1_micro: max is best
    assert summary["best_epoch"] == best["epoch"]
    report = json.loads((out / "eval" / "test-report.json").read_text())
    assert report["task"] == "multilabel" and [r["class"] for r in report["per_class"]] == list(LABELS)
    assert report["micro"]["f1"] == pytest.approx(summary["test_f1_micro"], abs=1e-6)
    assert report["macro"]["f1"] == pytest.approx(summary["test_f1_macro"], abs=1e-6)
    for row, ((tn, fp), (fn, tp)) in zip(report["per_class"], report["label_confusion"]):
        assert tn + fp + fn + tp == report["samples"] == 30 and row["support"] == tp + fn


# -- the figures against scikit-learn's -------------------------------------------------------------


def test_the_scores_and_the_report_equal_scikit_learns_on_the_same_predictions():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed: nothing to compare with")
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(53, 4, generator=g) < 0.4).float()
    logits = torch.randn(53, 4, generator=g) + 2.0 * (y - 0.5)
    logits[:, 3] = -5.0  # a label never predicted: its precision and F1 are 0, as scikit-learn's zero_division=0
    names = ["f1_micro", "f1_macro", "f1_weighted", "precision_micro", "precision_macro", "recall_micro"]
    names += ["recall_macro", "auroc", "average_precision", "acc"]
    measures = Measures(names, "multilabel", 4, torch.device("cpu"), confusion=True)
    batches = Batches(Split(torch.arange(53).float().unsqueeze(1), y), 8, torch.device("cpu"))
    figures = evaluate(FixedLogits(logits), nn.BCEWithLogitsLoss(), batches, "multilabel", 1.0, measures)
    true, predicted, probs = y.int().numpy(), (logits > 0).int().numpy(), logits.sigmoid().numpy()
    for score, average in [(n.rsplit("_", 1)[0], n.rsplit("_", 1)[1]) for n in names[:7]]:
        function = getattr(metrics, f"{score}_score")
        expected = function(true, predicted, average=average, zero_division=0)
        assert figures[f"{score}_{average}"] == pytest.approx(expected, abs=1e-6), (score, average)
    assert figures["auroc"] == pytest.approx(metrics.roc_auc_score(true, probs, average="macro"), abs=1e-6)
    assert figures["average_precision"] == pytest.approx(metrics.average_precision_score(true, probs), abs=1e-6)
    assert figures["acc"] == pytest.approx(1 - metrics.hamming_loss(true, predicted), abs=1e-6)
    assert figures["loss"] == pytest.approx(nn.BCEWithLogitsLoss()(logits, y).item(), abs=1e-6)
    assert measures.confusion_matrix == metrics.multilabel_confusion_matrix(true, predicted).tolist()
    report = class_report(measures.confusion_matrix, ["a", "b", "c", "d"])
    assert report["micro"]["f1"] == pytest.approx(metrics.f1_score(true, predicted, average="micro"), abs=1e-9)
    assert report["macro"]["f1"] == pytest.approx(
        metrics.f1_score(true, predicted, average="macro", zero_division=0), abs=1e-9
    )
    assert [r["support"] for r in report["per_class"]] == true.sum(axis=0).tolist()
    lines = report_lines(report)
    assert lines[0].startswith("label") and lines[-2].startswith("micro") and lines[-1].startswith("macro")


# -- resume -----------------------------------------------------------------------------------------
def test_a_resumed_multilabel_run_is_the_uninterrupted_one(straight, table, tmp_path):
    from nettrain.commands.train import train

    reference, first = straight
    out = tmp_path / "run"
    train(make_cfg(*run_args(table)), output_dir=out, stop=StopRequest(after_steps=STEPS_PER_EPOCH + 3))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["progress"]["step_in_epoch"] == 3
    resumed = train(make_cfg(*run_args(table), f"resume={out}"), output_dir=out)
    drop = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(out)] == [
        {k: v for k, v in r.items() if k not in drop} for r in read_metrics(reference)
    ]
    wa, wb = (load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in (reference, out))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for key in ("best_epoch", "test_loss", "test_acc", "test_f1_micro", "test_f1_macro", "test_auroc"):
        assert resumed[key] == first[key], key


# -- what does not apply ----------------------------------------------------------------------------


BASE = ["data=csv", "data.path=tags.csv", "data.task=multilabel", TARGET, "epochs=1"]
REFUSED = [
    ([], "loss=torch.nn.CrossEntropyLoss: does not fit multilabel data, whose loss takes N x L logits and one 0/1 "
     "target per label; allowed: torch.nn.BCEWithLogitsLoss (loss=bce_with_logits)"),
    (["loss.label_smoothing=0.1"], "loss=torch.nn.CrossEntropyLoss: does not fit multilabel data"),
    (["loss=bce_with_logits", "+loss.label_smoothing=0.1"],
     "loss.label_smoothing=0.1: applies to single-label classes; data.task='multilabel' allowed: 0"),
    (["loss=bce_with_logits", "+loss.class_weights=balanced"],
     "loss.class_weights='balanced': applies to single-label classes; data.task='multilabel' allowed: null"),
    (["loss=bce_with_logits", "data.sampler=balanced"],
     "data.sampler='balanced': applies to single-label classes; data.task='multilabel' allowed: 'shuffle'"),
    (["loss=bce_with_logits", "metrics=[top2_acc]"], "'top2_acc' not computed for data.task='multilabel'; allowed: acc,"),
    (["loss=bce_with_logits", "data.target=red"], "data.target='red': data.task=multilabel takes a list of 0/1 label"),
    (["loss=bce_with_logits", "data.task=classification"],
     "loss=torch.nn.BCEWithLogitsLoss: does not fit classification data"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), REFUSED, ids=[" ".join(a) or "cross_entropy" for a, _ in REFUSED])
def test_what_does_not_apply_to_multilabel_data_exits_2_with_one_message(monkeypatch, capsys, tmp_path, args, message):
    multilabel_table(tmp_path / "tags.csv", n=40)
    code, err = run_cli(monkeypatch, capsys, tmp_path, *BASE, *args)
    assert code == 2, err
    assert message in err and err.count("Error:") == 1 and "Traceback" not in err
    if "data.task=classification" in args:  # and the list of targets is refused too
        assert "data.target=['red', 'round', 'large']: several target columns are for data.task=multilabel" in err
    else:
        assert "problems)" not in err, err  # one problem: "Invalid config (N problems)" lists several
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.csv"]


def test_label_columns_must_hold_0_or_1(tmp_path):
    from nettrain.data.tabular import csv as read_csv
    from nettrain.errors import DataError

    path = multilabel_table(tmp_path / "tags.csv", n=20)
    text = path.read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ",2"
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"column 'large' = '2' in row 3 \(line 4 of the file\); .*allowed: 0 or 1"):
        read_csv(str(path), target=list(LABELS), task="multilabel")


# -- image folders ----------------------------------------------------------------------------------
def test_an_image_folder_with_a_labels_file_loads(tmp_path):
    from nettrain.data.image_folder import image_folder

    root = multilabel_images(tmp_path / "imgs", n=40)
    data = image_folder(
        str(root), task="multilabel", labels_file="labels.csv", cache_dir=str(tmp_path / "cache"), test_fraction=0.25
    )
    assert data.task == "multilabel" and data.num_classes == 2 and data.meta["class_names"] == ["left", "right"]
    assert (len(data.train), len(data.val), len(data.test)) == (26, 4, 10)
    assert data.train.y.dtype == torch.float32 and data.train.y.shape == (26, 2)
    labels = {row["file"]: (int(row["left"]), int(row["right"])) for row in csv.DictReader(open(root / "labels.csv"))}
    assert sorted(map(tuple, torch.cat([data.train.y, data.val.y, data.test.y]).int().tolist())) == sorted(
        labels.values()
    )
    x, y = data.train.x.float(), data.train.y  # the bright half is the label
    half = x.shape[-1] // 2
    assert torch.equal((x[..., :half].mean(dim=(1, 2, 3)) > 150).float(), y[:, 0])
    again = image_folder(str(root), task="multilabel", labels_file="labels.csv", cache_dir=str(tmp_path / "cache"))
    assert torch.equal(
        again.train.y, image_folder(str(root), task="multilabel", labels_file="labels.csv", cache=False).train.y
    )


def test_a_labels_file_that_does_not_fit_is_named(tmp_path):
    from nettrain.data.image_folder import image_folder
    from nettrain.errors import DataError

    root = multilabel_images(tmp_path / "imgs", n=12)
    (root / "bad.csv").write_text("file,left,right\ntrain/000.png,1,yes\n")
    with pytest.raises(DataError, match=r"data.labels_file='bad.csv': line 2 .*allowed: a file path, then 0 or 1"):
        image_folder(str(root), task="multilabel", labels_file="bad.csv", cache=False)
    (root / "gone.csv").write_text("file,left,right\ntrain/999.png,1,0\n")
    with pytest.raises(DataError, match=r"'train/999.png' is not an image file under data.root"):
        image_folder(str(root), task="multilabel", labels_file="gone.csv", cache=False)


# -- predict, eval, export --------------------------------------------------------------------------
def test_predict_prints_each_labels_probability_and_decision(straight, table, tmp_path, capsys):
    from nettrain.commands.predict import main

    out, _ = straight
    assert main([str(out), str(table), "--out", str(tmp_path / "p.csv")]) == 0
    printed = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert list(printed[0]) == ["input", "prediction", *(f"{k}{s}" for k in LABELS for s in ("", "_probability"))]
    rows = list(csv.DictReader(open(table)))
    right = 0
    for row, truth in zip(printed, rows):
        for label in LABELS:
            p = float(row[f"{label}_probability"])
            assert 0 < p < 1 and row[label] == str(int(p > 0.5))
            right += row[label] == truth[label]
        assert row["prediction"] == ";".join(label for label in LABELS if row[label] == "1")
    assert right / (3 * len(rows)) >= 0.8  # the label accuracy over the whole table
    assert main([str(out), str(table), "--threshold", "0.9", "--out", str(tmp_path / "q.csv")]) == 0
    strict = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    for a, b in zip(printed, strict):
        for label in LABELS:
            assert b[label] == str(int(float(b[f"{label}_probability"]) > 0.9))
            assert b[f"{label}_probability"] == a[f"{label}_probability"] and b[label] <= a[label]
    for bad in ("0", "1", "1.5"):
        assert main([str(out), str(table), "--threshold", bad]) == 2
        assert f"Error: --threshold={bad}: must be a number in (0, 1)" in capsys.readouterr().err


def test_eval_and_export_take_a_multilabel_run(straight, table, capsys):
    from nettrain.commands.evaluate import main as evaluate_main
    from nettrain.commands.export import main as export_main

    out, summary = straight
    assert evaluate_main([str(out)]) == 0
    result = json.loads((out / "eval" / "best-test.json").read_text())
    for key in ("test_loss", "test_acc", "test_f1_micro", "test_auroc"):
        assert result[key] == pytest.approx(summary[key], abs=1e-6), key
    printed = capsys.readouterr().out
    assert "micro" in printed and "per label" in printed and "per class" not in printed
    assert evaluate_main([str(out), "--data", str(table)]) == 0  # the whole table, labels from its columns
    (result,) = [p for p in (out / "eval").glob("best-tags.csv-*.json") if not p.name.endswith("-report.json")]
    assert json.loads(result.read_text())["data_f1_micro"] >= 0.8
    assert export_main([str(out), "--format", "safetensors"]) == 0
    sidecar = json.loads(next((out / "export").glob("*.safetensors.json")).read_text())
    assert sidecar["output"]["class_names"] == list(LABELS) and "sigmoid" in sidecar["output"]["meaning"]
