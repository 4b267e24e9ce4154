"""A received run folder can hold symlinks; nettrain follows none of them. Each test plants a link
in a copy of one trained run, pointing at a SENTINEL file or folder outside it, and checks that
the command exits 2 with one message naming the link, without a traceback, and that neither the
outside target nor the run folder's own files changed."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from made_data import table

from conftest import QUIET

SENTINEL_TEXT = "outside the run folder: must stay exactly as it is\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run on a table (so nettrain-predict has inputs too), trained by nettrain-train."""
    from nettrain.commands.train import main

    root = tmp_path_factory.mktemp("links")
    data = table(root / "rows.csv", n=200)
    run = root / "run"
    mp = pytest.MonkeyPatch()
    try:
        mp.chdir(root)
        mp.setattr(
            sys,
            "argv",
            [
                "nettrain-train",
                *QUIET,
                "data=csv",
                f"data.path={data}",
                "data.target=label",
                "epochs=1",
                "model.hidden=[8]",
                f"hydra.run.dir={run}",
            ],
        )
        main()
    finally:
        mp.undo()
    assert (run / "summary.json").is_file() and (run / ".nettrain.lock").is_file() and (run / "train.log").is_file()
    return run, data


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    """A fresh copy of the trained run for one test, and the working directory beside it."""
    monkeypatch.chdir(tmp_path)
    copy = tmp_path / "run"
    shutil.copytree(trained[0], copy, symlinks=True)
    return copy


@pytest.fixture
def rows(trained):
    return trained[1]


def sentinel_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "SENTINEL"
    path.parent.mkdir(exist_ok=True)
    path.write_text(SENTINEL_TEXT)
    return path


def sentinel_folder(tmp_path: Path) -> Path:
    path = tmp_path / "outside-folder"
    path.mkdir()
    (path / "SENTINEL").write_text(SENTINEL_TEXT)
    return path


def link(path: Path, target: Path) -> None:
    """Replace `path` (a file or a folder) by a symlink to `target`."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under `folder`, not following links: a file's bytes, a link's target, a folder."""
    found: dict[str, object] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = "folder"
            else:
                found[rel] = path.read_bytes()
    return found


def assert_untouched(outside: Path, before: dict[str, object] | None = None) -> None:
    if outside.is_dir():
        assert snapshot(outside) == {"SENTINEL": SENTINEL_TEXT.encode()}, "something was written outside"
    else:
        assert outside.read_text() == SENTINEL_TEXT, "the outside file was written or truncated"


def refused(err: str, name: str, target: Path) -> None:
    """Exit 2's one message: names the link and where it points, says what is allowed."""
    assert err.count("Error:") == 1 or err.count("warning:") == 1, err
    assert f"{name} -> {target}" in err, err
    assert "a run folder holds no symlinks" in err and "replace each link by the file or folder itself" in err
    assert "Traceback" not in err


# -- resume: nettrain-train resume=RUN_DIR -----------------------------------------------------------


def train_exit(monkeypatch, *args: str) -> int:
    """The exit status of `nettrain-train ARGS`, run in this process, that must exit."""
    from nettrain.commands.train import main

    monkeypatch.setattr(sys, "argv", ["nettrain-train", *args])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code


def resume(monkeypatch, value: str | Path, *extra: str) -> int:
    return train_exit(monkeypatch, f"resume={value}", "epochs=2", *extra)


@pytest.mark.parametrize("name", [".nettrain.lock", "train.log"])
def test_resume_refuses_a_symlinked_lock_or_log_and_writes_nothing_through_it(run, tmp_path, monkeypatch, capsys, name):
    outside = sentinel_file(tmp_path)
    link(run / name, outside)
    before = snapshot(run)
    assert resume(monkeypatch, run) == 2
    refused(capsys.readouterr().err, name, outside)
    assert_untouched(outside)  # the lock would have truncated it; the log appended to it
    assert snapshot(run) == before  # no .hydra/resume-*/, no new checkpoint


def test_resume_refuses_a_symlinked_hydra_folder(run, tmp_path, monkeypatch, capsys):
    """Hydra writes the resumed session's record into .hydra/resume-<time>/: not through a link."""
    outside = sentinel_folder(tmp_path)
    shutil.copytree(run / ".hydra", outside, dirs_exist_ok=True)  # a folder the resume would accept
    kept = snapshot(outside)
    link(run / ".hydra", outside)
    before = snapshot(run)
    assert resume(monkeypatch, run) == 2
    refused(capsys.readouterr().err, ".hydra/", outside)
    assert snapshot(outside) == kept and snapshot(run) == before


def test_resume_from_a_symlinked_checkpoint_refuses_and_leaves_the_linked_run_alone(
    run, trained, tmp_path, monkeypatch, capsys
):
    """resume=RUN/checkpoints/last.pt, last.pt a link into another run: that run is not resumed."""
    other = tmp_path / "other-run"
    shutil.copytree(trained[0], other)
    other_before = snapshot(other)
    target = other / "checkpoints" / "last.pt"
    link(run / "checkpoints" / "last.pt", target)
    before = snapshot(run)
    assert resume(monkeypatch, run / "checkpoints" / "last.pt") == 2
    refused(capsys.readouterr().err, "checkpoints/last.pt", target)
    assert snapshot(other) == other_before and snapshot(run) == before


def test_a_fresh_run_into_a_folder_with_a_symlinked_log_is_refused_before_hydra_writes(
    run, tmp_path, monkeypatch, capsys
):

    outside = sentinel_file(tmp_path)
    link(run / "train.log", outside)
    before = snapshot(run)
    assert train_exit(monkeypatch, *QUIET, "data=synthetic", f"hydra.run.dir={run}") == 2
    refused(capsys.readouterr().err, "train.log", outside)
    assert_untouched(outside)
    assert snapshot(run) == before


def test_a_rerun_from_a_run_folder_with_a_link_is_refused(run, tmp_path, monkeypatch, capsys):
    """`--config-dir RUN/.hydra` reads the run folder's saved config: not through a link either."""

    outside = sentinel_file(tmp_path)
    link(run / "train.log", outside)
    rerun = ["--config-dir", str(run / ".hydra"), "--config-name", "config", *QUIET]
    assert train_exit(monkeypatch, *rerun, f"hydra.run.dir={tmp_path / 'rerun'}") == 2
    refused(capsys.readouterr().err, "train.log", outside)
    assert_untouched(outside)
    assert not (tmp_path / "rerun").exists()


def test_a_sweep_launched_again_into_a_folder_with_a_link_is_refused_before_hydra_writes(
    run, tmp_path, monkeypatch, capsys
):
    """Hydra writes each job's .hydra/*.yaml before nettrain runs: a sweep folder that holds a link
    (here a job's saved config, which Hydra would truncate and rewrite) is refused first."""

    sweep = tmp_path / "sweep"
    job = sweep / "0"
    shutil.copytree(run, job, symlinks=True)
    outside = sentinel_file(tmp_path)
    link(job / ".hydra" / "config.yaml", outside)
    before = snapshot(sweep)
    assert train_exit(monkeypatch, "-m", *QUIET, "data=synthetic", "epochs=1", f"hydra.sweep.dir={sweep}") == 2
    refused(capsys.readouterr().err, "0/.hydra/config.yaml", outside)
    assert_untouched(outside)
    assert snapshot(sweep) == before


# -- nettrain-eval, -predict, -export ---------------------------------------------------------------


def no_eval_result(run: Path) -> bool:
    """RUN/eval/ holds the run's own per-class test report alone: nettrain-eval wrote nothing there."""
    return [p.name for p in (run / "eval").iterdir()] == ["test-report.json"]


@pytest.mark.parametrize("given", ["run", "checkpoint"])
def test_eval_refuses_a_symlinked_eval_folder(run, tmp_path, capsys, given):
    from nettrain.commands.evaluate import main

    outside = sentinel_folder(tmp_path)
    link(run / "eval", outside)
    before = snapshot(run)
    target = run if given == "run" else run / "checkpoints" / "best.pt"
    assert main([str(target)]) == 2
    refused(capsys.readouterr().err, "eval/", outside)
    assert_untouched(outside)  # eval would have written best-test.json there
    assert snapshot(run) == before


@pytest.mark.parametrize("given", ["run", "checkpoint"])
def test_eval_refuses_a_symlinked_checkpoint(run, tmp_path, capsys, given):
    """checkpoints/best.pt -> a checkpoint elsewhere: not read, and no eval/ result written."""
    from nettrain.commands.evaluate import main

    elsewhere = tmp_path / "elsewhere" / "best.pt"
    elsewhere.parent.mkdir()
    shutil.copy(run / "checkpoints" / "best.pt", elsewhere)
    kept = elsewhere.read_bytes()
    link(run / "checkpoints" / "best.pt", elsewhere)
    before = snapshot(run)
    target = run if given == "run" else run / "checkpoints" / "best.pt"
    assert main([str(target)]) == 2
    refused(capsys.readouterr().err, "checkpoints/best.pt", elsewhere)
    assert elsewhere.read_bytes() == kept
    assert snapshot(run) == before and no_eval_result(run)


def test_eval_refuses_a_symlinked_checkpoints_folder_given_as_a_path_through_it(run, tmp_path, capsys):
    from nettrain.commands.evaluate import main

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "checkpoints", elsewhere)
    link(run / "checkpoints", elsewhere)
    before = snapshot(run)
    assert main([str(run / "checkpoints" / "best.pt")]) == 2
    refused(capsys.readouterr().err, "checkpoints/", elsewhere)
    assert snapshot(run) == before and not (tmp_path / "eval").exists() and no_eval_result(run)


def test_predict_refuses_a_symlinked_predict_folder(run, rows, tmp_path, capsys):
    from nettrain.commands.predict import main

    outside = sentinel_folder(tmp_path)
    link(run / "predict", outside)
    before = snapshot(run)
    assert main([str(run), str(rows)]) == 2
    refused(capsys.readouterr().err, "predict/", outside)
    assert_untouched(outside)  # the predictions CSV would have gone there
    assert snapshot(run) == before


def test_export_refuses_a_symlinked_export_folder(run, tmp_path, capsys):
    from nettrain.commands.export import main

    outside = sentinel_folder(tmp_path)
    link(run / "export", outside)
    before = snapshot(run)
    assert main([str(run), "--format", "safetensors"]) == 2
    refused(capsys.readouterr().err, "export/", outside)
    assert_untouched(outside)  # best.safetensors and its sidecar would have gone there
    assert snapshot(run) == before


def test_a_checkpoint_outside_a_run_is_read_only_as_the_file_itself(run, tmp_path, capsys):
    """A loose checkpoint (not in RUN/checkpoints/) must not be a link, nor the results folder beside it."""
    from nettrain.commands.evaluate import main as eval_main
    from nettrain.commands.export import main as export_main

    loose = tmp_path / "downloads"
    loose.mkdir()
    link(loose / "model.pt", run / "checkpoints" / "best.pt")
    assert eval_main([str(loose / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert f"{loose / 'model.pt'} is a symlink (-> {run / 'checkpoints' / 'best.pt'})" in err and "Traceback" not in err
    assert not (loose / "eval").exists() and no_eval_result(run)

    (loose / "model.pt").unlink()
    shutil.copy(run / "checkpoints" / "best.pt", loose / "model.pt")
    shutil.copy(run / "checkpoints" / "best.pt.sha256", loose / "model.pt.sha256")
    outside = sentinel_folder(tmp_path)
    link(loose / "export", outside)
    assert export_main([str(loose / "model.pt"), "--format", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert f"{loose / 'export'} is a symlink (-> {outside})" in err and "Traceback" not in err
    assert_untouched(outside)
    # the file itself, and its results in a folder of their own: fine
    assert export_main([str(loose / "model.pt"), "--format", "safetensors", "--out", str(tmp_path / "out")]) == 0
    assert eval_main([str(loose / "model.pt")]) == 0
    assert (loose / "eval" / "model-test.json").is_file()


# -- nettrain-verify-resume, nettrain-summarize -------------------------------------------------------


@pytest.mark.parametrize("where", ["straight", "resumed/checkpoints"])
def test_verify_resume_refuses_an_out_folder_with_a_link(tmp_path, capsys, where):
    from nettrain.commands.verify_resume import main

    work = tmp_path / "verify"
    outside = sentinel_folder(tmp_path)
    link(work / where, outside)
    before = snapshot(work)
    assert main(["data=synthetic", "data.num_samples=200", "epochs=1", "--out", str(work)]) == 2
    refused(capsys.readouterr().err, f"{where}/", outside)
    assert_untouched(outside)
    assert snapshot(work) == before


def test_summarize_reads_nothing_through_a_link_and_says_which_run(run, tmp_path, capsys):
    from nettrain.commands.summarize import main

    sweep = tmp_path / "sweep"
    shutil.copytree(run, sweep / "0")
    shutil.copytree(run, sweep / "1")
    outside = tmp_path / "outside" / "summary.json"
    outside.parent.mkdir()
    outside.write_text('{"status": "completed", "best_val_loss": 0.123456789, "epochs_run": 1}')
    link(sweep / "1" / "summary.json", outside)
    kept = outside.read_text()
    before = snapshot(sweep / "1")
    assert main([str(sweep), "--no-plot"]) == 1  # one run finished, one left unread
    out = capsys.readouterr()
    refused(out.err, "summary.json", outside)
    assert f"{(sweep / '1').resolve()}" in out.err
    written = (sweep / "summary.csv").read_text()
    assert "0.123456789" not in written  # the linked file's numbers were not read
    assert [line.split(",")[0] for line in written.splitlines()[1:]] == ["0", "1"]
    assert f",unreadable,holds symlinks (not read): summary.json -> {outside}," in written
    assert outside.read_text() == kept and snapshot(sweep / "1") == before


# -- what is allowed, and the last line of defence ---------------------------------------------------


def test_a_run_folder_without_links_still_works_for_every_command(run, rows, tmp_path, monkeypatch, capsys):
    """The same copy: eval, predict, export, summarize, then resume; a wandb/ folder with W&B's own
    links (latest-run, debug.log) is W&B's and allowed."""
    from nettrain.commands.evaluate import main as eval_main
    from nettrain.commands.export import main as export_main
    from nettrain.commands.predict import main as predict_main
    from nettrain.commands.summarize import main as summarize_main
    from nettrain.commands.train import main as train_main

    (run / "wandb" / "offline-run-1").mkdir(parents=True)
    (run / "wandb" / "latest-run").symlink_to("offline-run-1")
    (run / "wandb" / "debug.log").symlink_to(tmp_path / "wandb-cache.log")
    assert eval_main([str(run)]) == 0
    assert predict_main([str(run), str(rows)]) == 0
    assert export_main([str(run), "--format", "safetensors"]) == 0
    assert summarize_main([str(run), "--no-plot", "--out", str(tmp_path / "summary")]) == 0
    assert (run / "eval" / "best-test.json").is_file() and list((run / "predict").glob("best-*.csv"))
    assert (run / "export" / "best.safetensors").is_file()
    monkeypatch.setattr(sys, "argv", ["nettrain-train", f"resume={run}", "epochs=2"])
    train_main()
    assert '"epochs_run": 2' in (run / "summary.json").read_text()
    assert "Traceback" not in capsys.readouterr().err


def test_the_lock_is_not_followed_even_when_a_link_appears_after_the_check(tmp_path, monkeypatch):
    from nettrain.run import folder as run_dir

    monkeypatch.setattr(run_dir, "refuse_symlinks", lambda folder: Path(folder))  # as if made after the check
    outside = sentinel_file(tmp_path)
    folder = tmp_path / "run"
    link(folder / ".nettrain.lock", outside)
    with pytest.raises(run_dir.RunFolderError, match=r"\.nettrain\.lock is a symlink"):
        run_dir.RunLock(folder).acquire()
    assert_untouched(outside)  # open("a+") then truncate() would have emptied it


def test_the_log_file_is_reopened_without_following_a_link(tmp_path):
    from nettrain.errors import RunFolderError
    from nettrain.run.folder import no_follow_log_files

    folder = tmp_path / "run"
    folder.mkdir()
    logger = logging.getLogger("nettrain-test-links")
    logger.propagate = False
    handler = logging.FileHandler(folder / "train.log")
    logger.addHandler(handler)
    try:
        no_follow_log_files(folder)
        logger.warning("kept")
        assert (folder / "train.log").read_text() == "kept\n"
        handler.close()  # a later reopen does not follow a link either
        outside = sentinel_file(tmp_path)
        link(folder / "train.log", outside)
        with pytest.raises(OSError):
            logger.warning("not through the link")
        assert_untouched(outside)
        logger.removeHandler(handler)
        # Hydra opened the log through a link: the handler is dropped, nothing written there
        other = logging.FileHandler(folder / "train.log")  # follows the link, as logging does
        logger.addHandler(other)
        with pytest.raises(RunFolderError, match=r"train\.log is a symlink"):
            no_follow_log_files(folder)
        assert other not in logger.handlers
        logger.warning("nowhere")
        assert_untouched(outside)
    finally:
        for each in list(logger.handlers):
            logger.removeHandler(each)
            each.close()


def test_refuse_symlinks_names_every_link_and_special_file_and_allows_the_folder_itself_as_a_link(tmp_path):
    from nettrain.errors import RunFolderLinkError
    from nettrain.run.folder import refuse_symlinks

    real = tmp_path / "real-run"
    (real / "checkpoints").mkdir(parents=True)
    (real / "summary.json").write_text("{}")
    reached = tmp_path / "link-to-run"
    reached.symlink_to(real)
    assert refuse_symlinks(reached) == real  # the path typed may pass through a link
    (real / "plots").symlink_to(tmp_path)
    (real / "checkpoints" / "last.pt").symlink_to(tmp_path / "missing.pt")  # dangling, too
    os.mkfifo(real / "metrics.csv")  # a pipe would hang the reader
    with pytest.raises(RunFolderLinkError) as info:
        refuse_symlinks(reached)
    assert info.value.found == [
        f"checkpoints/last.pt -> {tmp_path / 'missing.pt'}",
        "metrics.csv (a named pipe)",
        f"plots/ -> {tmp_path}",
    ]
    assert f"the run folder {real} holds entries nettrain does not open" in str(info.value)
