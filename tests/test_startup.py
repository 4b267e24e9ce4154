"""Start-up: Hydra composes the run config once for a plain run (nettrain/commands/startup.py)."""

from __future__ import annotations

import json
import sys

import pytest

from conftest import QUIET
from nettrain.commands.startup import mode_is_run


def test_a_plain_run_composes_its_config_once(tmp_path, monkeypatch):
    from hydra._internal.hydra import Hydra

    from nettrain.commands.train import main

    composed = []
    real = Hydra.compose_config

    def counted(self, *args, **kwargs):
        composed.append(kwargs.get("run_mode"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Hydra, "compose_config", counted)
    argv = ["nettrain-train", *QUIET, "data=synthetic", "data.num_samples=300", "epochs=1", f"hydra.run.dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    assert len(composed) == 1  # Hydra's own start-up composes twice: once to read hydra.mode
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    assert Hydra.get_mode.__name__ == "get_mode"  # Hydra is left as it was


@pytest.mark.parametrize(
    ("args", "plain"),
    [
        (["lr=1e-3", "epochs=2"], True),
        (["resume=outputs/x"], True),
        (["-m", "lr=1e-3,1e-2"], False),
        (["--multirun", "lr=1e-3"], False),
        (["hydra.mode=MULTIRUN"], False),
        (["--config-dir", "myconf", "model=wide"], False),
        (["--config-name=config"], False),
        (["-cn", "config"], False),
    ],
)
def test_only_a_plain_run_of_nettrains_config_skips_the_mode_probe(args, plain):
    assert mode_is_run(["nettrain-train", *args]) is plain
