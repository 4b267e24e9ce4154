"""Damaged run folders: nettrain-summarize marks the row unreadable and writes the rest;
verify-resume calls identical NaNs identical."""

from __future__ import annotations

import json
import math

import pytest
import torch


def _good(folder):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(
        json.dumps(
            {"status": "completed", "best_epoch": 1, "best_val_loss": 0.5, "epochs_run": 1, "monitor": "val_loss"}
        )
    )
    (folder / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,0.6,0.5\n")


DAMAGE = {
    "summary is a list": lambda d: (d / "summary.json").write_text("[1, 2]"),
    "summary is a string": lambda d: (d / "summary.json").write_text('"done"'),
    "summary not UTF-8": lambda d: (d / "summary.json").write_bytes(b"\xff\xfe\x00{"),
    "metrics not UTF-8": lambda d: (d / "metrics.csv").write_bytes(b"epoch,val_loss\n\xff\xfe,\x80\n"),
    "metrics is a folder": lambda d: (d / "metrics.csv").mkdir(),
    "overrides broken": lambda d: (
        (d / ".hydra").mkdir(),
        (d / ".hydra" / "overrides.yaml").write_text("- [unclosed\n"),
    ),
    "overrides a mapping": lambda d: ((d / ".hydra").mkdir(), (d / ".hydra" / "overrides.yaml").write_text("a: 1\n")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_summarize_marks_a_damaged_run_unreadable_and_writes_the_rest(tmp_path, capsys, damage):
    from nettrain.commands.summarize import main

    sweep = tmp_path / "sweep"
    _good(sweep / "0")
    bad = sweep / "1"
    bad.mkdir(parents=True)
    DAMAGE[damage](bad)
    assert main([str(sweep), "--no-plot"]) == 1
    table = (sweep / "summary.csv").read_text()
    rows = table.splitlines()
    assert len(rows) == 3  # header, the good run, the damaged one
    assert any(r.startswith("0,") and ",ok," in r for r in rows)
    damaged = next(r for r in rows if r.startswith("1,"))
    assert ",unreadable," in damaged
    assert "Traceback" not in capsys.readouterr().err


def _state(weights):
    return {
        "format": 1,
        "epoch": 1,
        "progress": {"step_in_epoch": 0},
        "config": {},
        "history": [],
        "model": {"w": weights},
        "optimizer": {"lr": math.nan},
        "scheduler": {},
    }


def test_verify_resume_calls_identical_nans_identical(tmp_path):
    from nettrain.engine.resume_check import compare_runs
    from nettrain.files import write_json
    from nettrain.run.checkpoint import save_checkpoint

    for name in ("a", "b"):
        run = tmp_path / name
        (run / "checkpoints").mkdir(parents=True)
        (run / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,nan,nan\n")
        weights = torch.tensor([1.0, math.nan, 2.0])
        save_checkpoint(run / "checkpoints" / "last.pt", _state(weights))
        write_json(run / "summary.json", {"status": "diverged", "best_val_loss": math.nan, "test_loss": None})
    assert compare_runs(tmp_path / "a", tmp_path / "b") == []
    save_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt", _state(torch.tensor([1.0, 3.0, 2.0])))
    assert any(d.startswith("model.w") for d in compare_runs(tmp_path / "a", tmp_path / "b"))


def test_verify_resume_compares_the_regression_results_too(tmp_path):
    """A resumed regression run whose test R² differs is a difference, as a different test_acc is."""
    from nettrain.engine.resume_check import SUMMARY_KEYS, compare_runs
    from nettrain.run.checkpoint import save_checkpoint

    assert {"test_r2", "test_mae", "best_val_r2", "best_val_mae"} <= set(SUMMARY_KEYS)
    for name, r2 in (("a", 0.91), ("b", 0.92)):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        save_checkpoint(tmp_path / name / "checkpoints" / "last.pt", _state(torch.tensor([1.0, 2.0])))
        (tmp_path / name / "metrics.csv").write_text("epoch,train_loss,val_loss\n1,0.5,0.4\n")
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": "completed", "test_r2": r2}))
    found = compare_runs(tmp_path / "a", tmp_path / "b")
    assert "summary test_r2: 0.91 vs 0.92" in found
