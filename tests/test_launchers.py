"""Sweeps end to end through the real console script: job dirs, the sweep summary written when a
multirun ends, a failing job, and the launcher/sweeper plugins (joblib, submitit, optuna).

The plugin tests skip when the plugin is not installed (the core install); CI installs the
extras (pip install -e ".[dev,sweep,slurm]"), so they run there."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import cli, needs_extra

pytestmark = pytest.mark.slow

FAST = [
    "data=synthetic",
    "data.num_samples=300",
    "epochs=2",
    "console.show_config=false",
    "console.show_model=false",
    "checkpoint.enabled=false",
    "grad_monitor.enabled=false",
]
SUMMARY_FILES = {"summary.csv", "summary.md", "summary.png"}


def sweep_dir(tmp_path: Path) -> Path:
    return tmp_path / "sweep"


def multirun(tmp_path: Path, *args: str, **kwargs):
    return cli("-m", *args, *FAST, f"hydra.sweep.dir={sweep_dir(tmp_path)}", cwd=tmp_path, **kwargs)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def summary_rows(sweep: Path) -> list[dict]:
    assert SUMMARY_FILES <= {p.name for p in sweep.iterdir()}, list(sweep.iterdir())
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(sweep.glob(".summary*"))  # atomic writes leave no temporaries
    with open(sweep / "summary.csv") as f:
        return list(csv.DictReader(f))


def check_job(job: Path, expected_overrides: list[str]) -> dict:
    """A complete run dir whose .hydra/overrides.yaml names its sweep values."""
    overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
    assert all(o in overrides for o in expected_overrides), overrides
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] in ("completed", "early_stopped") and summary["epochs_run"] == 2
    assert (job / "metrics.csv").read_text().count("\n") == 3
    assert (job / "train.log").exists()
    return summary


def test_a_two_job_sweep_leaves_two_run_dirs_and_the_summary(tmp_path):
    proc = multirun(tmp_path, "batch_size=32,64")
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert [j.name for j in jobs] == ["0", "1"]
    summaries = [check_job(j, [f"batch_size={bs}"]) for j, bs in zip(jobs, (32, 64))]
    rows = summary_rows(sweep)
    assert [(r["job"], r["batch_size"], r["status"]) for r in rows] == [("0", "32", "ok"), ("1", "64", "ok")]
    assert [float(r["best_val_loss"]) for r in rows] == [s["best_val_loss"] for s in summaries]
    best = min(range(2), key=lambda i: summaries[i]["best_val_loss"])
    assert [r["best"] for r in rows] == ["1" if i == best else "0" for i in range(2)]
    assert "sweep summary" in proc.stdout and f"best: {best} (batch_size=" in proc.stdout
    md = (sweep / "summary.md").read_text()
    assert "| batch_size |" in md and "2 runs, 2 ok" in md


def test_a_2x2_grid_sweeps_both_keys(tmp_path):
    proc = multirun(tmp_path, "lr=0.01,0.001", "optimizer=adam,sgd")
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    grid = [("0.01", "adam"), ("0.01", "sgd"), ("0.001", "adam"), ("0.001", "sgd")]
    assert len(jobs) == 4
    for job, (lr, opt) in zip(jobs, grid):
        check_job(job, [f"lr={lr}", f"optimizer={opt}"])
    rows = summary_rows(sweep)
    assert [(r["lr"], r["optimizer"]) for r in rows] == grid
    assert sum(r["best"] == "1" for r in rows) == 1
    assert "lr vs" not in proc.stdout and "| lr | optimizer |" in (sweep / "summary.md").read_text()


def test_a_failing_job_is_recorded_and_the_others_finish(tmp_path):
    # batch_size=1 with BatchNorm fails on the first training step (a runtime error, not a config error)
    proc = multirun(tmp_path, "batch_size=1,32", "model.norm=batchnorm")
    assert proc.returncode != 0
    sweep = sweep_dir(tmp_path)
    failed, ok = job_dirs(sweep)
    failed_summary = json.loads((failed / "summary.json").read_text())
    assert failed_summary["status"] == "failed"
    assert "Expected more than 1 value per channel" in failed_summary["error"]
    assert "\n" not in failed_summary["error"]
    check_job(ok, ["batch_size=32"])
    rows = summary_rows(sweep)
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert "Expected more than 1 value per channel" in rows[0]["error"]
    assert [r["best"] for r in rows] == ["0", "1"]
    assert "failed: ValueError: Expected more than 1 value per channel" in proc.stdout + proc.stderr


@pytest.fixture
def loky_stopped_after():
    """joblib's loky workers outlive a sweep (kept for reuse); stop them when the test ends, not
    at the pytest worker's exit, where the interpreter waits for each to wind down (~1 s)."""
    yield
    from joblib.externals.loky import reusable_executor

    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True, kill_workers=True)


@needs_extra("sweep", "hydra_plugins.hydra_joblib_launcher")
def test_joblib_runs_jobs_in_parallel_and_splits_the_cores(tmp_path, loky_stopped_after):
    from joblib import cpu_count

    proc = multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "batch_size=32,64")
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_dir(tmp_path)
    summaries = [check_job(j, [f"batch_size={bs}"]) for j, bs in zip(job_dirs(sweep), (32, 64))]
    assert len(summaries) == 2
    # loky gives each worker OMP_NUM_THREADS = cores // n_jobs, and torch follows it
    expected = int(os.environ.get("OMP_NUM_THREADS") or max(1, cpu_count() // 2))
    assert [s["torch_threads"] for s in summaries] == [expected, expected]
    assert len(summary_rows(sweep)) == 2


@needs_extra("sweep", "hydra_plugins.hydra_optuna_sweeper")
def test_a_three_trial_optuna_study_minimises_best_val_loss(tmp_path):
    proc = multirun(tmp_path, "hydra/sweeper=optuna_search", "hydra.sweeper.n_trials=3")
    assert proc.returncode == 0, proc.stderr
    sweep = sweep_dir(tmp_path)
    jobs = job_dirs(sweep)
    assert len(jobs) == 3
    keys = ["lr", "batch_size", "regularization.weight_decay", "regularization.dropout"]
    for job in jobs:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert set(keys) <= set(overrides)
        assert 1e-4 <= float(overrides["lr"]) <= 1e-1 and int(overrides["batch_size"]) in (32, 64, 128, 256)
        assert 0 <= float(overrides["regularization.dropout"]) <= 0.5
        check_job(job, [])
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    rows = summary_rows(sweep)
    assert set(keys) <= set(rows[0])
    best = next(r for r in rows if r["best"] == "1")
    assert float(best["best_val_loss"]) == pytest.approx(result["best_value"])  # the objective is best_val_loss


@needs_extra("slurm", "hydra_plugins.hydra_submitit_launcher")
def test_the_slurm_preset_composes_to_an_sbatch_script(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf
    from submitit.slurm.slurm import SlurmExecutor

    proc = cli(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.gpus_per_node=2",
        "hydra.launcher.timeout_min=30",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "--cfg",
        "hydra",
        "--resolve",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["gpus_per_node"], launcher["timeout_min"]) == ("gpu", 2, 30)
    # submitit accepts every key and turns them into sbatch lines, as the plugin's launch() does
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun here
    params = {k: v for k, v in launcher.items() if k != "_target_"}
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"), cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=30",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --job-name=train",
        "export OMP_NUM_THREADS=4",
    ):
        assert line in script, script
    assert f"{tmp_path / 'sweep'}/.submitit/" in script
