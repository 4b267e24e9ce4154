"""What a new user runs into first, through the commands themselves: a data option's required keys,
a typo's suggestion, a flag instead of key=value, a comma list without brackets, a failed download,
a resumed finished run with another lr, the regression summary, piped predictions and a run whose
validation gets worse from its first epoch."""

from __future__ import annotations

import csv
import json
import urllib.error

import pytest
from made_data import table

from conftest import QUIET, cli

TINY = [*QUIET, "data=synthetic", "data.num_samples=300", "model.hidden=[16]"]


def clean_failure(proc, *needles: str) -> str:
    """Exit 2, one `Error:` line holding every needle, no traceback; returns stderr."""
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("Error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


# -- a data option's required keys (???) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "missing"),
    [(["data.path=houses.csv"], "data.target"), ([], "data.path, data.target")],
    ids=["no target", "no path nor target"],
)
def test_csv_without_its_required_keys_names_them_and_leaves_no_folder(tmp_path, given, missing):
    proc = cli(*QUIET, "data=csv", *given, cwd=tmp_path)
    err = clean_failure(proc, f"{missing}: required by data=csv and not set (???)", "data.target=COLUMN")
    assert ("data.path=FILE" in err) == ("data.path" in missing)
    assert "MissingMandatoryValue" not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, failed or empty


# -- the command line -------------------------------------------------------------------------------


def test_did_you_mean_suggests_a_key_of_the_chosen_option(tmp_path):
    proc = cli(*TINY, "optimizer=sgd", "optimizer.momentun=0.9", cwd=tmp_path)
    err = clean_failure(proc, "optimizer.momentun=0.9: unknown key", "did you mean optimizer.momentum?")
    assert "betas" not in err  # adam's key, the default option's
    proc = cli(*TINY, "optimizer.momentun=0.9", cwd=tmp_path)  # adam has none: where it is
    clean_failure(proc, "did you mean optimizer.momentum?", "optimizer=adam has no momentum", "rmsprop, sgd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--epochs", "3"], "write epochs=3 (not --epochs 3)"),
        (["--epochs=3", "--dry-run"], "write epochs=3 (not --epochs=3); dry_run=true (not --dry-run)"),
        (["--data.path", "x.csv"], "write data.path=x.csv"),
    ],
)
def test_a_setting_given_as_a_flag_is_answered_with_its_key_value_form(tmp_path, args, wanted):
    proc = cli(*TINY, *args, cwd=tmp_path)
    err = clean_failure(proc, wanted, "takes settings as key=value")
    assert "usage:" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_comma_list_without_brackets_keeps_hydras_hint(tmp_path):
    proc = cli(*TINY, "loggers=csv,tensorboard", cwd=tmp_path)
    clean_failure(proc, "loggers=csv,tensorboard: ambiguous value", "'loggers=[csv,tensorboard]'", "add --multirun")


@pytest.mark.parametrize(
    "failure",
    [urllib.error.URLError("[Errno -2] Name or service not known"), ConnectionResetError(104, "reset by peer")],
    ids=["URLError", "OSError"],
)
def test_a_failed_download_is_a_data_problem_naming_the_url_and_root(tmp_path, monkeypatch, failure):
    import torchvision.datasets.mnist

    def no_network(url, *args, **kwargs):
        raise failure

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", no_network)
    root = tmp_path / "datasets"
    proc = cli(*QUIET, "data=mnist", f"data.root={root}", "data.download=true", "epochs=1", cwd=tmp_path)
    err = clean_failure(proc, "Error: Data: ", f"{root}", torchvision.datasets.mnist.MNIST.mirrors[0])
    assert "Invalid config" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("summary.json"))


# -- resume -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoints", ["true", "false"])
def test_resuming_a_finished_run_refuses_a_changed_lr_and_names_it(tmp_path, checkpoints):
    run = tmp_path / "run"
    trained = cli(*TINY, "epochs=1", f"checkpoint.enabled={checkpoints}", f"hydra.run.dir={run}", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    summary = (run / "summary.json").read_text()
    proc = cli(f"resume={run}", "lr=0.1", cwd=tmp_path)
    clean_failure(proc, "these settings differ from the run being resumed", "lr: 0.001 -> 0.1")
    assert "already finished" not in proc.stdout
    assert (run / "summary.json").read_text() == summary  # nothing recorded over the finished run
    proc = cli(f"resume={run}", "epochs=1", "console.progress=off", cwd=tmp_path)  # safe keys: nothing to do
    assert proc.returncode == 0 and "already finished" in proc.stdout, proc.stderr


# -- the end of a run -------------------------------------------------------------------------------


def test_a_regression_run_ends_with_its_test_r2_and_mae_not_an_accuracy(tmp_path):
    path = table(tmp_path / "r.csv", n=200, task="regression")
    run = tmp_path / "run"
    proc = cli(
        *QUIET,
        "data=csv",
        f"data.path={path}",
        "data.target=value",
        "data.task=regression",
        "epochs=2",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert "test_acc" not in summary and "best_val_acc" not in summary
    for key in ("test_r2", "test_mae", "best_val_r2", "best_val_mae"):
        assert isinstance(summary[key], float), key
    end = proc.stdout[proc.stdout.rindex("run completed") :]
    assert f"test        R² {summary['test_r2']:.4f}, MAE {summary['test_mae']:.4g}, loss" in end
    assert f"val_r2 {summary['best_val_r2']:.4f}, val_mae {summary['best_val_mae']:.4g}" in end
    assert "accuracy" not in end and "acc" not in end and "class_names" not in proc.stdout


def test_validation_worse_from_the_first_epoch_is_diagnosed_at_the_end(tmp_path):
    run = tmp_path / "run"
    args = ("model.hidden=[256]", "lr=0.01", "epochs=4", "early_stopping.enabled=false", f"hydra.run.dir={run}")
    proc = cli(*QUIET, "data=synthetic", "data.num_samples=300", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val, train = [float(r["val_loss"]) for r in rows], [float(r["train_loss"]) for r in rows]
    assert all(v > val[0] for v in val[1:]) and train[-1] < train[0]  # the situation itself
    lines = proc.stdout.strip().splitlines()
    warning = lines[lines.index(next(line for line in lines if "run completed" in line)) - 1]
    assert warning.startswith("warning: validation got worse from the first epoch"), proc.stdout[-800:]
    assert "try a lower lr (now 0.01, try lr=0.001)" in warning
    assert any(
        line.split() == ["diagnosis", "overfitting:", "findings", "in", "summary.json", '"diagnosis"'] for line in lines
    )
    diagnosis = json.loads((run / "summary.json").read_text())["diagnosis"]
    assert diagnosis["verdict"] == "overfitting"
    assert diagnosis["findings"][-1].startswith("overfitting: validation got worse from the first epoch")


# -- nettrain-predict, piped --------------------------------------------------------------------------


def test_predict_piped_prints_every_row_with_whole_file_names(tmp_path, capsys):
    from nettrain.commands.predict import main as predict_main

    deep = tmp_path / ("a-folder-with-a-long-name-" * 4) / "inputs"
    deep.mkdir(parents=True)
    path = table(deep / "t.csv", n=40)
    run = tmp_path / "run"
    trained = cli(
        *QUIET, "data=csv", f"data.path={path}", "data.target=label", "epochs=1", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    capsys.readouterr()
    out = tmp_path / "pred.csv"
    assert predict_main([str(run), str(path), "--out", str(out)]) == 0  # capsys: stdout is not a terminal
    printed = capsys.readouterr()
    with open(out, newline="") as f:
        written = list(csv.DictReader(f))
    shown = list(csv.DictReader(printed.out.splitlines()))
    assert len(shown) == 40 and shown == written  # every row, as in the file
    assert all(row["input"] == f"{path}:{i}" for i, row in enumerate(shown, 1))
    assert len(str(path)) > 120 and "…" not in printed.out
    assert f"wrote {out}" in printed.err


# -- nettrain-summarize on what a new user's outputs/ holds ---------------------------------------------


def test_summarize_leaves_out_dry_runs_and_finders_and_says_how_many(tmp_path, capsys):
    from nettrain.commands.summarize import main as summarize_main

    runs = tmp_path / "outputs"
    for name, extra in [("train", ["epochs=1"]), ("dry", ["dry_run=true"]), ("find", ["find=lr", "lr_find.steps=10"])]:
        proc = cli(*TINY, *extra, f"hydra.run.dir={runs / name}", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    capsys.readouterr()
    assert summarize_main([str(runs), "--no-plot"]) == 0  # the dry run and the finder are not incomplete runs
    printed = capsys.readouterr()
    assert "2 folders left out (1 dry run, 1 find=lr run)" in printed.err
    assert "1 runs, 1 ok" in printed.out and "incomplete" not in printed.out
    with open(runs / "summary.csv", newline="") as f:
        assert [row["job"] for row in csv.DictReader(f)] == ["train"]
    assert "2 folders left out" in (runs / "summary.md").read_text()
