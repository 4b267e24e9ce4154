"""`nettrain-train --help`: every key with its value and meaning, from the schema's comments and
the option files' comments (one source), and every group's options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module

from conftest import CONF, cli
from nettrain.config.help import HIDDEN_KEYS, option_doc, render, schema_sections


def help_page(*overrides: str) -> str:
    """The page as Hydra renders it for `nettrain-train OVERRIDES --help`, before the $ escapes."""
    with initialize_config_module("nettrain.conf", version_base="1.3"):
        root = compose("train", overrides=list(overrides), return_hydra_config=True)
    return render(root).replace("$$", "$")


def row(page: str, key: str) -> tuple[str, str]:
    """(value, meaning) of `key`'s line; a long value puts the meaning on the next line."""
    lines = page.splitlines()
    for i, line in enumerate(lines):
        match = re.fullmatch(rf"  {re.escape(key)} +(.+?)(?:  +(.*))?", line)
        if match:
            after = lines[i + 1] if i + 1 < len(lines) else ""
            meaning = match.group(2) or (after.strip() if re.match(r" {20,}\S", after) else "")
            return match.group(1), meaning
    raise AssertionError(f"no line for {key}")


def test_help_shows_every_key_with_its_default_and_meaning(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = proc.stdout
    assert row(page, "early_stopping.patience") == (
        "3",
        "validations without improvement before stopping (the tutorial's 3): epochs, unless "
        "trainer.val_every_n_steps validates inside them too [resume: may change]",
    )
    assert row(page, "model.hidden") == ("[256]", "hidden layer widths; [] gives a linear classifier")
    assert row(page, "lr") == ("0.001", "learning rate; every optimizer option reads it (${lr})")  # $ survives
    assert row(page, "optimizer.betas") == ("[0.9, 0.999]", "decay rates of the gradient's running mean and square")
    assert (
        "early_stopping: Stop when the monitored metric has not improved for `patience` validations "
        "(one per epoch by default)." in page
    )
    assert "model=mlp: nettrain.models.MLP" in page
    for line in ("model: cnn, mlp, resnet, torchvision", "optimizer: adam, adamw, manual_sgd, rmsprop, sgd"):
        assert line in page
    assert re.search(r"^\* mlp +The tutorial's SimpleNet \(784-256-10, ReLU\), generalised\.$", page, re.MULTILINE)
    assert re.search(r"^  cnn +A small convolutional net", page, re.MULTILINE)
    assert not list(tmp_path.iterdir())  # --help writes nothing


def test_help_shows_the_chosen_options_and_overrides_and_your_own_options(tmp_path):
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "wide.yaml").write_text(
        "# A wide MLP of my own. Second sentence.\n_target_: nettrain.models.MLP\n"
        "hidden: [1024, 512]   # two wide layers\nactivation: gelu\n"
    )
    proc = cli(
        "--config-dir", str(tmp_path / "myconf"), "model=wide", "early_stopping.patience=7", "--help", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    page = proc.stdout
    assert "model: cnn, mlp, resnet, torchvision, wide" in page
    assert re.search(r"^\* wide +A wide MLP of my own\.$", page, re.MULTILINE)
    assert row(page, "model.hidden") == ("[1024, 512]", "two wide layers")
    # a key the file leaves bare takes the comment of an option with the same _target_ (mlp.yaml)
    assert row(page, "model.activation") == ("gelu", "relu | gelu | tanh | sigmoid | leaky_relu | silu")
    assert row(page, "early_stopping.patience")[0] == "7"


def test_hydra_help_stays_hydras_and_a_bad_option_is_one_clear_error(tmp_path):
    proc = cli("--hydra-help", cwd=tmp_path)
    assert proc.returncode == 0 and "Hydra (1.3" in proc.stdout and "early_stopping.patience" not in proc.stdout
    proc = cli("model=nope", "--help", cwd=tmp_path)
    assert proc.returncode == 2
    assert "model=nope: no such model option; allowed: cnn, mlp, resnet, torchvision" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "choice",
    [
        "model=cnn",
        "optimizer=sgd",
        "optimizer=rmsprop",
        "scheduler=plateau",
        "data=synthetic",
        "data=mnist",
        "regularization=l2",
    ],
)
def test_every_key_of_every_option_has_a_meaning(choice):
    page = help_page(choice)
    group = choice.split("=")[0]
    keys = re.findall(rf"^  ({group}\.\w+) ", page, re.MULTILINE)
    assert keys
    for key in keys:
        assert row(page, key)[1], f"{choice}: {key} has no comment in its option file or the schema"


def test_every_schema_field_and_option_file_is_documented():
    """The comments are the help page's only source: a setting without one is a bug."""
    for name, section in schema_sections().items():
        if name == "ConfigError":
            continue
        assert section.doc or name == "TrainConfig", f"{name} has no docstring"
        bare = [key for key, comment in section.fields.items() if not comment and key not in section.nested]
        assert not bare, f"{name}: no comment on {bare}"
    regularization = schema_sections()["RegularizationConfig"].fields
    for path in sorted(Path(CONF).glob("*/*.yaml")):
        doc, comments = option_doc(path.read_text())
        assert doc, f"{path} has no opening comment"
        keys = [k for k in (yaml.safe_load(path.read_text()) or {}) if k not in HIDDEN_KEYS]
        bare = [
            k for k in keys if k not in comments and not (path.parent.name == "regularization" and k in regularization)
        ]
        assert not bare, f"{path}: no comment on {bare}"


def test_help_lists_the_class_imbalance_settings():
    page = help_page("data=csv", "data.path=t.csv", "data.target=y", "loss.class_weights=balanced")
    assert row(page, "loss.class_weights") == (
        "balanced",
        "the loss's per-class weight: null | balanced (n / (classes x count), from the training split) | [w0, w1, ...]",
    )
    assert row(page, "data.sampler") == (
        "shuffle",
        "shuffle (a permutation each epoch) | balanced (drawn with replacement, each class about equally often)",
    )
