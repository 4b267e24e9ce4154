"""Bad input through the real `nettrain-train` entry point: exit 2, one message naming the key,
no traceback, and no run folder left behind."""

from __future__ import annotations

import pytest
from runs import run_cli

SMALL = ["data=synthetic", "data.num_samples=300", "epochs=1"]


CASES = [
    (["foo=1"], "foo=1: unknown key 'foo'"),
    (["+foo=1"], "foo: unknown key (added with +foo=...)"),
    (["early_stoping.patience=3"], "did you mean early_stopping.patience?"),
    (["model.hiden=[64]"], "did you mean model.hidden?"),
    (["model=nope"], "model=nope: no such model option; allowed: cnn, mlp"),
    (["lr=abc"], "lr=abc: wrong type for lr"),
    (["epochs=1.5"], "epochs=1.5: wrong type for epochs"),
    (["lr=[1,2"], "cannot parse the overrides"),
    (["optimizer.momentum=0.9"], "optimizer=adam has no momentum; the optimizer options with momentum: rmsprop, sgd"),
    (["seed=-1"], "seed=-1: must be an integer in 0..4294967295"),
    (["seed=5000000000"], "seed=5000000000: must be an integer in 0..4294967295"),
    (["loss.label_smoothing=1.5"], "loss.label_smoothing=1.5: must be in [0, 1)"),
    (["scheduler=step", "scheduler.step_size=0"], "scheduler.step_size=0: must be an integer >= 1"),
    (["scheduler=cosine", "scheduler.T_max=0"], "scheduler.T_max=0: must be an integer >= 1"),
    (["batch_size=100000000"], "batch_size=100000000: must be an integer in 1..65536"),
    (["data.val_fraction=0.0001"], "data.val_fraction=0.0001: leaves the validation split empty"),
    (["data.test_fraction=0.001"], "data.test_fraction=0.001: leaves the test split empty"),
    (["loss.class_weights=[1,0]"], "loss.class_weights=[1, 0]: allowed: null, balanced, or [w0, w1, ...]"),
    (
        ["+loss.weight=[1,2]"],
        "loss.weight=[1, 2]: torch takes the class weights as a tensor; give them as loss.class_weights",
    ),
    (["data.sampler=oversample"], "data.sampler='oversample': allowed: shuffle, balanced"),
    (["loss.class_weights=balanced", "+loss.reduction=sum"], "loss.reduction='sum': loss.class_weights averages"),
    (["profile=true", "profiler.steps=0"], "profiler.steps=0: must be an integer in 1..10000"),
    (["profile=true", "find=lr"], "profile=True and find='lr': choose one (profile=true profiles a fresh run)"),
    (["augment.policy=autoaugment"], "augment.policy='autoaugment': allowed: none, randaugment, trivialaugment"),
    (["augment=standard"], "image transforms, and data=synthetic gives random tensors; allowed for image data only"),
    (["hydra.run.dir="], "hydra.run.dir is empty"),
    (["hydra.run.dir=/"], "a run needs a folder of its own"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_exits_2_with_one_message_and_no_folder(monkeypatch, capsys, tmp_path, args, message):
    code, err = run_cli(monkeypatch, capsys, tmp_path, *SMALL, *args)
    assert code == 2, err
    assert message in err
    assert err.count("Error:") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no empty run folder left behind


def test_long_values_are_echoed_shortened(monkeypatch, capsys, tmp_path):
    code, err = run_cli(monkeypatch, capsys, tmp_path, *SMALL, "model=" + "x" * 500)
    assert code == 2
    assert "xxx..." in err and "x" * 200 not in err
    code, err = run_cli(monkeypatch, capsys, tmp_path, *SMALL, "data.root=" + "y" * 500)  # a key's value
    assert code == 2 and "data.root=" in err
    assert "yyy..." in err and "y" * 200 not in err


def test_an_unknown_key_suggests_the_closest_key_not_adding_it(monkeypatch, capsys, tmp_path):
    code, err = run_cli(monkeypatch, capsys, tmp_path, *SMALL, "epoch=3")
    assert code == 2 and "unknown key 'epoch'" in err and "epochs" in err
    assert "+epoch" not in err  # Hydra's own hint would be to add it


def test_a_folder_with_foreign_files_is_refused_before_anything_moves(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "thesis.tex").write_text("mine")
    (folder / "summary.json").write_text("{}")
    code, err = run_cli(monkeypatch, capsys, tmp_path, *SMALL, f"hydra.run.dir={folder}")
    assert code == 2 and "holds files nettrain did not write (thesis.tex)" in err
    assert sorted(p.name for p in folder.iterdir()) == ["summary.json", "thesis.tex"]


@pytest.mark.parametrize(
    ("override", "option", "extra"),
    [
        ("hydra/launcher=joblib", "hydra/launcher/joblib", "sweep"),
        ("hydra/launcher=submitit_local", "hydra/launcher/submitit_local", "slurm"),
        ("hydra/sweeper=optuna_search", "hydra/sweeper/optuna", "sweep"),  # nettrain's option, on the plugin's
    ],
)
def test_a_plugin_option_without_its_plugin_names_the_extra_to_install(
    monkeypatch, capsys, tmp_path, override, option, extra
):
    """Without the plugin package Hydra knows no such option; the message says which extra brings it.
    The plugin's option is taken out of Hydra's config store (where the plugin put it) for the test."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the plugins have stored their options by now
    group, _, name = option.rpartition("/")
    node = ConfigStore.instance().repo
    for part in group.split("/"):
        node = node[part]
    monkeypatch.delitem(node, f"{name}.yaml", raising=False)
    code, err = run_cli(monkeypatch, capsys, tmp_path, *SMALL, override, "-m")
    assert code == 2, err
    assert f"{override}: needs Hydra's {name} plugin, which is not installed; install the [{extra}] extra" in err
    assert err.count("Error:") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
