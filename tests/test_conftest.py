"""The suite's own shortcuts (tests/conftest.py) change how fast Hydra composes, never what: each
is checked here against Hydra's own composing."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_module
from hydra._internal import config_loader_impl
from omegaconf import OmegaConf

from conftest import HYDRA_COMPOSING

COMMANDS = [
    [],
    ["epochs=3", "data=synthetic", "data.num_samples=300", "lr=0.01"],
    ["data=synthetic", "lr=0.01", "epochs=3", "data.num_samples=300"],  # the same, in another order
    ["optimizer=sgd", "optimizer.momentum=0.5", "scheduler=step", "~loss.label_smoothing"],
    ["regularization=dropout", "+model.extra=7", "hydra.job.chdir=true", "hydra/launcher=basic"],
    ["model=cnn", "data=synthetic", "model.hidden=64", "model.channels=[4,8]"],
    ["optimizer=adam", "optimizer={lr: 0.5}"],  # a dict for a group: a config override
]


def _composed(overrides: list[str], *, once: bool) -> dict:
    create, merge = ("create_once", "merge_once") if once else ("create", "merge")
    saved = (
        config_loader_impl.create_defaults_list,
        config_loader_impl.ConfigLoaderImpl._compose_config_from_defaults_list,
    )
    config_loader_impl.create_defaults_list = HYDRA_COMPOSING[create]
    config_loader_impl.ConfigLoaderImpl._compose_config_from_defaults_list = HYDRA_COMPOSING[merge]
    try:
        with initialize_config_module("nettrain.conf", version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
    finally:
        config_loader_impl.create_defaults_list = saved[0]
        config_loader_impl.ConfigLoaderImpl._compose_config_from_defaults_list = saved[1]
    return OmegaConf.to_container(cfg, resolve=False)


@pytest.mark.parametrize("overrides", COMMANDS, ids=lambda o: " ".join(o) or "defaults")
def test_each_structure_composed_once_gives_hydras_config(overrides):
    """Composed through the once-per-structure stand-ins, twice (the second from what the first
    left), a command's config is Hydra's own, hydra.* included; a caller that changes its copy
    changes nothing for the next."""
    hydras = _composed(overrides, once=False)
    first = _composed(overrides, once=True)
    assert first == hydras
    with initialize_config_module("nettrain.conf", version_base="1.3"):
        changed = compose("train", overrides=overrides)
        changed.epochs = 12345
    assert _composed(overrides, once=True) == hydras


def test_a_bad_override_fails_as_in_hydra():
    """A config override for a key that does not exist, or a group option that does not, raises
    what Hydra raises, with the same message."""
    for bad in (["data=synthetic", "data.num_sample=3"], ["optimizer=adamw2"]):
        errors = []
        for once in (False, True):
            with pytest.raises(Exception) as info:
                _composed(bad, once=once)
            errors.append((type(info.value), str(info.value)))
        assert errors[0] == errors[1], errors


def test_an_entry_taken_out_of_the_config_store_is_seen(monkeypatch):
    """A test may take an option out of Hydra's ConfigStore (a plugin's, to play its absence): the
    structure composed before is not reused, and composing fails as in Hydra."""
    from hydra.core.config_store import ConfigStore

    assert _composed([], once=True) == _composed([], once=False)
    monkeypatch.delitem(ConfigStore.instance().repo, "nettrain_schema.yaml")
    errors = []
    for once in (False, True):
        with pytest.raises(Exception) as info:
            _composed([], once=once)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] and "nettrain_schema" in errors[0][1], errors
