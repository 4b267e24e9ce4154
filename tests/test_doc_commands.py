"""Every shell command the docs show runs (tests/doc_commands.py has the convention and the harness),
and the harness itself: what it reads, what it refuses, and that a failing command fails the page."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from doc_commands import (
    Command,
    DocCommandError,
    blocks,
    commands,
    digits_file,
    pages,
    refusal,
    run_page,
    sample_files,
    tiny,
    tiny_data,
)

from conftest import REPO

PAGES = [p for p in pages() if p.is_file() and commands(p)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return digits_file(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def workdir(tmp_path, monkeypatch, digits) -> Path:
    """A page's working folder: the sample files, and the default data cut to a few hundred digits."""
    tiny_data(monkeypatch, digits)
    return sample_files(tmp_path / "work", digits)


def page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_docs_show_commands_and_every_one_is_a_command_the_test_runs():
    """Checked before anything runs, for every page at once: a ```bash block holds only commands
    this test runs (others go in ```console blocks)."""
    assert REPO / "README.md" in PAGES
    found = [c for p in PAGES for c in commands(p)]
    refused = [f"{c.where}: `{c.first_line}`: {refusal(c)}" for c in found if refusal(c)]
    assert not refused, "commands in ```bash blocks that the docs test cannot run:\n" + "\n".join(refused)


@pytest.mark.docs
@pytest.mark.parametrize("path", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_command_the_docs_show_runs(path, workdir):
    ran = run_page(commands(path), workdir)
    assert [r.code for r in ran] == [0] * len(commands(path))


def test_only_bash_blocks_are_read_with_continuations_comments_and_heredocs(tmp_path):
    path = page(
        tmp_path,
        """\
        # A page

        ```bash
        # a comment line is skipped
        nettrain-train lr=0.01   # a trailing comment stays for bash to drop
        nettrain-train -m \\
            batch_size=32,64
        cat > myconf/model/wide.yaml <<'EOF'
        # kept: part of the file
        hidden: [8]
        EOF
        ```

        ```console
        $ nettrain-train device=cuda
        ```

        ```text
        nettrain-train never=run
        ```

        1. In a list:

           ```bash
           mkdir -p myconf/model
           ```

        ```sh
        pip install nettrain
        ```
        """,
    )
    assert [language for language, _, _ in blocks(path.read_text())] == ["bash", "console", "text", "bash", "sh"]
    assert [(c.line, c.text) for c in commands(path)] == [
        (5, "nettrain-train lr=0.01   # a trailing comment stays for bash to drop"),
        (6, "nettrain-train -m batch_size=32,64"),
        (8, "cat > myconf/model/wide.yaml <<'EOF'\n# kept: part of the file\nhidden: [8]\nEOF"),
        (25, "mkdir -p myconf/model"),
    ]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('pip install -e ".[dev]"', "pip is not run by the docs test; show it in a ```console block"),
        ("torchrun --nproc_per_node=2 --no-python nettrain-train", "torchrun is not run by the docs test"),
        ("python -m pip install mkdocs", "installs are not run by the docs test"),
        ("nettrain-eval outputs/<date>/<time>", "<date> is a placeholder: name a folder an earlier command made"),
        ("nettrain-train --cfg job | head", "a nettrain command stands alone on its line (found |)"),
        ("mkdir -p x && nettrain-train", "a nettrain command stands alone on its line (here after a shell operator)"),
        ("cd outputs", "cd: each command runs in the page's working folder"),
        ("nettrain-fly", "nettrain-fly is not one of nettrain's commands"),
    ],
)
def test_a_command_the_test_cannot_run_is_refused_with_the_reason(line, why):
    assert why in (refusal(Command(Path("page.md"), 1, line)) or "")


@pytest.mark.parametrize(
    "line",
    ["nettrain-train", "nettrain-eval outputs/first --split val", "mkdir -p a && printf 'x' > a/b", "ls a | wc -l"],
)
def test_commands_the_test_runs_are_not_refused(line):
    assert refusal(Command(Path("page.md"), 1, line)) is None


def test_the_tiny_overrides_go_only_where_the_command_sets_nothing_and_cap_what_it_sets():
    train = "nettrain-train"
    assert tiny(train, ["lr=0.1"]) == ["lr=0.1", "epochs=1", "plots=false", "device=cpu"]
    assert tiny(train, ["epochs=2", "plots=true", "data=synthetic"]) == [
        *("epochs=2", "plots=true", "data=synthetic"),
        *("device=cpu", "data.num_samples=200"),
    ]
    given = ["data=synthetic", "data.num_samples=500", "epochs=2", "device=cpu", "plots=false"]
    assert tiny(train, given) == given
    assert tiny(train, ["resume=outputs/first", "epochs=200"]) == [
        *("resume=outputs/first", "epochs=200"),
        *("plots=false", "device=cpu", "epochs=2"),
    ]
    assert tiny(train, ["find=lr"])[-1] == "lr_find.steps=20"
    assert tiny(train, ["find=lr", "lr_find.steps=50"])[-1] == "device=cpu"
    sweep = tiny(train, ["-m", "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=50"])
    assert sweep[-2:] == ["hydra.sweeper.n_trials=3", "hydra.callbacks.sweep_summary.plot=false"]
    assert tiny(train, ["-m", "hydra/sweeper=optuna_search"])[-2] == "hydra.sweeper.n_trials=3"
    assert tiny(train, ["--help"]) == ["--help"]
    assert tiny("nettrain-verify-resume", ["--stop-after", "2"]) == [
        *("--stop-after", "2"),
        *("epochs=1", "plots=false", "device=cpu"),
    ]
    assert tiny("nettrain-summarize", ["outputs/sweep"]) == ["outputs/sweep", "--no-plot"]
    assert tiny("nettrain-eval", ["outputs/first"]) == ["outputs/first"]


def test_a_failing_documented_command_fails_the_page_naming_file_line_and_command(tmp_path, workdir):
    """The control: a ```bash command that exits non-zero fails with its file, line, command and
    output, and the commands after it do not run; a failing command in a ```console block is not run."""
    path = page(
        tmp_path,
        """\
        ```console
        nettrain-train lr=oops
        ```

        ```bash
        mkdir -p before
        nettrain-train data=synthetic lr=-1
        mkdir -p after
        ```
        """,
    )
    with pytest.raises(DocCommandError) as failed:
        run_page(commands(path), workdir)
    message = str(failed.value)
    assert message.startswith(f"{path}:7: `nettrain-train data=synthetic lr=-1` exited 2\n")
    assert (
        "ran in this process as: nettrain-train data=synthetic lr=-1 epochs=1 plots=false device=cpu data.num_samples=200"
        in message
    )
    assert "lr=-1.0: must be a number > 0" in message
    assert (workdir / "before").is_dir() and not (workdir / "after").exists()


def test_a_failing_shell_command_fails_the_page_too(tmp_path, workdir):
    path = page(tmp_path, "```bash\nls table.csv\nls no-such-file.csv\n```\n")
    with pytest.raises(DocCommandError) as failed:
        run_page(commands(path), workdir)
    assert str(failed.value).startswith(f"{path}:3: `ls no-such-file.csv` exited 2\n")
    assert "no-such-file.csv" in str(failed.value).split("output", 1)[1]


def test_chained_commands_share_the_page_folder_and_its_sample_files(tmp_path, workdir):
    """Train into a named folder, then evaluate, predict and export it, as the docs chain them;
    a heredoc writes a file the next command reads."""
    path = page(
        tmp_path,
        """\
        ```bash
        nettrain-train hydra.run.dir=outputs/first
        nettrain-train resume=outputs/first epochs=20   # train longer: capped at 2 epochs
        nettrain-eval outputs/first
        nettrain-predict outputs/first digits/ --out digits.csv
        mkdir -p myconf/model && cat > myconf/model/small.yaml <<'EOF'
        _target_: nettrain.models.MLP
        hidden: [16]
        EOF
        nettrain-train --config-dir myconf model=small data=csv data.path=table.csv data.target=label \\
            hydra.run.dir=outputs/table
        nettrain-predict outputs/table new_rows.csv --out rows.csv
        ```
        """,
    )
    ran = run_page(commands(path), workdir)
    assert [r.code for r in ran] == [0] * 7
    assert ran[0].argv == ["nettrain-train", "hydra.run.dir=outputs/first", "epochs=1", "plots=false", "device=cpu"]
    summary = json.loads((workdir / "outputs" / "first" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_run"]) == ("completed", 2)  # the resume trained one more
    assert len((workdir / "digits.csv").read_text().splitlines()) == 1 + 4  # a header, a row per digit
    assert len((workdir / "rows.csv").read_text().splitlines()) == 1 + 5


def test_the_sample_files_are_what_the_convention_names(workdir):
    for name in ("table.csv", "regression.csv", "new_rows.csv", "images/train/circle", "new_images", "digits"):
        assert (workdir / name).exists(), name
    for root in ("data", "datasets"):
        assert (workdir / root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
        assert (workdir / root / "cifar-10-batches-py" / "data_batch_1").is_file()
