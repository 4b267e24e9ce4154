"""Runs saved by the flat layout (tests/fixtures/runs-2026-12, written at fddb77a) still resume,
re-run, evaluate and export with today's code, and give the numbers that code gave."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import cli, in_process
from nettrain.config.renames import RENAMED, renamed_overrides, upgrade
from nettrain.engine.evaluation import evaluate_checkpoint
from nettrain.engine.exporting import model_from_sidecar

FIXTURES = Path(__file__).parent / "fixtures" / "runs-2026-12"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture
def old(tmp_path):
    """A copy of the fixture runs (commands write into a run folder)."""
    shutil.copytree(FIXTURES, tmp_path / "runs")
    return tmp_path / "runs"


def test_the_fixtures_name_the_old_modules():
    """The control: the saved configs really use names that no longer import."""
    saved = (FIXTURES / "resnet" / ".hydra" / "config.yaml").read_text()
    assert "_target_: nettrain.resnet.ResNet" in saved
    assert "_target_: nettrain.sweep_callback.SweepSummaryCallback" in saved
    with pytest.raises(ModuleNotFoundError):
        __import__("nettrain.resnet")
    assert RENAMED["nettrain.resnet.ResNet"] == "nettrain.models.ResNet"


def test_upgrade_and_overrides_rename_only_old_targets():
    saved = {"model": {"_target_": "nettrain.resnet.ResNet", "depth": 8}, "loss": {"_target_": "torch.nn.MSELoss"}}
    assert upgrade(saved) == {"model": {"_target_": "nettrain.models.ResNet", "depth": 8}, "loss": saved["loss"]}
    assert renamed_overrides(saved) == ["model._target_=nettrain.models.ResNet"]
    assert renamed_overrides(upgrade(saved)) == []


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_old_runs_evaluate_unchanged(old, name):
    result = evaluate_checkpoint(old / name)
    want = EXPECTED[name]["eval"]
    assert result["samples"] == want["samples"] and result["epoch"] == want["epoch"]
    assert result["test_loss"] == pytest.approx(want["test_loss"], rel=1e-6)
    assert result["test_acc"] == want["test_acc"]


@pytest.mark.parametrize("name", ["mlp", "resnet"])
def test_old_runs_resume_and_train_on(old, name):
    done = cli(f"resume={old / name}", "epochs=2", cwd=old)
    assert done.returncode == 0, done.stderr
    summary = json.loads((old / name / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    hydra = next((old / name / ".hydra").glob("resume-*/hydra.yaml")).read_text()
    # the callback Hydra builds before the run was given its new name on the command line
    assert "hydra.callbacks.sweep_summary._target_=nettrain.commands.sweep_callback.SweepSummaryCallback" in hydra


def test_an_old_run_reruns_from_its_saved_config(old):
    done = cli(
        "--config-dir", str(old / "resnet" / ".hydra"), "--config-name", "config", "hydra.run.dir=again", cwd=old
    )
    assert done.returncode == 0, done.stderr
    again = json.loads((old / "again" / "summary.json").read_text())
    first = json.loads((old / "resnet" / "summary.json").read_text())
    assert again["best_val_loss"] == first["best_val_loss"]  # the same run, bit for bit


def test_an_old_export_rebuilds_to_the_same_outputs():
    model = model_from_sidecar(FIXTURES / "resnet-export" / "best.safetensors.json")
    torch.manual_seed(EXPECTED["resnet-export"]["input_seed"])
    out = model(torch.rand(2, 3, 8, 8))
    assert torch.allclose(out, torch.tensor(EXPECTED["resnet-export"]["output"]), atol=1e-6)


def test_an_old_run_exports(old):
    done = in_process(
        "nettrain.commands.export:cli", "nettrain-export", str(old / "resnet"), "--format", "safetensors", cwd=old
    )
    assert done.returncode == 0, done.stderr
    sidecar = old / "resnet" / "export" / "best.safetensors.json"
    assert json.loads(sidecar.read_text())["model"]["_target_"] == "nettrain.models.ResNet"
    torch.manual_seed(EXPECTED["resnet-export"]["input_seed"])
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(model_from_sidecar(sidecar)(x), torch.tensor(EXPECTED["resnet-export"]["output"]), atol=1e-6)
