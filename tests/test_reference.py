"""One source of each setting's meaning: the schema's comments (with their `[resume: may change]`
marks) and the option files' comments feed `nettrain-train --help`, the resume rules and the
generated docs/reference/settings.md, which must match what the generator writes now."""

from __future__ import annotations

import importlib.util
import re
import textwrap

import pytest
from omegaconf import MISSING, OmegaConf
from test_help import help_page, row

from conftest import CONF, REPO
from nettrain.config import reference
from nettrain.config.help import RESUME_TAG, resume_safe_keys, safe_keys, schema_sections
from nettrain.config.schema import TrainConfig, flatten
from nettrain.run.resume import config_changes, refused_changes

# The settings a resumed run could change before the schema carried the marks (the tuple
# nettrain/run/resume.py kept by hand): the marks must give exactly these.
SAFE_BEFORE_THE_MARKS = {
    "epochs",
    "resume",
    "trust_targets",
    "device",
    "threads",
    "console.",
    "checkpoint.",
    "plots",
    "early_stopping.enabled",
    "early_stopping.patience",
    "early_stopping.min_delta",
    "loggers",
    "logger.",
    "lr_find.",
    "profiler.",
    "grad_monitor.vanishing_below",
    "grad_monitor.exploding_above",
    "grad_monitor.ratio",
    "grad_monitor.update_ratio_above",
    "grad_monitor.norm_growth",
    "grad_monitor.dead_fraction",
}
# Settings added since, each with the reason a resumed run may change it
SAFE_SINCE = {
    "callbacks",  # they watch the run; what it computed does not depend on them
    "callbacks_every_n_steps",
    "trainer.max_steps",  # budgets a resumed run may extend (docs/how-to/long-runs.md)
    "trainer.max_time",
}
COMMITTED = REPO / reference.PAGE


def test_the_schema_marks_give_the_settings_that_may_change_on_resume():
    keys = resume_safe_keys()
    expected = SAFE_BEFORE_THE_MARKS | SAFE_SINCE
    assert set(keys) == expected and len(keys) == len(expected)


def test_a_mark_on_a_field_or_a_section_reads_as_a_key_or_a_whole_section(tmp_path):
    path = tmp_path / "fake_schema.py"
    path.write_text(
        textwrap.dedent(
            '''
            from dataclasses import dataclass, field

            @dataclass
            class Inner:
                """A section."""
                kept: int = 1  # changes the run
                free: int = 2  # may differ [resume: may change]

            @dataclass
            class Whole:
                """Another."""
                a: int = 0  # anything

            @dataclass
            class TrainConfig:
                lr: float = 0.1  # the learning rate
                epochs: int = 3  # upper bound [resume: may change]
                inner: Inner = field(default_factory=Inner)
                whole: Whole = field(default_factory=Whole)  # [resume: may change]
            '''
        )
    )
    spec = importlib.util.spec_from_file_location("fake_schema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sections = schema_sections(module)
    assert safe_keys(sections) == ("epochs", "inner.free", "whole.")
    assert sections["TrainConfig"].fields["epochs"] == "upper bound"  # the mark is not part of the meaning
    assert sections["Inner"].fields == {"kept": "changes the run", "free": "may differ"}


def test_a_resume_allows_the_marked_settings_and_refuses_the_others():
    old = flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig)))
    old = {k: (0 if v == MISSING else v) for k, v in old.items()}
    allowed = {**old, "epochs": 9, "console.show_model": False, "grad_monitor.ratio": 5.0, "lr_find.steps": 30}
    assert config_changes(old, allowed) == []
    refused = {**old, "seed": 7, "grad_monitor.every_n_steps": 3, "early_stopping.monitor": "val_acc"}
    assert config_changes(old, refused) == [
        "early_stopping.monitor: 'val_loss' -> 'val_acc'",
        f"grad_monitor.every_n_steps: {old['grad_monitor.every_n_steps']} -> 3",
        "seed: 0 -> 7",
    ]
    message = refused_changes(REPO, old, refused)[0]
    assert "Allowed to change on resume: epochs, device, threads, resume, plots, early_stopping.enabled," in message
    assert "checkpoint*, trainer.max_steps, trainer.max_time, console*" in message


def test_help_marks_the_settings_that_may_change_on_resume():
    page = help_page()
    assert row(page, "epochs")[1].endswith(f"sooner {RESUME_TAG}")
    assert row(page, "console.show_model")[1].endswith(RESUME_TAG)  # the whole section is marked
    assert row(page, "logger.mlflow.uri")[1].endswith(RESUME_TAG)  # and a section inside it
    for key in ("seed", "lr", "grad_monitor.every_n_steps", "early_stopping.monitor", "model.hidden"):
        assert RESUME_TAG not in row(page, key)[1], key
    assert f"console: What the console shows. {RESUME_TAG}" in page
    assert f"   {RESUME_TAG}: a resumed run (resume=RUN_DIR) may set it differently" in page


@pytest.fixture(scope="module")
def generated() -> str:
    return reference.page()


def test_the_committed_reference_is_what_the_generator_writes(generated):
    assert COMMITTED.is_file(), f"{reference.PAGE} is missing: run `{reference.COMMAND}` and commit it"
    assert COMMITTED.read_text(encoding="utf-8") == generated, (
        f"{reference.PAGE} is stale (a setting, default, comment or option changed): "
        f"run `{reference.COMMAND}` from the repository root and commit the result"
    )


def table_rows(page: str) -> dict[str, tuple[str, str]]:
    """The rows of the page's (key, default, meaning) tables: key -> (default, meaning); the first
    row of a key that several options have."""
    rows: dict[str, tuple[str, str]] = {}
    for line in page.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows.setdefault(cells[0].strip("`"), (cells[1].strip("`"), cells[2]))
    return rows


def test_the_reference_has_every_setting_option_and_key_with_its_meaning(generated):
    rows = table_rows(generated)
    groups = {"model", "optimizer", "scheduler", "data", "regularization", "loss"}
    settings = [
        k for k in flatten(OmegaConf.to_container(OmegaConf.structured(TrainConfig))) if k.split(".")[0] not in groups
    ]
    assert "lr_find.diverge" in settings and "logger.wandb.mode" in settings
    missing = [k for k in settings if k not in rows and k.split(".")[0] not in rows]
    assert not missing, f"settings missing from the reference: {missing}"
    assert rows["early_stopping.patience"] == (
        "3",
        "validations without improvement before stopping (the tutorial's 3): epochs, unless "
        "trainer.val\\_every\\_n\\_steps validates inside them too \\[resume: may change\\]",
    )
    assert rows["lr"] == ("0.001", "learning rate; every optimizer option reads it (${lr})")
    for path in sorted(CONF.rglob("*.yaml")):
        group = path.parent.relative_to(CONF).as_posix()
        if group == ".":
            continue
        assert f"#### {group}={path.stem}\n" in generated, f"{group}={path.stem} is not in the reference"
    assert rows["model.hidden"] == ("128", "width of the Linear layer before the classifier")  # cnn, first option
    assert rows["hydra.launcher.gpus_per_node"][0] == "1"
    empty = [key for key, (_, meaning) in rows.items() if not meaning]
    assert not empty, f"rows of the reference without a meaning (a comment is missing at the source): {empty}"
    resume = generated.split("## What may change on resume", 1)[1]
    listed = re.findall(r"^\| `([^`]+)` \|", resume, re.MULTILINE)
    assert listed == [k + ("*" if k.endswith(".") else "") for k in resume_safe_keys()]


def test_the_generator_checks_and_rewrites_a_stale_page(tmp_path, capsys, generated):
    out = tmp_path / "settings.md"
    out.write_text("# an old page\n")
    assert reference.main(["--check", "--out", str(out)]) == 1
    assert (
        f"{out} is stale: run `{reference.COMMAND}` from the repository root and commit it" in capsys.readouterr().err
    )
    assert out.read_text() == "# an old page\n"  # --check writes nothing
    assert reference.main(["--out", str(out)]) == 0
    assert out.read_text() == generated
    assert reference.main(["--check", "--out", str(out)]) == 0
    assert reference.main(["--out", str(tmp_path / "no" / "such" / "folder.md")]) == 2


def test_a_table_cell_keeps_code_and_escapes_markup():
    assert reference.cell("32 | bf16; `a|b` stays; <class>/*.png; _target_ [x]") == (
        "32 \\| bf16; `a|b` stays; &lt;class>/\\*.png; \\_target\\_ \\[x\\]"
    )
    assert reference.code("") == "`''`"
