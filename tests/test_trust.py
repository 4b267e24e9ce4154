"""The `_target_` allowlist for configs read from files (nettrain/config/trust.py)."""

from __future__ import annotations

import pytest

from conftest import needs_extra
from nettrain.config import trust
from nettrain.errors import ConfigError


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
    ("model", "nettrain.models.ResNet"),
    ("model", "nettrain.models.torchvision_model"),
    ("optimizer", "nettrain.optim.ManualSGD"),
    ("optimizer", "torch.optim.SGD"),
    ("optimizer", "torch.optim.AdamW"),
    ("optimizer", "torch.optim.Adagrad"),  # not an option in conf/, but torch's own optimizer
    ("scheduler", "torch.optim.lr_scheduler.CosineAnnealingLR"),
    ("scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"),
    ("scheduler", "torch.optim.lr_scheduler.OneCycleLR"),
    ("loss", "torch.nn.MSELoss"),
    ("loss", "torch.nn.modules.loss.NLLLoss"),
    ("data", "nettrain.data.torchvision_dataset"),
    ("data", "nettrain.data.tabular.csv"),
    ("data", "nettrain.data.image_folder.image_folder"),
    ("data", "nettrain.data.vision.torchvision_classification"),
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
    "nettrain.data.tabular.read_table",  # a file reader: not a data option
    "nettrain.data.mnist_sample_path",
    "nettrain.data.image_folder.decode_image",
    "torch.nn.functional.relu",  # a function, not a module class
    "torch.nn.modules.module.torch.load",
    "torch.optim.Optimizer.load_state_dict",
    "torch.save",
    "torchvision.io.write_png",
    "torchvision.datasets.utils.download_url",
    "torchvision.datasets.MNIST",  # a downloader; data=mnist goes through nettrain.data.torchvision_dataset
    "numpy.load",
    "mypkg.Evil",
    "nettrain.commands.sweep_callback.SweepSummaryCallback",  # only as a hydra callback
]


@pytest.mark.parametrize("target", REFUSED)
def test_anything_else_is_refused_naming_key_and_target(target):
    found = trust.problems(_cfg(data={"_target_": target, "f": "evil.pt"}), "ckpt.pt")
    assert len(found) == 1
    assert found[0].startswith(f"data._target_={target!r} in ckpt.pt")


# each slot takes its own kind only: a component of another slot is refused there
WRONG_SLOT = [
    ("model", "nettrain.data.synthetic"),
    ("model", "torch.nn.Linear"),
    ("model", "torchvision.models.resnet18"),  # model=torchvision builds it through nettrain's wrapper
    ("data", "nettrain.models.MLP"),
    ("optimizer", "torch.optim.lr_scheduler.StepLR"),
    ("scheduler", "torch.optim.SGD"),
    ("loss", "torch.nn.Linear"),
    ("loss", "nettrain.models.MLP"),
    ("regularization", "torch.nn.MSELoss"),
]


@pytest.mark.parametrize(("slot", "target"), WRONG_SLOT)
def test_a_slot_takes_only_its_own_kind(slot, target):
    found = trust.problems(_cfg(**{slot: {"_target_": target}}), "ckpt.pt")
    assert len(found) == 1 and found[0].startswith(f"{slot}._target_={target!r} in ckpt.pt")
    assert "trust_targets=" in found[0]


def _options() -> list[tuple[str, str]]:
    from importlib.resources import files

    conf = files("nettrain.conf")
    groups = ["model", "optimizer", "scheduler", "regularization", "data", "hydra/launcher", "hydra/sweeper"]
    return [
        (g, f.name[:-5])
        for g in groups
        for f in sorted(conf.joinpath(g).iterdir(), key=str)
        if f.name.endswith(".yaml")
    ]


# the options that extend a plugin's own (conf/hydra/launcher/slurm.yaml, conf/hydra/sweeper/optuna_search.yaml)
PLUGIN_OF = {
    "hydra/launcher": ("slurm", "hydra_plugins.hydra_submitit_launcher"),
    "hydra/sweeper": ("sweep", "hydra_plugins.hydra_optuna_sweeper"),
}


@pytest.mark.parametrize(
    ("group", "option"),
    [pytest.param(g, o, marks=needs_extra(*PLUGIN_OF[g])) if g in PLUGIN_OF else (g, o) for g, o in _options()],
)
def test_every_option_in_conf_is_trusted_by_construction(group, option):
    """A run of any shipped option can be evaluated, predicted, exported and resumed without --trust:
    the config Hydra composes for it (the hydra section included) passes the check as it is."""
    from hydra import compose, initialize_config_module

    from nettrain.config.store import register_schema

    register_schema()
    with initialize_config_module(config_module="nettrain.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"{group}={option}"], return_hydra_config=True)
    assert trust.problems(cfg, f"{group}={option}") == []


def test_nested_and_listed_targets_are_checked():
    cfg = _cfg(
        model={
            "_target_": "nettrain.models.MLP",
            "block": {"_target_": "torch.nn.ReLU"},
            "extra": [{"_target_": "torch.nn.Linear"}, {"inner": {"_target_": "os.system"}}],
        }
    )
    keys = [p.split("=")[0] for p in trust.problems(cfg, "f")]
    assert keys == ["model.block._target_", "model.extra[0]._target_", "model.extra[1].inner._target_"]


def test_hydra_section_callbacks_launchers_sweepers_and_logging():
    hydra = {
        "callbacks": {"s": {"_target_": "nettrain.commands.sweep_callback.SweepSummaryCallback"}},
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


def test_odd_targets_are_refused():
    found = trust.problems(_cfg(model={"_target_": "nettrain.models.${x}"}, loss={"_target_": 3}), "f")
    assert [p.split("=")[0] for p in found] == ["model._target_", "loss._target_"]
    assert all("not a plain dotted name" in p for p in found)


HIDDEN = "{_target_: nettrain.files.write_text, path: SENTINEL, text: ran}"
# each built-in resolver, used to smuggle a _target_ in or to read what a file should not
RESOLVER_VALUES = {
    "oc.create": f"${{oc.create:{HIDDEN}}}",
    "oc.decode": "${oc.decode:'{_target_: os.system, command: touch SENTINEL}'}",
    "oc.select": f"${{oc.select:no.such.key,{HIDDEN}}}",
    "oc.dict.keys": "${oc.dict.keys:model}",
    "oc.dict.values": "${oc.dict.values:model}",
    "oc.env": "${oc.env:HOME}",
    "oc.deprecated": "${oc.deprecated:lr}",
    "hydra": "${hydra:runtime.output_dir}",
    "myplugin.make": "${myplugin.make:x}",  # a resolver some installed package registers
}
# where a value can stand: nested, in a list, as an argument, as _partial_, in the hydra section
PLACEMENTS = {
    "model.extra": lambda v: _cfg(model={"_target_": "nettrain.models.MLP", "extra": v}),
    "model.layers[1]": lambda v: _cfg(model={"_target_": "nettrain.models.MLP", "layers": [1, v]}),
    "model._args_[0]": lambda v: _cfg(model={"_target_": "nettrain.models.MLP", "_args_": [v]}),
    "optimizer._partial_": lambda v: _cfg(optimizer={"_target_": "torch.optim.Adam", "_partial_": v}),
    "model.deep.deeper[0].x": lambda v: _cfg(model={"_target_": "nettrain.models.MLP", "deep": {"deeper": [{"x": v}]}}),
    "hydra.callbacks.evil": lambda v: _cfg(hydra={"callbacks": {"evil": v}}),
    "hydra.job_logging.handlers.file.filename": lambda v: _cfg(
        hydra={"job_logging": {"handlers": {"file": {"class": "logging.FileHandler", "filename": v}}}}
    ),
    "hydra.launcher.n_jobs": lambda v: _cfg(hydra={"launcher": {"n_jobs": v}}),
}


@pytest.mark.parametrize("resolver", list(RESOLVER_VALUES))
@pytest.mark.parametrize("where", list(PLACEMENTS))
def test_a_resolver_in_a_file_is_refused_wherever_it_stands(resolver, where):
    """`${oc.create:...}` and its kin turn a value into a `_target_` (or read the environment) when
    Hydra resolves the node: refused before anything resolves, trusted or not."""
    value = RESOLVER_VALUES[resolver]
    for trusted in (False, True):
        found = trust.problems(PLACEMENTS[where](value), "ckpt.pt", trust_all=trusted)
        assert len(found) == 1, found
        assert found[0].startswith(f"{where}=")
        assert f" in ckpt.pt: calls the resolver {resolver!r}; " in found[0]
        assert (
            "may only refer to other keys" in found[0] and f"give it on the command line instead ({where}=" in found[0]
        )


def test_a_resolver_inside_an_allowed_one_or_a_text_is_refused_too():
    for value in ("${now:${oc.env:X}}", "prefix-${oc.env:X}", "${..x}${oc.create:{}}"):
        found = trust.problems(_cfg(model={"_target_": "nettrain.models.MLP", "extra": value}), "f")
        assert len(found) == 1 and "calls the resolver" in found[0], value
    found = trust.problems(_cfg(model={"_target_": "nettrain.models.MLP", "extra": "${${x}}"}), "f")
    assert len(found) == 1 and "a key named by another interpolation" in found[0]
    found = trust.problems(_cfg(model={"_target_": "nettrain.models.MLP", "extra": "${oc.env:"}), "f")
    assert len(found) == 1 and "not a valid interpolation" in found[0]


def test_references_and_safe_resolvers_are_kept_and_followed_to_their_slot():
    plain = _cfg(
        lr=0.1,
        regularization={"dropout": 0.5},
        model={"_target_": "nettrain.models.MLP", "dropout": "${regularization.dropout}", "tag": "${now:%Y}"},
        optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": "${lr}", "n": "${..lr}"},
    )
    assert trust.problems(plain, "f") == []
    # a reference brings a node to where Hydra builds it: checked there
    moved = _cfg(model="${data}")
    found = trust.problems(moved, "f")
    assert len(found) == 1 and found[0].startswith("model._target_='nettrain.data.synthetic' in f")
    hidden = _cfg(stash={"x": 1}, model={"_target_": "nettrain.models.MLP", "extra": "${stash}"})
    hidden["stash"] = {"_target_": "os.system", "command": "touch SENTINEL"}
    keys = sorted(p.split("=")[0] for p in trust.problems(hidden, "f"))
    assert keys == ["model.extra._target_", "stash._target_"]
    # a target given by reference is checked as what it refers to
    found = trust.problems(_cfg(evil="os.system", model={"_target_": "${evil}"}), "f")
    assert len(found) == 1 and found[0].startswith("model._target_='os.system' in f")
    # a cycle or a reference to nothing builds nothing, and is no reason to crash
    assert trust.problems(_cfg(a="${b}", b="${a}", c={"x": "${c}"}, d="${no.such.key}"), "f") == []


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


def test_a_value_that_resolves_to_an_interpolation_is_refused():
    """Hydra's instantiate resolves what nettrain hands it once more: text that only becomes
    `${oc.create:...}` on the first resolution (escaped, or assembled from a `$`) is refused too."""
    escaped = _cfg(model={"_target_": "nettrain.models.MLP", "extra": "\\${oc.create:{_target_: os.system}}"})
    found = trust.problems(escaped, "f", trust_all=True)
    assert len(found) == 1 and "escapes an interpolation" in found[0]
    assembled = _cfg(model={"_target_": "nettrain.models.MLP", "d": "$", "extra": "${model.d}{oc.create:{}}"})
    found = trust.problems(assembled, "f", trust_all=True)
    assert len(found) == 1 and found[0].startswith("model.extra='${model.d}{oc.create:{}}' in f: resolves to ")
    assert trust.problems(_cfg(model={"_target_": "nettrain.models.MLP", "d": "$", "x": "a${model.d}b"}), "f") == []
