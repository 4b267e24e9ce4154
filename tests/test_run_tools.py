"""dry_run=true, find=lr and find=batch_size: they build, measure and suggest, and train nothing."""

from __future__ import annotations

import pytest
from made_data import image_folder, table

from conftest import cli, make_cfg
from nettrain.run.folder import LOCK_NAME


def tool(tmp_path, *overrides):
    from nettrain.commands.train import train

    out = tmp_path / "run"
    return train(make_cfg(*overrides), output_dir=out), out


def test_dry_run_shows_the_model_and_memory_and_trains_nothing(tmp_path, capsys):
    summary, out = tool(tmp_path, "dry_run=true", "data=synthetic", "data.num_samples=300")
    text = capsys.readouterr().out
    assert summary["status"] == "dry_run" and summary["gradients_finite"] and summary["param_count"] == 203_530
    assert ["fc1", "Linear", "[B,", "256]", "200,960"] in [line.split() for line in text.splitlines()]
    assert ["total", "203,530"] in [line.split() for line in text.splitlines()]
    assert "activations" in text and "one forward + backward on a batch of 64" in text
    assert summary["memory_estimate"]["bytes"] == sum(summary["memory_estimate"]["parts"].values())
    assert not out.exists() or sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) == []  # the lock only


@pytest.mark.slow
def test_dry_run_through_the_cli_exits_0_without_metrics_or_checkpoints(tmp_path):
    result = cli("dry_run=true", "data=synthetic", "data.num_samples=300", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Dry run done" in result.stdout
    assert not (tmp_path / "run" / "metrics.csv").exists() and not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_lr_range_test_suggests_near_1e_3_for_simplenet_with_adam_on_the_digits(tmp_path, capsys):
    summary, out = tool(tmp_path, "find=lr", "threads=1", "plots=true")
    assert summary["diverged"] and summary["steps"] < 200
    assert 1e-4 <= summary["suggested_lr"] <= 1e-2, summary
    assert (out / "lr_find.png").stat().st_size > 1000 and (out / "lr_find.json").is_file()
    assert not (out / "checkpoints").exists() and not (out / "metrics.csv").exists()
    assert f"nettrain-train lr={summary['suggested_lr']:.2g}" in capsys.readouterr().out


def test_batch_size_finder_uses_available_ram_on_cpu_and_says_what_to_type(tmp_path, capsys):
    summary, out = tool(tmp_path, "find=batch_size", "data=synthetic", "data.num_samples=300")
    text = capsys.readouterr().out
    assert "MemAvailable" in summary["free_source"] and summary["confirmed"]
    assert summary["batch_size"] == 240  # the whole training split fits in this machine's RAM
    assert "the whole training split" in text and "nettrain-train batch_size=240" in text
    assert (out / "batch_size.json").is_file() and not (out / "checkpoints").exists()


def test_dry_run_on_regression_data_reports_the_mean_squared_error(tmp_path, capsys):
    """data.task=regression: the dry run's loss is the run's, MSE (cross-entropy on one output is -0)."""
    path = table(tmp_path / "houses.csv", n=120, task="regression")
    data = ["data=csv", f"data.path={path}", "data.target=value", "data.task=regression", "model.hidden=[8]"]
    summary, _ = tool(tmp_path, "dry_run=true", *data)
    assert summary["loss_fn"] == "MSELoss" and summary["loss"] > 0.01 and summary["gradients_finite"]
    assert f"loss {summary['loss']:.4f} (MSELoss)" in capsys.readouterr().out


@pytest.mark.parametrize("in_memory", [True, False])
def test_dry_run_and_finders_serve_uint8_images_normalised_as_training_does(tmp_path, in_memory):
    """image_folder keeps uint8 pixels and normalises each batch: the tools' batches are the run's."""
    root = image_folder(tmp_path / "imgs", per_class=10)
    data = ["data=image_folder", f"data.root={root}", "data.cache=false", f"data.in_memory={in_memory}"]
    dry, _ = tool(tmp_path, "dry_run=true", *data, "model.hidden=[8]", "batch_size=8")
    assert dry["loss_fn"] == "CrossEntropyLoss" and dry["loss"] < 2 and dry["gradients_finite"]  # ~ln 3: not raw pixels
    assert dry["memory_estimate"]["batch_size"] == 8
    found, _ = tool(tmp_path / "bs", "find=batch_size", *data, "model.hidden=[8]")
    assert found["confirmed"] and found["batch_size"] == 24  # the whole training split (30 - 3 val - 3 test)
    lr, out = tool(tmp_path / "lr", "find=lr", *data, "model.hidden=[8]", "lr_find.steps=10", "batch_size=8")
    assert lr["steps"] >= 2 and (out / "lr_find.json").is_file()
    assert not (out / "lr_find.png").exists()  # plots=false (QUIET): the curve is in the JSON only


def test_find_and_dry_run_values_are_checked():
    from nettrain.config.schema import validate
    from nettrain.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        validate(make_cfg("find=epochs", "lr_find.steps=1"))
    assert err.value.problems == ["find='epochs': allowed: lr, batch_size", "lr_find.steps=1: must be an integer >= 10"]
