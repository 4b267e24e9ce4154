"""What several test files read from a finished run, and how they run a command in-process.

`rows`, `saved`, `summary`: a run folder's metrics.csv (without the timing columns), a checkpoint
and summary.json; `assert_same_run`: two runs with the same rows, weights and results, bit for
bit; `run_cli`: `nettrain-train ARGS` in this process, as the shell would see it; `FixedLogits`: a
"model" whose outputs are given, to check the metrics against another library's."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from torch import nn

from conftest import QUIET
from nettrain.run.checkpoint import load_checkpoint

RESULTS = ("status", "best_epoch", "best_val_loss", "test_loss", "test_acc", "epochs_run")


def rows(run: Path) -> list[dict]:
    """metrics.csv without the timing columns."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in csv.DictReader(f)]


def saved(run: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run / "checkpoints" / name)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_same_run(a: Path, b: Path) -> None:
    """The same metrics.csv rows, bit-identical last.pt weights and the same results in summary.json."""
    assert rows(a) == rows(b)
    wa, wb = saved(a)["model"], saved(b)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = summary(a), summary(b)
    for key in RESULTS:
        assert sa[key] == sb[key], key


def run_cli(monkeypatch, capsys, cwd, *args: str) -> tuple[int, str]:
    """`nettrain-train ARGS` in this process (Hydra parses sys.argv); returns (exit code, stderr)."""
    from nettrain.commands.train import main

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", *QUIET, *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capsys.readouterr().err


class FixedLogits(nn.Module):
    """A 'model' that returns fixed logits, row by row, for inputs that are row indices."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x.long().squeeze(1)]
