"""End to end through the real console script in a subprocess: what a run leaves, every data
option, bad input, --config-dir, and the package shipping its configs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, cli
from nettrain.run.metrics import read_metrics

pytestmark = pytest.mark.slow

SUMMARY_KEYS = {
    "best_epoch",
    "best_val_loss",
    "best_val_acc",
    "test_loss",
    "test_acc",
    "epochs_run",
    "stopped_early",
    "status",
    "wall_time_s",
    "device",
    "param_count",
    "peak_rss_mb",
}
METRIC_COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s"]


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir() and p.parent.name != "multirun"]
    assert len(runs) == 1, runs
    return runs[0]


def check_run_dir(run: Path, param_names: list[str], plots: bool = False) -> dict:
    assert {p.name for p in (run / ".hydra").iterdir()} == {
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
        "provenance.json",
    }
    rows = read_metrics(run)
    per_param = [f"{stat}/{n}" for stat in ("grad_mean", "grad_norm", "update_ratio") for n in param_names]
    columns = list(rows[0]) if rows else []
    assert columns[: len(METRIC_COLUMNS) + len(per_param)] == METRIC_COLUMNS + per_param
    assert all(c.startswith("dead_units/") for c in columns[len(METRIC_COLUMNS) + len(per_param) :])
    assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["epochs_run"] == len(rows)
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert {
            "model",
            "optimizer",
            "scheduler",
            "epoch",
            "config",
            "early_stopping",
            "rng",
            "progress",
            "history",
            "grad_monitor",
            "diagnosis",
            "loggers",
        } <= set(state)
        assert (run / "checkpoints" / (name + ".sha256")).is_file()
        assert isinstance(state["config"], dict) and "model" in state["config"]
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["epoch"] == summary["best_epoch"]
    for png in ("loss.png", "accuracy.png", "lr.png", "grad_means.png", "gradients.png") if plots else ():
        assert (run / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "plots").exists() == plots
    log = (run / "train.log").read_text()
    assert "epoch" in log and "summary" in log
    assert not list(run.rglob("*.tmp"))  # atomic writes leave no temporaries
    return summary


def test_the_first_run_trains_the_tutorial_network_and_leaves_everything(tmp_path):
    proc = cli("optimizer=adam", "lr=1e-3", cwd=tmp_path, plots=None, process="exec")  # a newcomer's command, as typed
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(tmp_path)
    summary = check_run_dir(run, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"], plots=True)
    assert summary["stopped_early"] and summary["status"] == "early_stopped"
    assert summary["epochs_run"] < 100
    assert summary["test_acc"] >= 0.93
    assert summary["param_count"] == 203_530
    assert summary["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # device=auto
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert overrides == ["optimizer=adam", "lr=1e-3"]
    out = proc.stdout
    assert "parameters: 203,530" in out and "fc1): Linear(in_features=784, out_features=256" in out
    assert "early stopping: val_loss has not improved for 3 epochs" in out
    # not a terminal: no progress bar, one line per epoch
    assert "━" not in out and "\r" not in out
    epochs = out.split("per class, test split")[0]  # the per-class table's rows start with the digit classes
    epoch_lines = [line for line in epochs.splitlines() if line.split() and line.split()[0].isdigit()]
    assert len(epoch_lines) == summary["epochs_run"]


@pytest.mark.parametrize("option", ["synthetic", "mnist", "fashion_mnist"])
def test_every_data_option_runs_from_the_command_line(tmp_path, mnist_root, option):
    extra = ["data.num_samples=300"] if option == "synthetic" else [f"data.root={mnist_root}"]
    proc = cli(
        f"data={option}",
        *extra,
        "epochs=2",
        "scheduler=step",
        "model=cnn",
        "model.channels=[4,8]",
        "model.hidden=16",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = check_run_dir(
        only_run_dir(tmp_path),
        [
            "conv1.weight",
            "conv1.bias",
            "conv2.weight",
            "conv2.bias",
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
        ],
    )
    assert summary["epochs_run"] == 2


def _assert_clean_failure(proc, *expected: str):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    for text in expected:
        assert text in proc.stderr, proc.stderr


def test_a_wrong_type_names_the_key(tmp_path):
    proc = cli("lr=abc", cwd=tmp_path)
    _assert_clean_failure(proc, "lr=abc: wrong type for lr (Value 'abc' of type 'str' could not be converted to Float)")
    assert proc.returncode == 2


def test_every_invalid_value_is_reported_in_one_message(tmp_path):
    proc = cli("lr=-1", "model.activation=swish", "regularization.dropout=2", cwd=tmp_path)
    _assert_clean_failure(
        proc,
        "Invalid config (3 problems):",
        "lr=-1.0: must be a number > 0",
        "model.activation='swish': allowed: relu, gelu",
        "regularization.dropout=2.0: must be a probability in [0, 1)",
    )
    assert proc.returncode == 2
    assert not list(tmp_path.rglob("metrics.csv")) and not list(tmp_path.rglob("*.pt"))


def test_an_unknown_option_lists_the_available_ones(tmp_path):
    proc = cli("optimizer=adagrad", cwd=tmp_path)
    _assert_clean_failure(proc, "optimizer=adagrad: no such optimizer option; allowed: adam, adamw, manual_sgd")
    assert proc.returncode == 2


def test_missing_dataset_files_name_root_and_download(tmp_path):
    proc = cli("data=mnist", f"data.root={tmp_path / 'none'}", cwd=tmp_path)
    _assert_clean_failure(proc, f"data.root='{tmp_path / 'none'}'", "data.download=true")


def test_full_error_shows_the_traceback(tmp_path):
    proc = cli("lr=-1", cwd=tmp_path, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_a_users_own_config_dir_adds_options(tmp_path):
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "wide.yaml").write_text(
        "_target_: nettrain.models.MLP\nhidden: [32, 16]\nactivation: gelu\n"
        "norm: layernorm\ninit: kaiming_normal\ndropout: 0.0\n"
    )
    proc = cli(
        "--config-dir",
        str(tmp_path / "myconf"),
        "model=wide",
        "data=synthetic",
        "data.num_samples=300",
        "epochs=1",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["param_count"] == 784 * 32 + 32 + 2 * 32 + 32 * 16 + 16 + 2 * 16 + 16 * 10 + 10


def test_python_dash_m_works_and_help_lists_the_groups(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nettrain.commands.train", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    for line in (
        "model: cnn, mlp",
        "optimizer: adam, adamw, manual_sgd, rmsprop, sgd",
        "scheduler: cosine, none, plateau, step",
        "regularization: dropout, l1, l2, none",
        "data: cifar10, cifar100, csv, fashion_mnist, image_folder, mnist, mnist_sample, synthetic, torchvision",
    ):
        assert line in proc.stdout


def test_the_wheel_ships_the_configs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("nettrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"nettrain/conf/train.yaml"} | {
        "nettrain/conf/" + p.relative_to(REPO / "conf").as_posix() for p in (REPO / "conf").rglob("*.yaml")
    }
    assert expected <= names
