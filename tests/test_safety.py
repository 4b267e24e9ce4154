"""Run-folder locks and checks, divergence detection, IDX validation (unit level)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import write_idx
from nettrain.data import idx
from nettrain.engine.divergence import Diverged, LossWatch, finite_state
from nettrain.run import folder as run_dir

# -- the run-folder lock --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_lock_on_one_run_folder_is_refused_naming_the_holder(tmp_path):
    with run_dir.RunLock(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / run_dir.LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid()
        # another process (flock locks are per open file, so a second process is the real test)
        code = textwrap.dedent(f"""
            from nettrain.run.folder import RunLock
            from nettrain.errors import RunFolderError
            try:
                RunLock({str(tmp_path / "run")!r}).acquire()
            except RunFolderError as exc:
                print(exc)
        """)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in out
        assert "being written by another nettrain process" in out
    with run_dir.RunLock(tmp_path / "run"):  # released: free again
        pass


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    first = run_dir.RunLock(tmp_path).acquire()
    try:
        with pytest.raises(run_dir.RunFolderError, match=f"pid {os.getpid()}"):
            run_dir.RunLock(tmp_path).acquire()
    finally:
        first.release()


def test_the_lock_file_fallback_without_os_locks(tmp_path, monkeypatch):
    monkeypatch.setattr(run_dir, "fcntl", None)
    monkeypatch.setattr(run_dir, "msvcrt", None)
    lock = run_dir.RunLock(tmp_path).acquire()
    with pytest.raises(run_dir.RunFolderError, match="being written by another"):
        run_dir.RunLock(tmp_path).acquire()
    lock.release()
    # a lock file left by a dead process on this host is taken over
    (tmp_path / ".nettrain.excl").write_text(
        json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "since": "x"})
    )
    run_dir.RunLock(tmp_path).acquire().release()
    assert not (tmp_path / ".nettrain.excl").exists()


# -- run-folder checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", "  ", "/", "~"])
def test_empty_root_or_home_run_dir_is_refused(value):
    assert "a run needs a folder of its own" in run_dir.unsafe_run_dir(value)


def test_a_folder_with_foreign_files_is_refused_naming_them(tmp_path):
    (tmp_path / "thesis.tex").write_text("x")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    why = run_dir.unsafe_run_dir(tmp_path)
    assert "holds files nettrain did not write (thesis.tex)" in why
    (tmp_path / "thesis.tex").unlink()
    assert run_dir.unsafe_run_dir(tmp_path) is None
    assert run_dir.unsafe_run_dir(tmp_path / "new") is None


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [
        tmp_path / "checkpoints" / ".last.pt.a1b2c3.tmp",
        tmp_path / "checkpoints" / ".best.pt.link.tmp",
        tmp_path / ".summary.json.xyz_9.tmp",
    ]
    kept = [tmp_path / "checkpoints" / "last.pt", tmp_path / "metrics.csv", tmp_path / "notes.tmp"]
    for p in stale + kept:
        p.write_text("x")
    assert sorted(run_dir.remove_stale_temps(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


# -- divergence -----------------------------------------------------------------------------------


def test_loss_watch_names_the_first_nonfinite_step():
    watch = LossWatch(5, "cpu")
    watch.start_epoch()
    for step, loss in enumerate([1.0, 2.0, math.inf, math.nan, 3.0]):
        watch.record(step, torch.tensor(loss))
    assert watch.first_nonfinite() == (2, math.inf)
    with pytest.raises(Diverged, match=r"epoch 4, step 3: the run diverged. Likely remedies: lower lr"):
        watch.check(epoch=4)
    watch.start_epoch(first_step=3)  # a resumed epoch starts mid-way
    watch.record(3, torch.tensor(1.0))
    watch.record(4, torch.tensor(math.nan))
    assert watch.first_nonfinite()[0] == 4
    watch.start_epoch()
    watch.record(0, torch.tensor(0.5))
    watch.check(epoch=1)  # finite: nothing raised


def test_finite_state():
    model = torch.nn.Linear(3, 2)
    assert finite_state(model.state_dict().values())
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    assert not finite_state(model.state_dict().values())
    assert finite_state([torch.tensor([1, 2])])  # integer tensors are always finite


# -- IDX files ------------------------------------------------------------------------------------


def _raw(tmp_path, n_images=12, n_labels=12):
    raw = tmp_path / "raw"
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte", np.zeros((n_images, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n_labels) % 10)
    return raw


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"\x00\x00", "truncated header (2 bytes"),
        (b"\x1f\x8b\x08\x00" + bytes(20), "wrong magic number 0x1f8b0800"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header (6 bytes; its 3 dimensions need 16)"),
        (
            b"\x00\x00\x08\x03" + (12).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(100),
            "but its header [12, 28, 28] needs 9424 (truncated)",
        ),
        (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes(3), "has 1 dimensions, expected 3"),
    ],
)
def test_bad_idx_files_are_named_with_what_is_wrong(tmp_path, content, message):
    raw = _raw(tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(content)
    with pytest.raises(idx.IdxError) as info:
        idx.check_mnist_raw(raw)
    assert str(info.value).startswith(str(raw / "train-images-idx3-ubyte"))
    assert message in str(info.value)


def test_image_and_label_counts_must_match(tmp_path):
    idx.check_mnist_raw(_raw(tmp_path))
    with pytest.raises(idx.IdxError, match="has 12 images but train-labels-idx1-ubyte has 11 labels"):
        idx.check_mnist_raw(_raw(tmp_path / "b", n_labels=11))
    with pytest.raises(idx.IdxError, match="5 images but 4 labels"):
        idx.check_counts(5, 4, "data")


def test_labels_outside_the_classes_are_named_by_index():
    idx.check_labels(torch.tensor([0, 9, 3]), 10, "train labels")
    with pytest.raises(idx.IdxError, match=r"train labels: label 12 at index 2 is outside the 10 classes \(0..9\)"):
        idx.check_labels(torch.tensor([0, 1, 12, -1]), 10, "train labels")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b""), "t10k-images-idx3-ubyte: the file is empty"),
        (
            lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"\x12\x34\x08\x01" + bytes(8)),
            "train-labels-idx1-ubyte: wrong magic number",
        ),
        (lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.full(120, 12)), "label 12 at index 0"),
        (lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.zeros(100)), "has 120 images but"),
    ],
    ids=["empty", "magic", "label", "counts"],
)
def test_the_mnist_loader_names_a_bad_idx_file(tmp_path, damage, message):
    from conftest import write_mnist_raw
    from nettrain.data import torchvision_dataset
    from nettrain.errors import DataError

    root = write_mnist_raw(tmp_path)
    damage(root / "MNIST" / "raw")
    with pytest.raises(DataError) as info:
        torchvision_dataset("MNIST", str(root))
    assert f"data.root={str(root)!r}" in str(info.value) and message in str(info.value)
