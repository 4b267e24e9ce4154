"""`from nettrain import fit`: a run from Python composes the config as the command does, leaves
Hydra's global state as it found it (so it runs twice, and inside a Hydra app), gives the same
summary for the same seed, raises BadInput with the command's message, and resumes its runs."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from conftest import QUIET, cli, make_cfg
from nettrain import fit
from nettrain.errors import BadInput, ConfigError

SMALL = [*QUIET, "data=synthetic", "data.num_samples=200", "model.hidden=[16]", "epochs=2", "regularization=dropout"]
FIGURES = (
    "status",
    "best_epoch",
    "best_val_loss",
    "best_val_acc",
    "test_loss",
    "test_acc",
    "epochs_run",
    "config_hash",
)


def figures(summary: dict) -> dict:
    return {key: summary[key] for key in FIGURES}


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "first"
    return fit(*SMALL, output_dir=out), out


def test_fit_twice_in_one_process_gives_the_same_summary(first, tmp_path):
    summary, out = first
    again = fit(*SMALL, output_dir=tmp_path / "again")
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    assert figures(again) == figures(summary)
    assert json.loads((out / "summary.json").read_text()) == summary  # the dict is summary.json's content
    assert not GlobalHydra.instance().is_initialized()  # nothing of Hydra's left behind


def test_fit_of_a_composed_config_inside_an_initialised_hydra_is_the_same_run(first, tmp_path):
    """A config composed by the caller (here, as the tests compose it) runs as the overrides do,
    and a GlobalHydra the caller holds is still there afterwards."""
    cfg = make_cfg(*SMALL)
    with initialize_config_module("nettrain.conf", version_base="1.3"):
        summary = fit(cfg, output_dir=tmp_path / "cfg")
        assert GlobalHydra.instance().is_initialized()
        assert compose("train", overrides=["epochs=5"]).epochs == 5  # the caller's Hydra still composes
    assert figures(summary) == figures(first[0])


def test_without_output_dir_the_run_goes_where_the_command_puts_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = fit(*SMALL, "epochs=1")
    folders = list((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 1 and json.loads((folders[0] / "summary.json").read_text()) == summary
    assert (folders[0] / "train.log").read_text().count("][nettrain][INFO] - epoch ") == 1


@pytest.mark.parametrize(
    "override, key",
    [("optimizer.momentun=0.9", "optimizer.momentum"), ("lr=-1", "lr"), ("data=nosuch", "data")],
)
def test_a_bad_override_raises_bad_input_with_the_commands_message(tmp_path, override, key):
    with pytest.raises(BadInput) as err:
        fit(*SMALL, override, output_dir=tmp_path / "never")
    assert isinstance(err.value, ConfigError) and key in str(err.value)
    command = cli(*SMALL, override, cwd=tmp_path)
    assert command.returncode == 2 and command.stderr.strip() == f"Error: {err.value}"
    assert not (tmp_path / "never").exists()
    assert not GlobalHydra.instance().is_initialized()


def test_a_run_made_by_fit_resumes_through_fit_and_the_command(first, tmp_path):
    _, out = first
    run = tmp_path / "run"
    fit(*SMALL, "epochs=1", output_dir=run)
    summary = fit(f"resume={run}", "epochs=2")  # its saved config, as nettrain-train resume= composes it
    assert summary["epochs_run"] == 2 and figures(summary) == {
        **figures(fit_summary(out)),
        "config_hash": summary["config_hash"],
    }
    done = cli(f"resume={run}", "epochs=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "summary.json").read_text())["epochs_run"] == 3


def fit_summary(run) -> dict:
    return json.loads((run / "summary.json").read_text())
