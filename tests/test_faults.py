"""Faults while writing (a full disk, a read-only folder, a file-size limit) end with one message
naming the file, the earlier checkpoints intact, and `status: failed` where it can be written."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUIET

SMALL = ["data=synthetic", "data.num_samples=300", "model.hidden=[16]", "early_stopping.enabled=false"]


def _fail_writes(monkeypatch, code: int, after: int, name: str = "last.pt"):
    """Let `after` writes of a file called `name` succeed, then fail the next with OSError(code),
    as the disk or the file system would (inside the write, so nettrain's own handling runs)."""
    from nettrain import files
    from nettrain.run import checkpoint

    real = files.atomic_write
    count = {"n": 0}

    def atomic_write(path, write):
        if Path(path).name != name:
            return real(path, write)
        count["n"] += 1
        if count["n"] <= after:
            return real(path, write)

        def failing(tmp):
            write(tmp)
            raise OSError(code, os.strerror(code))

        return real(path, failing)

    monkeypatch.setattr(files, "atomic_write", atomic_write)
    monkeypatch.setattr(checkpoint, "atomic_write", atomic_write, raising=False)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_write_fault_ends_with_one_message_and_earlier_checkpoints_intact(monkeypatch, capsys, tmp_path, code):
    from nettrain.commands.train import main

    out = tmp_path / "r"
    _fail_writes(monkeypatch, code, after=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", *QUIET, *SMALL, "epochs=3", f"hydra.run.dir={out}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and "Traceback" not in err and "During handling" not in err
    assert os.strerror(code) in err and "last.pt" in err
    assert "earlier checkpoints are intact" in err
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and os.strerror(code) in summary["error"]


@pytest.mark.slow
def test_a_file_size_limit_ends_with_one_message(tmp_path):
    """ulimit -f: Python ignores SIGXFSZ, so a write past the limit fails with EFBIG."""
    pytest.importorskip("resource")
    import fresh

    limit = "import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))\n"
    args = [*QUIET, *SMALL, "epochs=2", "model.hidden=[64]", "hydra.run.dir=r"]
    proc = fresh.command("nettrain.commands.train:main", "nettrain-train", *args, cwd=tmp_path, setup=limit)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("Error:") == 1 and "Traceback" not in proc.stderr
    assert "File too large" in proc.stderr and ".pt" in proc.stderr
