"""The real CLI under torchrun: 2 gloo processes on CPU train like one process, in one run dir,
with one checkpoint that moves between world sizes, and resume that is exact.

One 2-process run under the real torchrun (module fixture) serves several tests; the others start
the workers as torchrun would, without its agent and without paying the imports again
(tests/torchrun.py `workers`), so each costs a fraction of a second more than the training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from torchrun import torchrun, workers

from conftest import make_cfg, needs_extra
from nettrain.engine.resume_check import compare_runs

pytestmark = pytest.mark.slow

RUN = [
    "data=synthetic",
    "data.num_samples=400",
    "epochs=2",
    "early_stopping.enabled=false",
    "console.show_config=false",
    "console.show_model=false",
]
TIMING = ("epoch_time_s", "samples_per_s")


def read_metrics(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return [{k: float(v) if k != "epoch" else int(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """`torchrun --nproc_per_node=2 --no-python nettrain-train ...` without hydra.run.dir."""
    cwd = tmp_path_factory.mktemp("straight")
    proc = torchrun("nettrain-train", *RUN, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, cwd


def only_run_dir(cwd: Path) -> Path:
    """The one run dir under outputs/<date>/<time>/, and nothing else written."""
    assert [p.name for p in cwd.iterdir()] == ["outputs"]
    days = list((cwd / "outputs").iterdir())
    assert len(days) == 1, days
    runs = list(days[0].iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_two_processes_leave_one_run_dir_and_print_once(straight):
    proc, cwd = straight
    run_dir = only_run_dir(cwd)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".hydra",
        ".nettrain.lock",  # rank 0's lock on the run folder (one writer per folder)
        "checkpoints",
        "eval",  # test-report.json: the per-class report of the test
        "metrics.csv",
        "summary.json",
        "train.log",
    ]
    assert sorted(p.name for p in (run_dir / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
        "provenance.json",
    ]
    saved = {p.name for p in (run_dir / "checkpoints").iterdir()}
    assert {"best.pt", "last.pt"} <= saved and not any(name.startswith(".") for name in saved), saved
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["status"]) == (2, "gloo", "completed")
    epochs, report = proc.stdout.split("per class, test split")  # the report's rows start with the digit classes
    epoch_lines = [line for line in epochs.splitlines() if line.lstrip().startswith(("1 ", "2 "))]
    assert len(epoch_lines) == 2, proc.stdout  # one line per epoch: only rank 0 prints
    assert report.count("  macro ") == 1, proc.stdout  # and one per-class table
    assert proc.stdout.count("run folder:") == proc.stdout.count("  run folder  ") == 1  # rank 0 alone prints


def test_two_processes_compute_what_one_process_computes(straight, tmp_path):
    from nettrain.commands.train import train

    _, cwd = straight
    run_dir = only_run_dir(cwd)
    one = train(make_cfg(*RUN), output_dir=tmp_path / "one")
    two = json.loads((run_dir / "summary.json").read_text())
    rows_one, rows_two = read_metrics(tmp_path / "one" / "metrics.csv"), read_metrics(run_dir / "metrics.csv")
    assert len(rows_one) == len(rows_two) == 2
    for a, b in zip(rows_one, rows_two):
        grad_means = [key for key in a if key.startswith("grad_mean/")]  # from the synchronised gradients
        assert grad_means and set(grad_means) <= set(b)
        for key in ("train_loss", "val_loss", "val_acc", *grad_means):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (key, a[key], b[key])
    assert two["test_loss"] == pytest.approx(one["test_loss"], rel=1e-4)
    assert (one["world_size"], one["backend"]) == (1, None)


def test_checkpoints_move_between_one_and_two_processes(straight, tmp_path):
    from nettrain.commands.train import train
    from nettrain.engine.evaluation import evaluate_checkpoint

    run_dir = tmp_path / "copy"
    shutil.copytree(only_run_dir(straight[1]), run_dir)
    two = json.loads((run_dir / "summary.json").read_text())
    result = evaluate_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert result["test_acc"] == pytest.approx(two["test_acc"], abs=1e-6)
    assert result["test_loss"] == pytest.approx(two["test_loss"], rel=1e-5)
    resumed = train(make_cfg(*RUN, "epochs=3", f"resume={run_dir}"), output_dir=run_dir)
    assert (resumed["status"], resumed["epochs_run"], resumed["world_size"]) == ("completed", 3, 1)
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.csv")] == [1, 2, 3]
    # and the 1-process checkpoint resumes under 2 processes
    proc = workers("nettrain-train", f"resume={run_dir}", "epochs=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    again = json.loads((run_dir / "summary.json").read_text())
    assert (again["status"], again["epochs_run"], again["world_size"]) == ("completed", 4, 2)
    assert [r["epoch"] for r in read_metrics(run_dir / "metrics.csv")] == [1, 2, 3, 4]


def test_a_run_interrupted_on_one_rank_mid_epoch_resumes_under_torchrun_bit_identically(straight, tmp_path):
    run_dir = tmp_path / "run"
    # SIGTERM reaches rank 1 alone before its step 3; the ranks check every 2 steps, so both stop
    # after step 4 of epoch 1 (5 steps of 64 = 2 x 32 samples), and rank 0 writes one checkpoint
    proc = workers(
        "ddp_signal.py", "1", "3", *RUN, "distributed.stop_check_every=2", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", proc.stderr[-3000:]
    assert "interrupted after 4 steps" in proc.stdout, proc.stdout
    assert {p.name for p in (run_dir / "checkpoints").glob("*.pt")} == {"last.pt"}  # one checkpoint
    proc = workers("nettrain-train", f"resume={run_dir}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert compare_runs(only_run_dir(straight[1]), run_dir) == []
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the resume wrote nowhere else


def test_step_level_keys_under_torchrun_stop_alike_and_resume_to_the_plain_run(straight, tmp_path):
    """max_steps with max_time set (the ranks agree on the clock each step), validation and
    checkpoints inside epochs: both ranks stop after the same step, rank 0 writes the rows and the
    checkpoint, and the run resumed without a budget ends with the plain run's weights, bit for bit."""
    import torch

    from nettrain.run.checkpoint import load_checkpoint
    from nettrain.run.metrics import read_metrics as metrics_rows

    run_dir = tmp_path / "run"
    budget = ["trainer.max_steps=7", "trainer.max_time=01:00:00", "trainer.val_every_n_steps=3"]
    proc = workers(
        "nettrain-train", *RUN, *budget, "checkpoint.every_n_steps=2", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("stopped: max_steps=7 reached") == 1, proc.stdout  # printed once, by rank 0
    saved = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["progress"]["step_in_epoch"], saved["progress"]["global_step"]) == (1, 2, 7)
    assert [(r["epoch"], r["step"]) for r in metrics_rows(run_dir)] == [(1, 3), (1, 5), (2, 6)]
    proc = workers(
        "nettrain-train", f"resume={run_dir}", "trainer.max_steps=null", "trainer.max_time=null", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    plain = load_checkpoint(only_run_dir(straight[1]) / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(plain[k], resumed[k]) for k in plain)


def test_verify_resume_under_torchrun(tmp_path):
    proc = workers("nettrain-verify-resume", *RUN, "plots=false", "--out", str(tmp_path / "verify"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.count("identical: straight vs interrupted after step 5 of 10 and resumed") == 1
    assert json.loads((tmp_path / "verify" / "verify.json").read_text())["identical"] is True


def test_multirun_under_torchrun_is_refused_at_once(tmp_path):
    proc = workers("nettrain-train", "-m", "batch_size=32,64", *RUN, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("Error: --multirun under torchrun") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


@needs_extra("slurm", "hydra_plugins.hydra_submitit_launcher")
def test_a_sweep_job_of_the_submitit_launcher_is_its_own_two_process_group(straight, tmp_path):
    from conftest import cli

    sweep = tmp_path / "sweep"
    proc = cli(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "threads=1",
        f"hydra.sweep.dir={sweep}",
        *RUN,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert (summary["world_size"], summary["backend"], summary["status"]) == (2, "gloo", "completed")
    two = json.loads((only_run_dir(straight[1]) / "summary.json").read_text())
    assert summary["best_val_loss"] == two["best_val_loss"]  # the same 2-process computation
