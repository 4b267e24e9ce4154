"""Resumable sweeps: a multirun launched again into the same sweep dir skips finished jobs
(matched by config, not by job number), resumes interrupted ones and re-runs failed ones."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
from probes import cli_signalled, loaded_modules

from conftest import cli, make_cfg, write_mnist_raw
from nettrain.commands.train import train
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.sweep import claim, config_hash

pytestmark = pytest.mark.slow

QUIET = ["console.show_config=false", "console.show_model=false", "device=cpu", "plots=false"]


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in csv.DictReader(f)]


def job_summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


def test_config_hash_ignores_incidental_settings():
    base = {"lr": 0.1, "console": {"progress": "off"}, "threads": None, "model": {"hidden": [256]}}
    assert config_hash(base) == config_hash({**base, "console": {"progress": "on"}, "threads": 2})
    assert config_hash(base) != config_hash({**base, "lr": 0.2})


def test_claim_moves_results_to_the_job_of_their_config(tmp_path):
    sweep = tmp_path / "sweep"
    for name, key in (("0", "aaa"), ("1", "bbb")):
        (sweep / name / "checkpoints").mkdir(parents=True)
        (sweep / name / "summary.json").write_text(
            json.dumps({"status": "completed", "config_hash": key, "launch": "old"})
        )
        (sweep / name / "metrics.csv").write_text(key)
    (sweep / "2").mkdir()
    assert claim(sweep / "0", "ccc", "new") is None  # a new config in job 0: job 0's old results step aside
    assert (sweep / ".0.displaced-aaa" / "metrics.csv").read_text() == "aaa"
    assert not (sweep / "0" / "metrics.csv").exists()
    assert claim(sweep / "2", "aaa", "new")["config_hash"] == "aaa"  # ... until their config's job claims them
    assert (sweep / "2" / "metrics.csv").read_text() == "aaa" and not (sweep / ".0.displaced-aaa").exists()
    assert claim(sweep / "1", "bbb", "new")["status"] == "completed"  # in place
    # from another job folder of an earlier launch: it keeps a note of where they went
    (sweep / "3").mkdir()
    assert claim(sweep / "3", "bbb", "new")["config_hash"] == "bbb"
    assert json.loads((sweep / "1" / "claimed.json").read_text()) == {"moved_to": "3"}
    # never from the current launch: a repeated config trains again
    (sweep / "4").mkdir()
    (sweep / "3" / "summary.json").write_text(
        json.dumps({"status": "completed", "config_hash": "bbb", "launch": "new"})
    )
    assert claim(sweep / "4", "bbb", "new") is None


def test_a_shorter_relaunch_leaves_a_clean_summary(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "data=synthetic", "data.num_samples=300", "epochs=1", *QUIET, f"hydra.sweep.dir={sweep}"]
    assert cli(*args, "batch_size=32,64", cwd=tmp_path).returncode == 0
    proc = cli(*args, "batch_size=64", cwd=tmp_path)  # 64 was job 1, is now job 0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "skipped" in proc.stdout
    with open(sweep / "summary.csv") as f:
        summary_rows = list(csv.DictReader(f))
    assert [(r["job"], r["status"]) for r in summary_rows] == [("0", "ok")]


def test_relaunching_a_finished_sweep_skips_every_job_and_extends_a_changed_one(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "data=synthetic", "data.num_samples=300", "epochs=2", *QUIET, f"hydra.sweep.dir={sweep}"]
    assert cli(*args, "batch_size=32,64", cwd=tmp_path).returncode == 0
    before = {name: (sweep / name / "metrics.csv").stat().st_mtime_ns for name in ("0", "1")}
    [again], stdout = loaded_modules([*args, "batch_size=32,64"], cwd=tmp_path)
    assert again["code"] in (0, None)
    assert stdout.count("this config already finished (completed); skipped") == 2
    assert {n: (sweep / n / "metrics.csv").stat().st_mtime_ns for n in ("0", "1")} == before
    assert not again["torch"]  # start-up only: nothing trained, nothing loaded, torch never imported
    # a new value first: the finished configs are found in their old job folders and move along
    extended = cli(*args, "batch_size=16,32,64", cwd=tmp_path)
    assert extended.returncode == 0 and extended.stdout.count("skipped") == 2
    summaries = job_summaries(sweep)
    overrides = {n: (sweep / n / ".hydra" / "overrides.yaml").read_text() for n in ("0", "1", "2")}
    for name, size in (("0", "16"), ("1", "32"), ("2", "64")):
        assert f"batch_size={size}" in overrides[name]
        assert summaries[name]["status"] == "completed"
    assert summaries["1"]["config_hash"] == config_hash(
        _plain(make_cfg("data=synthetic", "data.num_samples=300", "epochs=2", "batch_size=32", *QUIET))
    )
    with open(sweep / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 3


def _plain(cfg):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def test_a_failed_job_is_run_again_on_relaunch(tmp_path):
    sweep, root = tmp_path / "sweep", tmp_path / "datasets"
    args = [
        "-m",
        "data=mnist",
        f"data.root={root}",
        "data.val_fraction=0.1,0.2",
        "epochs=1",
        *QUIET,
        f"hydra.sweep.dir={sweep}",
    ]
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 1  # no MNIST files yet: both jobs fail, the sweep goes on to the end
    assert [s["status"] for _, s in sorted(job_summaries(sweep).items())] == ["failed", "failed"]
    assert "data.root=" in job_summaries(sweep)["0"]["error"]
    write_mnist_raw(root, "MNIST")
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [s["status"] for _, s in sorted(job_summaries(sweep).items())] == ["completed", "completed"]
    assert "skipped" not in proc.stdout


SWEPT = [
    "data=synthetic",
    "batch_size=32",
    "epochs=2",
    "early_stopping.enabled=false",
    "regularization=dropout",
    *QUIET,
]


def test_an_interrupted_sweep_resumes_its_interrupted_job_exactly(tmp_path):
    """SIGTERM lands in job 1's second epoch (job 0: 240 training samples, 8 steps an epoch, so
    16 steps; job 1: 480 samples, 15 steps an epoch); relaunching skips job 0 and resumes job 1."""
    sweep = tmp_path / "sweep"
    args = ["-m", "data.num_samples=300,600", *SWEPT, f"hydra.sweep.dir={sweep}"]
    proc = cli_signalled(*args, cwd=tmp_path, step=2 * 8 + 15 + 4, signals=[signal.SIGTERM])
    assert proc.returncode == 143, proc.stdout + proc.stderr
    assert [s["status"] for _, s in sorted(job_summaries(sweep).items())] == ["completed", "interrupted"]
    state = load_checkpoint(sweep / "1" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (1, 4)
    relaunch = cli(*args, cwd=tmp_path)
    assert relaunch.returncode == 0, relaunch.stdout + relaunch.stderr
    assert "this config already finished" in relaunch.stdout and "resuming" in relaunch.stdout
    assert {s["status"] for s in job_summaries(sweep).values()} == {"completed"}
    straight = tmp_path / "straight"
    train(make_cfg(*SWEPT, "data.num_samples=600"), output_dir=straight)
    assert rows(sweep / "1") == rows(straight)
    with open(sweep / "summary.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok", "ok"]
