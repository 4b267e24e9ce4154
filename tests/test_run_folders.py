"""Checkpoints and run folders: damaged checkpoints are skipped by name, best.pt and last.pt are
independent files, a finished run's results are never overwritten, one writer per folder."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from conftest import QUIET, make_cfg

SMALL = ["data=synthetic", "data.num_samples=300", "model.hidden=[16]", "early_stopping.enabled=false"]


@pytest.fixture
def finished(run):
    summary, out = run(*SMALL, "epochs=2")
    assert summary["status"] == "completed"
    return out


def _resume(out, *extra):
    from nettrain.commands.train import train

    return train(make_cfg(*SMALL, f"resume={out}", *extra), output_dir=out)


def test_best_and_last_are_independent_files(finished):
    ckpts = finished / "checkpoints"
    assert (ckpts / "best.pt").stat().st_ino != (ckpts / "last.pt").stat().st_ino
    assert (ckpts / "best.pt").stat().st_nlink == 1
    with open(ckpts / "last.pt", "r+b") as f:  # corrupt one in place
        f.seek(100)
        f.write(b"\x00" * 64)
    from nettrain.run.checkpoint import load_checkpoint

    load_checkpoint(ckpts / "best.pt")  # the other is untouched


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: p.with_name(p.name + ".sha256").write_bytes(b"\xff\xfe\x00\x81junk"), "checksum file"),
        (lambda p: _resave(p, torch.zeros(3)), "format version None"),
        (lambda p: _resave(p, {"model": {}}), "format version None"),
        (lambda p: _resave(p, {**torch.load(p, weights_only=True), "format": 99}), "format version 99"),
    ],
    ids=["junk sidecar", "bare tensor", "missing keys", "unknown format"],
)
def test_a_damaged_checkpoint_is_named_and_skipped(finished, capsys, damage, message):
    from nettrain.commands.evaluate import main

    damage(finished / "checkpoints" / "best.pt")
    summary_before = (finished / "summary.json").read_text()
    assert main([str(finished)]) == 0  # falls back to another valid checkpoint
    out = capsys.readouterr()
    assert "best.pt" in out.out + out.err and message in out.out + out.err
    assert "using last.pt" in out.out + out.err
    assert (finished / "summary.json").read_text() == summary_before


def _resave(path, obj):
    from nettrain.run.checkpoint import save_checkpoint

    save_checkpoint(path, obj)


def test_a_failed_resume_never_overwrites_a_finished_runs_summary(finished):
    from nettrain.errors import ConfigError

    summary_before = (finished / "summary.json").read_text()
    for name in ("last.pt", "previous.pt", "best.pt"):
        sidecar = finished / "checkpoints" / (name + ".sha256")
        if sidecar.exists():
            sidecar.write_bytes(b"\xff\xfe junk")
    with pytest.raises(ConfigError, match="checksum file"):
        _resume(finished, "epochs=4")
    assert (finished / "summary.json").read_text() == summary_before


def test_resume_with_fewer_epochs_than_done_is_refused(finished):
    from nettrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"epochs=1: the run already trained 2 epochs"):
        _resume(finished, "epochs=1")


@pytest.mark.parametrize("scheduler", ["step", "cosine"])
def test_train_longer_works_with_step_and_cosine(run, capsys, scheduler):
    """Train longer (resume=RUN epochs=N, docs/how-to/resume.md): with cosine, T_max follows the new epochs,
    so the third epoch still learns (with the old T_max=2 its learning rate would be eta_min = 0)."""
    from nettrain.run.metrics import read_metrics

    summary, out = run(*SMALL, "epochs=2", f"scheduler={scheduler}")
    more = _resume(out, "epochs=3", f"scheduler={scheduler}")
    assert more["status"] == "completed" and more["epochs_run"] == 3
    lrs = [float(row["lr"]) for row in read_metrics(out / "metrics.csv")]
    assert len(lrs) == 3 and lrs[2] > 0
    if scheduler == "cosine":
        assert "scheduler.T_max follows epochs: 2 -> 3" in capsys.readouterr().out
        assert lrs[0] > lrs[1] > lrs[2]
    else:
        assert lrs == [lrs[0]] * 3  # StepLR(30): no step yet


def test_a_cosine_t_max_set_apart_from_epochs_may_not_change_on_resume(run):
    from nettrain.errors import ConfigError

    summary, out = run(*SMALL, "epochs=2", "scheduler=cosine", "scheduler.T_max=5")
    with pytest.raises(ConfigError, match=r"scheduler.T_max: 5 -> 7"):
        _resume(out, "epochs=3", "scheduler=cosine", "scheduler.T_max=7")


def test_a_setting_added_since_the_run_keeps_its_default_and_does_not_block_resume(run):
    """A run saved before a schema key existed resumes: the missing key counts as its default."""
    from nettrain.run.resume import config_changes, schema_defaults

    defaults = schema_defaults()
    assert defaults["dry_run"] is False and defaults["loggers"] == ["csv"]
    old = {"epochs": 2, "lr": 0.001, "trainer": {"precision": "fp32"}}
    assert config_changes(old, {**old, "dry_run": False, "loggers": ["csv"]}) == []
    assert config_changes(old, {**old, "dry_run": False, "seed": 7}) == ["seed: '<unset>' -> 7"]


def test_two_runs_on_one_folder_one_is_refused_naming_the_holder(tmp_path, monkeypatch, capsys):
    import os

    from nettrain.commands.train import main
    from nettrain.run.folder import RunLock

    out = tmp_path / "r"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", *QUIET, *SMALL, "epochs=1", f"hydra.run.dir={out}"])
    with RunLock(out):  # another process is writing this folder
        with pytest.raises(SystemExit) as info:
            main()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"pid {os.getpid()}" in err and "being written by another nettrain process" in err
    assert not (out / "summary.json").exists() and not (out / "metrics.csv").exists()


def test_leftover_temp_files_are_removed_on_the_next_run(finished, capsys):
    stale = finished / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    _resume(finished, "epochs=3")
    assert not stale.exists()


def test_checkpoints_are_fsynced_file_then_folder(tmp_path, monkeypatch):
    import os

    from nettrain import files
    from nettrain.run.checkpoint import save_checkpoint

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else fd)
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    save_checkpoint(tmp_path / "c" / "last.pt", {"format": 1})
    folder = str(tmp_path / "c")
    assert any(str(s).endswith(".tmp") for s in synced)  # the file, before it is renamed
    assert folder in [str(s) for s in synced]  # then its folder, after the rename


def test_eval_never_touches_summary_and_writes_only_eval(finished):
    from nettrain.commands.evaluate import main

    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    assert main([str(finished)]) == 0
    after = {p: p.stat().st_mtime_ns for p in finished.rglob("*") if p.is_file()}
    changed = [p for p in after if before.get(p) != after[p]]
    assert changed and all(p.parent.name == "eval" for p in changed)
    assert json.loads((finished / "summary.json").read_text())["status"] == "completed"


def test_eval_with_a_model_override_that_does_not_fit_the_checkpoint_says_so(finished, capsys):
    from nettrain.commands.evaluate import main

    assert main([str(finished), "model.hidden=[128]"]) == 2
    err = capsys.readouterr().err
    assert "model built from the config (overrides: model.hidden=[128]) does not fit the weights" in err
    assert "Traceback" not in err


def test_a_fault_while_resuming_a_finished_run_keeps_its_summary(finished, monkeypatch):
    """Not only a bad config: a disk fault during the resumed training leaves the finished run's
    summary.json (and its test result) as it was."""
    import errno

    from nettrain.engine.checkpointer import Checkpointer

    before = (finished / "summary.json").read_text()

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "last.pt"))

    monkeypatch.setattr(Checkpointer, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _resume(finished, "epochs=4")
    assert (finished / "summary.json").read_text() == before


@pytest.mark.parametrize("overrides", [(), ("optimizer=sgd", "scheduler=cosine", "model=cnn", "+note='a: b # c'")])
def test_the_rerunnable_config_is_the_merge_of_the_defaults_the_saved_config_and_nettrains_hydra(tmp_path, overrides):
    """make_rerunnable puts the defaults list and nettrain's hydra: section around Hydra's saved
    YAML as text: the file must be exactly what merging the three would print."""
    from omegaconf import OmegaConf

    from nettrain.run.resume import RERUN_DEFAULTS, _own_hydra_section, make_rerunnable

    saved = OmegaConf.to_yaml(make_cfg(*overrides))
    path = tmp_path / "config.yaml"
    path.write_text(saved)
    make_rerunnable(path)
    merged = OmegaConf.merge({"defaults": RERUN_DEFAULTS}, OmegaConf.create(saved), {"hydra": _own_hydra_section()})
    text = path.read_text()
    assert text.split("\n", 2)[2] == OmegaConf.to_yaml(merged)
    make_rerunnable(path)  # already a primary config: left as it is
    assert path.read_text() == text
