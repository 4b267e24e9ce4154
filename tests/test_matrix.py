"""Every data option through every command: one tiny run per data option, then each command on it.

The data options: mnist_sample (a tiny train split), synthetic, image_folder held in memory and
decoded per batch (lazy), and a CSV table for classification and for regression. The commands:
nettrain-train (a run, dry_run=true, find=lr, find=batch_size), nettrain-eval, nettrain-predict,
nettrain-export and nettrain-verify-resume, each run through its console script's entry point in
this process (conftest.in_process), each must exit 0 and leave what it promises.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from made_data import CLASSES, image_folder, table, write_png
from safetensors.torch import save_file

from conftest import QUIET, cli, in_process

# threads=1: tiny batches gain nothing from more, and lose much to contention on a busy machine
SMALL = ["model.hidden=[8]", "epochs=1", "batch_size=16", "lr_find.steps=10", "threads=1"]
OPTIONS = ["mnist_sample", "synthetic", "image_folder", "image_folder_lazy", "csv_classification", "csv_regression"]


def data_overrides(option: str, root: Path) -> list[str]:
    """The data option's overrides, on data this module makes under `root` (a few dozen samples)."""
    images = ["data=image_folder", f"data.root={root / 'images'}", "data.cache=false"]
    table_data = ["data=csv"]
    return {
        # 5,000 digits: 10% to train (500: two steps), the rest held out and only evaluated
        "mnist_sample": ["data=mnist_sample", "data.val_fraction=0.4", "data.test_fraction=0.5", "batch_size=250"],
        "synthetic": ["data=synthetic", "data.num_samples=120"],
        "image_folder": [*images, "data.in_memory=true"],
        "image_folder_lazy": [*images, "data.in_memory=false"],
        "csv_classification": [*table_data, f"data.path={root / 'classes.csv'}", "data.target=label"],
        "csv_regression": [
            *table_data,
            f"data.path={root / 'values.csv'}",
            "data.target=value",
            "data.task=regression",
            "data.categorical=embed",  # the categories through a learned embedding, the other encoding
        ],
    }[option]


def predict_inputs(option: str, root: Path) -> list[str]:
    """What nettrain-predict takes for a model of this data: image files, or the table's rows."""
    if option in ("image_folder", "image_folder_lazy"):
        return [str(root / "images" / "train" / CLASSES[0]), str(root / "images" / "train" / CLASSES[2] / "000.png")]
    if option == "mnist_sample":
        return [str(root / "digits")]  # 28 x 28 grayscale PNGs, as the digits are
    if option.startswith("csv"):
        return [str(root / ("classes.csv" if option == "csv_classification" else "values.csv"))]
    return [str(root / "tensors.safetensors")]  # synthetic: its tensors as they are (N, 1, 28, 28)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    image_folder(root / "images", per_class=10)
    table(root / "classes.csv", n=80)
    table(root / "values.csv", n=80, task="regression")
    rng = np.random.default_rng(0)
    for i in range(3):
        write_png(root / "digits" / f"{i}.png", rng.integers(0, 256, size=(28, 28), dtype=np.uint8))
    save_file({"x": torch.randn(3, 1, 28, 28)}, root / "tensors.safetensors")  # what data=synthetic's model takes
    return root


@pytest.fixture(scope="module", params=OPTIONS)
def trained(request, root) -> tuple[str, list[str], Path]:
    """(data option, its overrides, the run folder of one finished run on it)."""
    option, overrides = request.param, [*SMALL, *data_overrides(request.param, root)]
    run_dir = root / "runs" / option
    result = cli(*overrides, f"hydra.run.dir={run_dir}", cwd=root)
    assert result.returncode == 0, result.stderr
    return option, overrides, run_dir


def no_traceback(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_train(trained):
    option, _, run_dir = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 1
    assert (run_dir / "checkpoints" / "best.pt").is_file() and (run_dir / "metrics.csv").is_file()
    assert ("test_r2" in summary) == (option == "csv_regression")


def test_dry_run(trained, root):
    option, overrides, _ = trained
    result = cli(*overrides, "dry_run=true", f"hydra.run.dir={root / 'dry' / option}", cwd=root)
    assert result.returncode == 0, result.stderr
    loss = "MSELoss" if option == "csv_regression" else "CrossEntropyLoss"
    assert f"({loss}), gradients finite. Dry run done" in no_traceback(result)


def test_find_lr(trained, root):
    option, overrides, _ = trained
    out = root / "find_lr" / option
    result = cli(*overrides, "find=lr", f"hydra.run.dir={out}", cwd=root)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "lr_find.json").read_text())["steps"] >= 2
    assert "LR range test" in no_traceback(result)


def test_find_batch_size(trained, root):
    option, overrides, _ = trained
    out = root / "find_batch_size" / option
    result = cli(*overrides, "find=batch_size", f"hydra.run.dir={out}", cwd=root)
    assert result.returncode == 0, result.stderr
    found = json.loads((out / "batch_size.json").read_text())
    assert found["confirmed"] and found["batch_size"] >= 1, found
    assert "largest batch expected to fit" in no_traceback(result)


def test_eval(trained, root):
    option, _, run_dir = trained
    result = in_process("nettrain.commands.evaluate:cli", "nettrain-eval", str(run_dir), cwd=root)
    assert result.returncode == 0, result.stderr
    written = json.loads((run_dir / "eval" / "best-test.json").read_text())
    assert written["samples"] > 0 and ("test_r2" in written) == (option == "csv_regression")


def test_predict(trained, root):
    option, _, run_dir = trained
    if option == "synthetic":
        predict_refuses_what_synthetic_data_is_not(run_dir, root)
    out = root / "predicted" / f"{option}.csv"
    args = [str(run_dir), *predict_inputs(option, root), "--out", str(out)]
    result = in_process("nettrain.commands.predict:cli", "nettrain-predict", *args, cwd=root)
    assert result.returncode == 0, result.stderr
    rows = out.read_text().splitlines()
    assert len(rows) > 1 and rows[0].startswith("input,prediction")


def predict_refuses_what_synthetic_data_is_not(run_dir: Path, root: Path) -> None:
    """A model of data=synthetic (random tensors) takes a tensor file, not an image or a table, and
    a tensor file only of its input shape: exit 2, saying what it takes."""
    save_file({"x": torch.zeros(2, 3, 28, 28)}, root / "wrong-shape.safetensors")
    takes = "the model was trained on tensors (data=synthetic); give a .safetensors file with one tensor of shape (N, 1, 28, 28)"
    for given, kind in ((root / "digits" / "0.png", "an image"), (root / "classes.csv", "a table")):
        result = in_process("nettrain.commands.predict:cli", "nettrain-predict", str(run_dir), str(given), cwd=root)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip() == f"Error: {given}: {kind}, but {takes}"
    given = root / "wrong-shape.safetensors"
    result = in_process("nettrain.commands.predict:cli", "nettrain-predict", str(run_dir), str(given), cwd=root)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"Error: {given}: holds x: (2, 3, 28, 28) torch.float32; allowed: one float tensor of shape (N, 1, 28, 28)"
    )
    assert not (run_dir / "predict").exists()


def test_export(trained, root):
    option, _, run_dir = trained
    result = in_process(
        "nettrain.commands.export:cli", "nettrain-export", str(run_dir), "--format", "safetensors", cwd=root
    )
    assert result.returncode == 0, result.stderr
    assert "it matches the eager model" in no_traceback(result)
    assert (run_dir / "export" / "best.safetensors").is_file()


def test_verify_resume(trained, root):
    option, overrides, _ = trained
    out = root / "verify" / option
    args = [*QUIET, *overrides, "--out", str(out)]  # one epoch of two steps or more, interrupted in the middle
    result = in_process("nettrain.commands.verify_resume:cli", "nettrain-verify-resume", *args, cwd=root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert no_traceback(result).startswith("identical: straight vs interrupted after step")
