"""Your own model class from a module in the working directory (tests/test_working_dir.py: only
that module, never the folder on sys.path), import errors that say what to do, and a model that
cannot take the data's shape reported as a config error naming both."""

from __future__ import annotations

import fresh
import pytest
import torch
from made_data import USER_MODEL, USER_OPTION

from conftest import cli, make_cfg
from nettrain.commands.train import train
from nettrain.data import DataSplits, Split
from nettrain.errors import ConfigError

MODULE, OPTION = USER_MODEL, USER_OPTION
SMALL = [
    "data=synthetic",
    "data.num_samples=120",
    "data.input_shape=[1,4,4]",
    "data.num_classes=3",
    "epochs=1",
    "console.show_config=false",
    "console.progress=off",
]


def tabular(num_samples: int = 60, features: int = 5, **_synthetic_keys) -> DataSplits:
    """Table-shaped data (N, features) for the shape check."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(num_samples, features, generator=g), torch.randint(0, 2, (num_samples,), generator=g)
    return DataSplits("table", Split(x[:40], y[:40]), Split(x[40:50], y[40:50]), Split(x[50:], y[50:]), 2)


class FixedWidth(torch.nn.Module):
    """Builds for any data but takes 10 features only: its forward fails on other shapes."""

    def __init__(self, input_shape, num_classes, **_mlp_keys):
        super().__init__()
        self.flatten, self.fc = torch.nn.Flatten(), torch.nn.Linear(10, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(x))


@pytest.mark.slow
def test_a_user_model_in_the_working_directory_trains_evaluates_and_exports_through_the_cli(tmp_path):
    (tmp_path / "mymodels.py").write_text(MODULE)
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "twolayer.yaml").write_text(OPTION)
    proc = cli("--config-dir", "myconf", "model=twolayer", *SMALL, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["model"]["1.weight"].shape == (12, 16)  # width 12 from the option, 16 inputs from the data
    # each command a process of its own, as typed (tests/fresh.py: without paying the imports again)
    # the checkpoint names a class of your own: a file's config builds it only when you say so
    refused = fresh.command("nettrain.commands.evaluate:cli", "nettrain-eval", "run", cwd=tmp_path)
    assert refused.returncode == 2 and "model._target_='mymodels.TwoLayer'" in refused.stderr
    for entry, command in (
        ("nettrain.commands.evaluate:cli", ["nettrain-eval", "run", "trust_targets=[mymodels.TwoLayer]"]),
        ("nettrain.commands.export:cli", ["nettrain-export", "run", "--format", "safetensors", "--trust"]),
    ):
        done = fresh.command(entry, *command, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "export" / "best.safetensors").is_file()


def test_a_module_that_cannot_be_imported_is_named_with_the_path_searched_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*SMALL, "model._target_=nomodels.Net"), output_dir=tmp_path / "run")
    message = str(err.value)
    assert "cannot import module 'nomodels' for _target_ 'nomodels.Net'" in message
    assert f"working directory ({tmp_path})" in message and "module search path (" in message
    assert "run the command from the folder that holds nomodels.py" in message and "PYTHONPATH" in message


@pytest.mark.slow
def test_a_missing_module_through_the_cli_is_one_message_and_exit_2(tmp_path):
    proc = cli(*SMALL, "model._target_=nomodels.Net", cwd=tmp_path)
    assert proc.returncode == 2
    assert "cannot import module 'nomodels'" in proc.stderr and "Traceback" not in proc.stderr


def test_a_cnn_on_table_shaped_data_is_a_config_error_naming_both(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*SMALL, "model=cnn", "data._target_=test_user_models.tabular"), output_dir=tmp_path / "r")
    message = str(err.value)
    assert "model: could not build nettrain.models.CNN for data 'table' (input shape [5], 2 classes)" in message
    assert "CNN takes images (C, H, W)" in message and "not enough values to unpack" not in message


def test_a_model_whose_forward_does_not_fit_the_data_is_caught_before_training(tmp_path):
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*SMALL, "model._target_=test_user_models.FixedWidth"), output_dir=tmp_path / "r")
    message = str(err.value)
    assert (
        "model test_user_models.FixedWidth cannot take the data's inputs: data 'synthetic' "
        "(input shape [1, 4, 4], 3 classes)"
    ) in message
