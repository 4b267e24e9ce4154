"""The `_target_` allowlist for configs read from files (nettrain/trust.py)."""

from __future__ import annotations

import pytest

from nettrain import trust
from nettrain.config import ConfigError


def _cfg(**groups):
    base = {
        "model": {"_target_": "nettrain.models.MLP", "hidden": [16]},
        "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True},
        "scheduler": {"_target_": None},
        "data": {"_target_": "nettrain.data.synthetic"},
        "loss": {"_target_": "torch.nn.CrossEntropyLoss"},
    }
    base.update(groups)
    return base


ALLOWED = [
    ("model", "nettrain.models.MLP"),
    ("model", "nettrain.models.CNN"),
    ("optimizer", "nettrain.optim.ManualSGD"),
    ("optimizer", "torch.optim.SGD"),
    ("optimizer", "torch.optim.AdamW"),
    ("scheduler", "torch.optim.lr_scheduler.CosineAnnealingLR"),
    ("scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"),
    ("loss", "torch.nn.MSELoss"),
    ("loss", "torch.nn.modules.loss.NLLLoss"),
    ("model", "torch.nn.Linear"),
    ("model", "torchvision.models.resnet18"),
    ("data", "torchvision.datasets.MNIST"),
    ("data", "nettrain.data.torchvision_dataset"),
]


@pytest.mark.parametrize(("group", "target"), ALLOWED)
def test_components_nettrain_builds_are_allowed(group, target):
    assert trust.problems(_cfg(**{group: {"_target_": target}}), "ckpt.pt") == []


REFUSED = [
    "torch.load",
    "builtins.open",
    "builtins.exec",
    "os.system",
    "subprocess.run",
    "shutil.rmtree",
    "pathlib.Path.write_text",
    "io.open",
    "nettrain.files.write_text",
    "nettrain.files.write_json",
    "nettrain.data.torch.load",  # through a module nettrain.data imports
    "nettrain.data.os.system",
    "nettrain.data.write_text",  # a writer imported into an allowed module
    "torch.nn.functional.relu",  # a function, not a module class
    "torch.nn.modules.module.torch.load",
    "torch.optim.Optimizer.load_state_dict",
    "torch.save",
    "torchvision.io.write_png",
    "torchvision.datasets.utils.download_url",
    "numpy.load",
    "mypkg.Evil",
    "nettrain.callbacks.SweepSummaryCallback",  # only as a hydra callback
]


@pytest.mark.parametrize("target", REFUSED)
def test_anything_else_is_refused_naming_key_and_target(target):
    found = trust.problems(_cfg(data={"_target_": target, "f": "evil.pt"}), "ckpt.pt")
    assert len(found) == 1
    assert found[0].startswith(f"data._target_={target!r} in ckpt.pt")


def test_nested_and_listed_targets_are_checked():
    cfg = _cfg(
        model={
            "_target_": "nettrain.models.MLP",
            "block": {"_target_": "torch.nn.ReLU"},
            "extra": [{"_target_": "torch.nn.Linear"}, {"inner": {"_target_": "os.system"}}],
        }
    )
    found = trust.problems(cfg, "f")
    assert len(found) == 1 and found[0].startswith("model.extra[1].inner._target_='os.system'")


def test_hydra_section_callbacks_launchers_sweepers_and_logging():
    hydra = {
        "callbacks": {"s": {"_target_": "nettrain.sweep_callback.SweepSummaryCallback"}},
        "launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"},
        "sweeper": {
            "_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
            "sampler": {"_target_": "optuna.samplers.TPESampler"},
        },
        "job_logging": {"handlers": {"file": {"class": "logging.FileHandler"}}},
    }
    assert trust.problems(_cfg(hydra=hydra), "config.yaml") == []
    hydra["callbacks"]["evil"] = {"_target_": "nettrain.files.write_text"}
    hydra["launcher"] = {"_target_": "mypkg.Launcher"}
    hydra["job_logging"]["handlers"]["x"] = {"()": "subprocess.Popen", "args": ["touch", "x"]}
    hydra["job_logging"]["handlers"]["y"] = {"class": "mypkg.Handler"}
    keys = sorted(p.split("=")[0] for p in trust.problems(_cfg(hydra=hydra), "config.yaml"))
    assert keys == [
        "hydra.callbacks.evil._target_",
        "hydra.job_logging.handlers.x.()",
        "hydra.job_logging.handlers.y.class",
        "hydra.launcher._target_",
    ]


def test_interpolated_or_odd_targets_are_refused():
    found = trust.problems(_cfg(model={"_target_": "${oc.env:EVIL}"}, loss={"_target_": 3}), "f")
    assert [p.split("=")[0] for p in found] == ["model._target_", "loss._target_"]
    assert all("not a plain dotted name" in p for p in found)


def test_trust_targets_allows_deliberately_but_never_the_dangerous_ones():
    cfg = _cfg(model={"_target_": "mypkg.models.Net"}, data={"_target_": "torch.load"})
    found = trust.problems(cfg, "f", trusted=["mypkg.*", "torch.load"])
    assert len(found) == 1 and "never builds this from a file" in found[0]
    assert trust.problems(_cfg(model={"_target_": "mypkg.models.Net"}), "f", trust_all=True) == []
    assert trust.problems(_cfg(data={"_target_": "builtins.open"}), "f", trust_all=True) != []


def test_check_raises_a_config_error_saying_how_to_allow_it():
    with pytest.raises(ConfigError) as info:
        trust.check(_cfg(model={"_target_": "mypkg.Net"}), "run/checkpoints/best.pt")
    text = str(info.value)
    assert "model._target_='mypkg.Net' in run/checkpoints/best.pt" in text
    assert "trust_targets=[mypkg.Net]" in text and "--trust" in text


def test_checking_imports_no_module_the_file_names(tmp_path, monkeypatch):
    sentinel = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(f"open({str(sentinel)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = trust.problems(_cfg(model={"_target_": "evilmod.Net"}, data={"_target_": "nettrain.evilmod.X"}), "f")
    assert len(found) == 2
    assert not sentinel.exists()


def test_trusted_from_overrides():
    got = trust.trusted_from_overrides(["trust_targets=[mypkg.*,other.Net]", "model._target_=x.Y", "lr=1"])
    assert got == ["mypkg.*", "other.Net", "x.Y"]
