"""Speed properties that can be tested without timing anything (the timings are in benchmarks/):
the in-memory path gives the DataLoader path's results, the hot loop makes no host sync per
step, `--help` does not import torch, torchvision is imported only for a torchvision dataset,
and the data set is held once."""

from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import pytest
import torch
from probes import loaded_modules

from conftest import QUIET, make_cfg
from nettrain.run.metrics import read_metrics

# -- same results from both data paths --------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        ["data=synthetic", "data.num_samples=300"],
        ["data=mnist", "data.num_workers=2"],  # torchvision IDX files, two DataLoader worker processes
    ],
    ids=["synthetic", "mnist-2-workers"],
)
def test_in_memory_path_gives_the_dataloader_paths_losses(run, tmp_path, mnist_root, data):
    if "data=mnist" in data:
        data = [*data, f"data.root={mnist_root}"]
    common = [*data, "epochs=2", "batch_size=32", "seed=3", "checkpoint.enabled=false"]
    fast, fast_dir = run(*common, "data.in_memory=true", output_dir=tmp_path / "in_memory")
    slow, slow_dir = run(*common, "data.in_memory=false", output_dir=tmp_path / "dataloader")
    fast_rows, slow_rows = read_metrics(fast_dir), read_metrics(slow_dir)
    assert len(fast_rows) == len(slow_rows) == fast["epochs_run"] == 2
    for a, b in zip(fast_rows, slow_rows):
        for key in a:
            if key in ("train_loss", "val_loss", "val_acc") or key.startswith("grad_mean/"):
                assert abs(a[key] - b[key]) <= 1e-6, (key, a["epoch"], a[key], b[key])
    assert abs(fast["test_loss"] - slow["test_loss"]) <= 1e-6
    assert fast["test_acc"] == slow["test_acc"]
    # the losses moved: equal because the paths agree, not because nothing was trained
    assert fast_rows[-1]["train_loss"] < fast_rows[0]["train_loss"]


# -- no host sync in the hot loop -------------------------------------------------------------

SYNC_METHODS = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]


def _is_optimizer_step_counter(frame, tensor: torch.Tensor) -> bool:
    """torch.optim reads its own step counter with `.item()`: Adam keeps `state['step']` on the
    CPU (unless capturable) precisely so that this read is no device sync. Not ours to count."""
    return tensor.device.type == "cpu" and f"torch{os.sep}optim{os.sep}" in frame.f_code.co_filename


@pytest.fixture
def sync_counter(monkeypatch):
    """Counts calls that copy a tensor's value to the host (each one waits for the device),
    by the file and line that made them."""
    counts: collections.Counter = collections.Counter()

    def wrap(name):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            caller = sys._getframe(1)
            if not _is_optimizer_step_counter(caller, self):
                counts[(name, Path(caller.f_code.co_filename).name, caller.f_lineno)] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name))
    return counts


def _synced_calls(counts, tmp_path, num_samples: int) -> tuple[collections.Counter, list[dict]]:
    """Host syncs of a whole default run (monitoring, early stopping, checkpoints, metrics on)
    of 3 epochs on `num_samples` synthetic samples, batch 16, with the gradient means taken on
    every step (the default samples every 50th: every step is the worst case)."""
    from nettrain.commands.train import train

    counts.clear()
    out = tmp_path / f"n{num_samples}"
    summary = train(
        make_cfg(
            "data=synthetic",
            f"data.num_samples={num_samples}",
            "batch_size=16",
            "epochs=3",
            "early_stopping.enabled=true",
            "grad_monitor.enabled=true",
            "grad_monitor.every_n_steps=1",
            "checkpoint.enabled=true",
        ),
        output_dir=out,
    )
    assert summary["epochs_run"] == 3
    return collections.Counter(counts), read_metrics(out)


def new_bests(rows: list[dict]) -> list[bool]:
    best, flags = float("inf"), []
    for row in rows:
        flags.append(row["val_loss"] < best)
        best = min(best, row["val_loss"])
    return flags


def test_the_hot_loop_makes_no_host_sync_per_step(sync_counter, tmp_path):
    # train/val/test: 16/2/2 samples (1 batch each) against 64/8/8 (4 batches each)
    few, few_rows = _synced_calls(sync_counter, tmp_path, 20)
    many, many_rows = _synced_calls(sync_counter, tmp_path, 80)
    # the per-epoch work (a new best or not) is the same in both runs: any difference is per step
    assert new_bests(few_rows) == new_bests(many_rows)
    assert sum(few.values()) > 0, "the counter saw nothing: the epoch's loss is read once at least"
    assert many == few, f"host syncs grow with the number of steps: {few} -> {many}"


def test_the_sync_counter_catches_a_read_per_step(sync_counter, tmp_path, monkeypatch):
    """The control: a loss that calls .item() every step makes the count grow with the steps."""

    class LoggingLoss(torch.nn.CrossEntropyLoss):
        def forward(self, out, y):
            loss = super().forward(out, y)
            loss.item()  # what a per-step `print(loss.item())` does
            return loss

    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", LoggingLoss)
    few, _ = _synced_calls(sync_counter, tmp_path, 20)
    many, _ = _synced_calls(sync_counter, tmp_path, 80)
    assert sum(many.values()) > sum(few.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_cuda_synchronisation_per_step(tmp_path):
    """On CUDA, torch itself reports every synchronising call (torch.cuda.set_sync_debug_mode):
    their number does not grow with the number of steps."""
    import warnings

    from nettrain.commands.train import train

    def syncs(num_samples):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                summary = train(
                    make_cfg(
                        "device=cuda", "data=synthetic", f"data.num_samples={num_samples}", "batch_size=16", "epochs=3"
                    ),
                    output_dir=tmp_path / f"n{num_samples}",
                )
            finally:
                torch.cuda.set_sync_debug_mode("default")
        assert summary["epochs_run"] == 3 and summary["device"].startswith("cuda")
        return sum("synchronizing CUDA operation" in str(w.message) for w in caught)

    few, many = syncs(20), syncs(80)
    assert few > 0  # the epoch's one read is seen
    assert many == few


# -- start-up: what gets imported --------------------------------------------------------------


def test_help_does_not_import_torch(tmp_path):
    [modules], stdout = loaded_modules(["--help"], cwd=tmp_path)
    assert "model: cnn, mlp" in stdout  # it did print the help
    assert modules["code"] in (0, None)
    assert not modules["torch"] and not modules["torchvision"]


@pytest.mark.slow
def test_torchvision_and_torchmetrics_are_imported_only_when_a_run_needs_them(tmp_path, mnist_root):
    """The default run imports neither torchvision (only a torchvision dataset or model needs it)
    nor torchmetrics (only metrics=[...] beyond the loop's own loss and accuracy): each costs
    seconds of start-up."""
    common = [*QUIET, "epochs=1", "device=cpu", "checkpoint.enabled=false"]
    sample, mnist = loaded_modules(
        [*common, f"hydra.run.dir={tmp_path / 'sample'}"],  # the default data, mnist_sample
        # the control: a torchvision dataset, and a metric torchmetrics computes
        [*common, "data=mnist", f"data.root={mnist_root}", "metrics=[f1_macro]", f"hydra.run.dir={tmp_path / 'mnist'}"],
        cwd=tmp_path,
        forked=True,
    )[0]
    assert sample["code"] in (0, None) and (tmp_path / "sample" / "summary.json").exists()  # it trained
    assert sample["torch"] and not sample["torchvision"] and not sample["torchmetrics"]
    # the control: the check sees both imports when the run needs them
    assert mnist["code"] in (0, None) and (tmp_path / "mnist" / "summary.json").exists()
    assert mnist["torchvision"] and mnist["torchmetrics"]


# -- memory: the data set is held once ---------------------------------------------------------


def test_in_memory_batches_hold_the_split_without_a_copy():
    from nettrain.data import Batches, synthetic

    split = synthetic(num_samples=200).train
    batches = Batches(split, 32, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0))
    assert batches.x.data_ptr() == split.x.data_ptr() and batches.y.data_ptr() == split.y.data_ptr()
    seen = torch.cat([y for _, y in batches])  # a pass serves views/gathers of that one tensor
    assert sorted(seen.tolist()) == sorted(split.y.tolist())
    assert batches.x.data_ptr() == split.x.data_ptr()
