"""Training on the new data options through the run: image folders, CSV tables, a tiny CIFAR,
augmentation with exact resume, the preprocessing kept in checkpoints, and nettrain-predict."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from made_data import CLASSES, accept_tiny_cifar, image_folder, table, tiny_cifar

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.errors import ConfigError
from nettrain.run.checkpoint import load_checkpoint

FAST = ["epochs=4", "batch_size=16", "lr=3e-3", "early_stopping.enabled=false"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes of 12x12 grayscale PNGs: 30 per class in train/, 7 per class in test/."""
    return image_folder(tmp_path_factory.mktemp("images") / "imgs", per_class=30, splits=("train", "test"))


@pytest.fixture(scope="module")
def folder_run(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("folder_run") / "run"
    cache = tmp_path_factory.mktemp("cache")
    train(make_cfg("data=image_folder", f"data.root={folder}", f"data.cache_dir={cache}", *FAST), output_dir=out)
    return out


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


# -- image folders ---------------------------------------------------------------------------------
def test_training_on_an_image_folder_reaches_95_percent_on_separable_images(folder_run):
    summary = json.loads((folder_run / "summary.json").read_text())
    assert summary["test_acc"] >= 0.95, summary
    assert summary["class_names"] == list(CLASSES)


def test_the_checkpoint_keeps_the_preprocessing(folder_run):
    prep = load_checkpoint(folder_run / "checkpoints" / "last.pt")["preprocessing"]
    assert prep["class_names"] == list(CLASSES) and prep["kind"] == "image" and prep["task"] == "classification"
    assert prep["channels"] == 1 and prep["image_size"] == [12, 12] and prep["input_shape"] == [1, 12, 12]
    assert len(prep["mean"]) == len(prep["std"]) == 1 and prep["num_classes"] == 3


def test_the_run_says_whether_it_built_or_used_the_cache(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    common = ["data=image_folder", f"data.root={folder}", f"data.cache_dir={cache}", "epochs=1"]
    train(make_cfg(*common), output_dir=tmp_path / "a")
    assert "image cache: built" in capsys.readouterr().out
    train(make_cfg(*common), output_dir=tmp_path / "b")
    assert "image cache: used" in capsys.readouterr().out
    train(make_cfg(*common, "data.cache=false"), output_dir=tmp_path / "c")
    assert "image cache" not in capsys.readouterr().out


def test_a_corrupt_image_stops_the_run_naming_it(folder, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(folder, root)
    bad = root / "train" / CLASSES[0] / "zz-broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=rf"{bad}: not a readable image"):
        train(
            make_cfg("data=image_folder", f"data.root={root}", "data.cache=false", "epochs=1"),
            output_dir=tmp_path / "run",
        )


# -- augmentation and exact resume ----------------------------------------------------------------
AUGMENTED = [
    "data.augment=flip_crop",
    "data.crop_padding=2",
    "data.mix=cutmix",
    "data.mix_alpha=1.0",
    "regularization=dropout",
    "epochs=2",
    "batch_size=16",
    "early_stopping.enabled=false",
]


def test_resume_mid_epoch_with_augmentation_on_is_bit_identical(folder, tmp_path):
    from nettrain.engine.interrupt import StopRequest

    common = ["data=image_folder", f"data.root={folder}", f"data.cache_dir={tmp_path / 'cache'}", *AUGMENTED]
    straight = tmp_path / "straight"
    train(make_cfg(*common), output_dir=straight)
    out = tmp_path / "run"
    first = train(make_cfg(*common), output_dir=out, stop=StopRequest(after_steps=7))  # 72 samples: 5 steps/epoch
    assert first["status"] == "interrupted"
    train(make_cfg(*common, f"resume={out}"), output_dir=out)
    a, b = load_checkpoint(straight / "checkpoints" / "last.pt"), load_checkpoint(out / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    drop = ("epoch_time_s", "samples_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in read_rows(straight / "metrics.csv")] == [
        {k: v for k, v in r.items() if k not in drop} for r in read_rows(out / "metrics.csv")
    ]
    # the augmentation ran: cutmix's soft targets keep the training loss well above a hard-label run's
    assert float(read_rows(straight / "metrics.csv")[-1]["train_loss"]) > 0.2


def test_augmentation_settings_are_validated(folder):
    with pytest.raises(ConfigError) as err:
        train(
            make_cfg(
                "data=image_folder",
                f"data.root={folder}",
                "data.augment=rotate",
                "data.mix=blend",
                "data.mix_alpha=0",
                "loss._target_=torch.nn.NLLLoss",
            ),
            output_dir=Path("unused"),
        )
    text = str(err.value)
    assert "data.augment='rotate': allowed: none, flip, crop, flip_crop" in text
    assert "data.mix='blend': allowed: none, mixup, cutmix" in text
    assert "data.mix_alpha=0: must be a number > 0" in text


def test_mixing_needs_a_loss_that_takes_soft_targets(folder):
    with pytest.raises(
        ConfigError,
        match=r"data.mix=.mixup.: gives soft targets .*NLLLoss.* does not take; allowed: torch.nn.CrossEntropyLoss",
    ):
        train(
            make_cfg(
                "data=image_folder",
                f"data.root={folder}",
                "data.mix=mixup",
                "loss._target_=torch.nn.NLLLoss",
                "~loss.label_smoothing",
            ),
            output_dir=Path("unused"),
        )


# -- tables -----------------------------------------------------------------------------------------
def test_csv_classification_learns(tmp_path):
    path = table(tmp_path / "t.csv", n=400)
    summary = train(
        make_cfg(
            "data=csv",
            f"data.path={path}",
            "data.target=label",
            "epochs=8",
            "batch_size=32",
            "lr=1e-2",
            "early_stopping.enabled=false",
        ),
        output_dir=tmp_path / "run",
    )
    assert summary["test_acc"] >= 0.85, summary
    assert summary["class_names"] == ["high", "low"]


def test_csv_regression_learns_with_mse_r2_and_mae(tmp_path):
    path = table(tmp_path / "r.csv", n=400, task="regression")
    summary = train(
        make_cfg(
            "data=csv",
            f"data.path={path}",
            "data.target=value",
            "data.task=regression",
            "data.categorical=embed",
            "epochs=10",
            "batch_size=32",
            "lr=1e-2",
            "early_stopping.enabled=false",
            "early_stopping.monitor=val_r2",
        ),
        output_dir=tmp_path / "run",
    )
    assert summary["test_r2"] >= 0.9 and summary["test_mae"] < 2.0, summary
    assert "test_acc" not in summary and "best_val_acc" not in summary  # regression has no accuracy
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert "val_r2" in rows[0] and "val_mae" in rows[0] and "val_acc" not in rows[0]
    assert float(rows[-1]["val_r2"]) > float(rows[0]["val_r2"])


def test_csv_settings_are_validated(tmp_path):
    path = table(tmp_path / "t.csv")
    with pytest.raises(ConfigError) as err:
        train(
            make_cfg(
                "data=csv",
                f"data.path={path}",
                "data.target=label",
                "data.task=ranking",
                "data.categorical=hash",
                "data.impute=median",
            ),
            output_dir=tmp_path / "run",
        )
    text = str(err.value)
    assert "data.task='ranking': allowed: classification, regression" in text
    assert "data.categorical='hash': allowed: onehot, embed" in text
    assert "data.impute='median': allowed: none, mean" in text


# -- nettrain-eval --data: any labelled folder or table, read with the saved preprocessing ----------
def _eval_files(run: Path) -> set[str]:
    """The evaluation results in RUN/eval/ (the per-class reports beside them left out)."""
    return {p.name for p in (run / "eval").glob("*.json") if not p.name.endswith("-report.json")}


def test_eval_on_a_folder_of_class_folders_needs_no_train_folder(folder, folder_run, tmp_path, capsys):
    import shutil

    from nettrain.commands.evaluate import main
    from nettrain.engine.evaluation import evaluate_checkpoint

    split = evaluate_checkpoint(folder_run)  # the run's test split: FOLDER/test, built with the run's data
    new = tmp_path / "new"
    shutil.copytree(folder / "test", new)  # class folders only: no train/, no test/
    before = _eval_files(folder_run)
    assert main([str(folder_run), "--data", str(new)]) == 0
    (written,) = _eval_files(folder_run) - before
    result = json.loads((folder_run / "eval" / written).read_text())
    assert written.startswith("best-new-") and result["data"] == str(new.resolve()) and result["samples"] == 21
    assert result["data_acc"] == pytest.approx(split["test_acc"], abs=1e-6)
    assert result["data_loss"] == pytest.approx(split["test_loss"], rel=1e-5)
    report = json.loads(Path(result["report"]).read_text())  # per class, by the model's class names
    assert [row["class"] for row in report["per_class"]] == ["circle", "square", "stripe"]
    assert [row["support"] for row in report["per_class"]] == [7, 7, 7]
    shutil.rmtree(new / "stripe")  # a subset of the model's classes
    subset = evaluate_checkpoint(folder_run, data=new)
    assert subset["samples"] == 14 and 0.0 <= subset["data_acc"] <= 1.0
    assert [row["support"] for row in json.loads(Path(subset["report"]).read_text())["per_class"]] == [7, 7, 0]


def test_eval_data_names_what_it_cannot_use(folder, folder_run, tmp_path, capsys):
    import shutil

    from nettrain.commands.evaluate import main

    new = tmp_path / "new"
    shutil.copytree(folder / "test" / "circle", new / "circle")
    shutil.copytree(folder / "test" / "square", new / "triangle")
    before = _eval_files(folder_run)
    assert main([str(folder_run), "--data", str(new)]) == 2
    err = capsys.readouterr().err
    assert f"--data {new}: class folder(s) ['triangle'] are not classes of the model" in err
    assert "allowed: ['circle', 'square', 'stripe']" in err and "Traceback" not in err
    assert main([str(folder_run), "--data", str(folder)]) == 2  # its split folders, not class folders
    assert f"(a split folder: give --data {folder / 'test'})" in capsys.readouterr().err
    only_test = tmp_path / "only_test"
    shutil.copytree(folder / "test", only_test / "test")
    assert main([str(folder_run), f"data.root={only_test}"]) == 2  # the run's own data needs train/
    err = capsys.readouterr().err
    assert "needs a train/ folder" in err and "nettrain-eval RUN --data PATH" in err and "Traceback" not in err
    assert main([str(folder_run), "--split", "val", "--data", str(only_test / "test")]) == 2
    assert "--split picks a split of the run's own data" in capsys.readouterr().err
    assert _eval_files(folder_run) == before  # nothing written


def test_eval_on_a_labelled_table_matches_its_predictions(tmp_path, capsys):
    from nettrain.commands.evaluate import main
    from nettrain.engine.prediction import predict

    path = table(tmp_path / "t.csv", n=200)
    train(make_cfg("data=csv", f"data.path={path}", "data.target=label", *FAST), output_dir=tmp_path / "run")
    new = table(tmp_path / "new.csv", n=60, seed=1)
    assert main([str(tmp_path / "run"), "--data", str(new)]) == 0
    (written,) = _eval_files(tmp_path / "run")
    result = json.loads((tmp_path / "run" / "eval" / written).read_text())
    _, rows = predict(tmp_path / "run", [str(new)])
    truth = [r["label"] for r in read_rows(new)]
    assert result["samples"] == 60 and result["data_acc"] == pytest.approx(
        sum(r["prediction"] == t for r, t in zip(rows, truth)) / 60, abs=1e-6
    )
    lines = new.read_text().splitlines()
    (tmp_path / "odd.csv").write_text("\n".join([*lines[:3], lines[3].rsplit(",", 1)[0] + ",medium", *lines[4:]]))
    assert main([str(tmp_path / "run"), "--data", str(tmp_path / "odd.csv")]) == 2
    assert "target 'label' has classes ['medium'] the model lacks; allowed: ['high', 'low']" in capsys.readouterr().err
    (tmp_path / "unlabelled.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines))
    assert main([str(tmp_path / "run"), "--data", str(tmp_path / "unlabelled.csv")]) == 2
    assert "lacks the column(s) ['label'] the model was trained on" in capsys.readouterr().err


# -- CIFAR through torchvision --------------------------------------------------------------------
def test_cifar10_trains_through_torchvision_on_a_tiny_copy(tmp_path, monkeypatch):
    accept_tiny_cifar(monkeypatch)
    tiny_cifar(tmp_path / "datasets")
    summary = train(
        make_cfg(
            "data=cifar10",
            f"data.root={tmp_path / 'datasets'}",
            "model=cnn",
            "model.channels=[4]",
            "model.hidden=8",
            "epochs=1",
            "data.augment=flip",
        ),
        output_dir=tmp_path / "run",
    )
    assert summary["status"] == "completed" and summary["class_names"][:2] == ["class0", "class1"]


# -- nettrain-predict ---------------------------------------------------------------------------
def test_prediction_on_the_saved_test_images_matches_eval(folder, folder_run, tmp_path, capsys):
    from nettrain.commands.predict import main as predict_main
    from nettrain.engine.evaluation import evaluate_checkpoint

    evaluated = evaluate_checkpoint(folder_run)
    out = tmp_path / "pred.csv"
    assert predict_main([str(folder_run), str(folder / "test"), "--out", str(out), "--top-k", "2"]) == 0
    rows = read_rows(out)
    assert len(rows) == evaluated["samples"] == 21
    assert list(rows[0]) == [
        "input",
        "prediction",
        "probability",
        "top1",
        "top1_probability",
        "top2",
        "top2_probability",
    ]
    correct = sum(Path(r["input"]).parent.name == r["prediction"] for r in rows)
    assert correct / len(rows) == pytest.approx(evaluated["test_acc"], abs=1e-6)
    assert all(r["prediction"] == r["top1"] and float(r["probability"]) >= float(r["top2_probability"]) for r in rows)


# stdout becomes a pipe whose reader has gone before the command prints (`| head` that stopped)
CLOSED_READER = """
import os, sys
read, write = os.pipe()
os.close(read)
os.dup2(write, 1)
os.close(write)
sys.stdout = open(1, "w", buffering=1, closefd=False)
"""


@pytest.mark.slow
def test_a_reader_that_stops_early_ends_the_output_quietly(folder, folder_run, tmp_path):
    """`nettrain-predict RUN DIR | head`: no BrokenPipeError traceback, exit 0, every row in the file."""
    import fresh

    out = tmp_path / "pred.csv"
    entry = ("nettrain.commands.predict:cli", "nettrain-predict")
    proc = fresh.command(
        *entry, str(folder_run), str(folder / "test"), "--out", str(out), cwd=tmp_path, setup=CLOSED_READER
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    assert len(read_rows(out)) == 21 and f"wrote {out}" in proc.stderr


def test_eval_of_data_that_does_not_fit_the_model_says_so(folder_run, capsys):
    from nettrain.commands.evaluate import main

    assert main([str(folder_run), "data.image_size=6"]) == 2
    err = capsys.readouterr().err
    assert "data 'image_folder' gives input shape [1, 6, 6] and 3 classes" in err
    assert "but the model was trained on input shape [1, 12, 12] and 3 classes ['circle', 'square', 'stripe']" in err
    assert "nettrain-eval RUN --data PATH evaluates on a folder of class folders" in err and "Traceback" not in err


def test_prediction_on_a_table_gives_classes_and_regression_values(tmp_path):
    from nettrain.commands.predict import main as predict_main
    from nettrain.engine.prediction import predict

    path = table(tmp_path / "r.csv", n=300, task="regression")
    train(
        make_cfg(
            "data=csv",
            f"data.path={path}",
            "data.target=value",
            "data.task=regression",
            "epochs=6",
            "batch_size=32",
            "lr=1e-2",
            "early_stopping.enabled=false",
        ),
        output_dir=tmp_path / "run",
    )
    _, rows = predict(tmp_path / "run", [str(path)])
    truth = [float(r["value"]) for r in read_rows(path)]
    assert len(rows) == 300 and rows[0]["input"] == f"{path}:1" and list(rows[0]) == ["input", "prediction"]
    mae = sum(abs(r["prediction"] - t) for r, t in zip(rows, truth)) / len(rows)
    assert mae < 2.0
    assert predict_main([str(tmp_path / "run"), str(tmp_path / "nothing.png")]) == 2


def test_predict_names_bad_inputs(folder_run, tmp_path, capsys):
    from nettrain.commands.predict import main as predict_main

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert predict_main([str(folder_run), str(bad)]) == 2
    assert f"{bad}: not a readable image" in capsys.readouterr().err
    other = table(tmp_path / "t.csv")
    assert predict_main([str(folder_run), str(other)]) == 2
    assert "a table, but the model was trained on image data" in capsys.readouterr().err
