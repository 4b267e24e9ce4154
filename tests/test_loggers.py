"""Experiment loggers: TensorBoard event files and an MLflow store hold what a run logged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import needs_extra
from nettrain.config.schema import logger_problems as problems
from nettrain.insight.loggers import LoggerGroup, build_loggers
from nettrain.run.summary import RunStatus

ROWS = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "val_loss": 1.1 / e,
        "val_acc": 0.5 + e / 10,
        "lr": 1e-3,
        "samples_per_s": 1000.0,
        "grad_mean/fc1.weight": 1e-3 * e,
    }
    for e in (1, 2, 3)
]


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made once: creating them (MLflow's schema migrations)
    takes seconds, copying the file does not."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def mlflow_uri(empty_mlflow_db, tmp_path) -> str:
    """The URI of a store of this test's own (a copy of the empty store) in tmp_path."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_mlflow_db, db)
    return f"sqlite:///{db}"


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_unknown_or_missing_logger_is_a_config_problem(monkeypatch):
    assert problems(["csv"]) == []
    assert problems(["csv", "neptune"]) == [
        "loggers=['csv', 'neptune']: unknown logger 'neptune'; allowed: csv, tensorboard, mlflow, wandb"
    ]
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert problems(["mlflow"]) == [
        "loggers=['mlflow']: mlflow needs the mlflow package; install it with pip install \"nettrain[mlflow]\""
    ]


@needs_extra("tensorboard", "tensorboard")
def test_tensorboard_resume_logs_no_epoch_twice(tmp_path):
    group = build_loggers(["tensorboard"], tensorboard={"histograms": False})
    group.start(tmp_path, {"lr": 1e-3}, {"config_hash": "abc"})
    for r in ROWS[:2]:
        group.log_epoch(r)
    state = group.state_dict()
    group.finish({"test_acc": 0.9}, tmp_path, RunStatus.INTERRUPTED)

    resumed = build_loggers(["tensorboard"], tensorboard={"histograms": False})
    resumed.load_state_dict({**state, "epoch": 1})  # the checkpoint is from before epoch 2 was logged
    resumed.start(tmp_path, {"lr": 1e-3}, {"config_hash": "abc"})
    for r in ROWS:
        resumed.log_epoch(r)
    resumed.finish({}, tmp_path, RunStatus.COMPLETED)
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [s for s, _ in scalars["train_loss"]] == [1, 2, 3]
    assert scalars["samples_per_s"][0] == (1, 1000.0)
    assert [round(v, 6) for _, v in scalars["grad_mean/fc1.weight"]] == [0.001, 0.002, 0.003]


@needs_extra("tensorboard", "tensorboard")
def test_tensorboard_histograms_of_weights_and_gradients_once_per_epoch(tmp_path):
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = torch.nn.Linear(3, 2)
    model(torch.ones(4, 3)).sum().backward()
    group = build_loggers(["tensorboard"])  # histograms on by default
    group.start(tmp_path, {"lr": 1e-3}, {"config_hash": "abc"})
    for r in ROWS[:2]:
        group.log_epoch(r, model)
    group.finish({}, tmp_path, RunStatus.COMPLETED)
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0})
    acc.Reload()
    assert {"weights/weight", "weights/bias", "gradients/weight", "gradients/bias"} <= set(acc.Tags()["histograms"])
    assert [e.step for e in acc.Histograms("weights/weight")] == [1, 2]


def test_only_rank_zero_logs(tmp_path):
    group = build_loggers(["tensorboard"], rank=1)
    assert not group.enabled and group.loggers == []
    group.start(tmp_path, {}, {})
    group.log_epoch(ROWS[0])
    assert not (tmp_path / "tensorboard").exists()


@needs_extra("mlflow", "mlflow")
@pytest.mark.slow
def test_mlflow_store_holds_params_metrics_tags_and_resumes_the_same_run(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri
    group = build_loggers(["mlflow"], mlflow={"uri": uri, "experiment": "test"})
    group.start(tmp_path, {"lr": 1e-3, "model": {"hidden": [256]}}, {"config_hash": "abc", "git_commit": "123"})
    group.log_epoch(ROWS[0])
    state = group.state_dict()
    (tmp_path / "summary.json").write_text("{}")

    resumed = build_loggers(["mlflow"], mlflow={"uri": uri, "experiment": "test"})
    resumed.load_state_dict(state)
    resumed.start(tmp_path, {}, {})
    for r in ROWS:
        resumed.log_epoch(r)
    resumed.finish({"test_acc": 0.9}, tmp_path, RunStatus.COMPLETED)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(state["mlflow.run_id"])
    assert run.data.params == {"lr": "0.001", "model.hidden": "[256]"}
    assert run.data.tags["nettrain.config_hash"] == "abc" and run.data.tags["nettrain.git_commit"] == "123"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_loss")] == [
        (1, 1.0),
        (2, 0.5),
        (3, 1 / 3),
    ]
    assert run.data.metrics["final/test_acc"] == 0.9 and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["summary.json"]


def test_logger_group_without_trackers_is_checkpointable():
    group = LoggerGroup([])
    group.log_epoch(ROWS[0])
    assert group.state_dict() == {"epoch": 1}


@needs_extra("mlflow", "mlflow")
@pytest.mark.slow
def test_mlflow_sweep_jobs_nest_under_one_parent_run(tmp_path, monkeypatch, mlflow_uri):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("NETTRAIN_MLFLOW_PARENT", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    sweep = tmp_path / "multirun"
    runs = []
    for job in ("0", "1"):
        group = build_loggers(["mlflow"], mlflow={"uri": uri}, sweep_dir=str(sweep), job_name=job)
        group.start(sweep / job, {"batch_size": int(job)}, {})
        group.log_epoch(ROWS[0])
        group.finish({}, sweep / job, RunStatus.COMPLETED)
        runs.append(group.state_dict()["mlflow.run_id"])
    client = MlflowClient(tracking_uri=uri)
    parents = {client.get_run(r).data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parents) == 1 and len(set(runs)) == 2
    assert client.get_run(parents.pop()).data.tags["nettrain.sweep_dir"] == str(sweep.resolve())


@needs_extra("wandb", "wandb")
@pytest.mark.slow
def test_wandb_runs_offline_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_SILENT", "true")
    group = build_loggers(["wandb"])
    group.start(tmp_path, {"lr": 1e-3}, {"config_hash": "abc"})
    group.log_epoch(ROWS[0])
    group.finish({"test_acc": 0.9}, tmp_path, RunStatus.COMPLETED)
    assert group.loggers[0].run.settings.mode == "offline"
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


@needs_extra("wandb", "wandb")
@pytest.mark.slow
def test_wandb_resume_continues_the_same_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    group = build_loggers(["wandb"])
    group.start(tmp_path, {"lr": 1e-3}, {"config_hash": "abc"})
    group.log_epoch(ROWS[0])
    state = group.state_dict()
    group.finish({}, tmp_path, RunStatus.INTERRUPTED)
    resumed = build_loggers(["wandb"])
    resumed.load_state_dict(state)  # the run id comes back from the checkpoint
    resumed.start(tmp_path, {"lr": 1e-3}, {"config_hash": "abc"})
    resumed.log_epoch(ROWS[1])
    resumed.finish({"test_acc": 0.9}, tmp_path, RunStatus.COMPLETED)
    run_id = state["wandb.run_id"]
    assert resumed.loggers[0].run_id == run_id and len(run_id) == 8
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in p.name for p in runs)  # both sessions: the same run id
    assert all(list(p.glob("run-*.wandb")) for p in runs)


# -- through a run ----------------------------------------------------------------------------

RUN = ("data=synthetic", "data.num_samples=300", "early_stopping.enabled=false", "grad_monitor.every_n_steps=1")
STEPS_PER_EPOCH = 4  # 240 training samples, batch 64


@needs_extra("tensorboard", "tensorboard")
def test_a_run_logs_every_epoch_to_tensorboard_and_resumes_without_duplicates(tmp_path):
    from conftest import make_cfg
    from nettrain.commands.train import train
    from nettrain.engine.loop import StopRequest

    out = tmp_path / "run"
    overrides = (*RUN, "epochs=3", "loggers=[csv,tensorboard]")
    train(make_cfg(*overrides), output_dir=out, stop=StopRequest(after_steps=STEPS_PER_EPOCH + 2))
    train(make_cfg(*overrides, f"resume={out}"), output_dir=out)
    scalars = read_scalars(out / "tensorboard")
    for tag in (
        "train_loss",
        "val_acc",
        "lr",
        "samples_per_s",
        "grad_mean/fc1.weight",
        "grad_norm/fc2.bias",
        "update_ratio/fc1.weight",
        "dead_units/fc1",
    ):
        assert [step for step, _ in scalars[tag]] == [1, 2, 3], tag
    assert (out / "metrics.csv").is_file()  # csv stays as it was


@needs_extra("mlflow", "mlflow")
@pytest.mark.slow
def test_a_run_logs_params_metrics_tags_and_artifacts_to_mlflow_and_resumes_the_same_run(
    tmp_path, monkeypatch, mlflow_uri
):
    from mlflow.tracking import MlflowClient

    from conftest import make_cfg
    from nettrain.commands.train import train
    from nettrain.engine.loop import StopRequest

    monkeypatch.chdir(tmp_path)
    uri = mlflow_uri
    out = tmp_path / "run"
    overrides = (*RUN, "epochs=2", "loggers=[csv,mlflow]", f"logger.mlflow.uri={uri}", "plots=true")
    train(make_cfg(*overrides), output_dir=out, stop=StopRequest(after_steps=STEPS_PER_EPOCH + 1))
    summary = train(make_cfg(*overrides, f"resume={out}"), output_dir=out)
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("nettrain").experiment_id])
    assert run.data.params["model.hidden"] == "[256]" and run.data.params["lr"] == "0.001"
    assert run.data.tags["nettrain.config_hash"] == summary["config_hash"]
    assert "nettrain.git_commit" in run.data.tags
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert run.data.metrics["final/test_acc"] == summary["test_acc"] and run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "metrics.csv", "plots"} <= artifacts


def test_choosing_a_logger_without_its_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from conftest import make_cfg
    from nettrain.config.schema import validate
    from nettrain.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        validate(make_cfg("loggers=[csv,wandb]", "logger.wandb.mode=cloud"))
    assert err.value.problems == [
        "logger.wandb.mode='cloud': allowed: auto, online, offline",
        "loggers=['csv', 'wandb']: wandb needs the wandb package; install it with pip install \"nettrain[wandb]\"",
    ]


@needs_extra("mlflow", "mlflow")
@pytest.mark.slow
def test_mlflow_without_a_uri_uses_its_default_local_store_in_the_working_directory(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from conftest import make_cfg
    from nettrain.commands.train import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    summary = train(make_cfg(*RUN, "epochs=1", "loggers=[csv,mlflow]"), output_dir=tmp_path / "run")
    assert (tmp_path / "mlflow.db").is_file()  # MLflow 3's default: ./mlflow.db
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("nettrain").experiment_id])
    assert run.data.tags["nettrain.config_hash"] == summary["config_hash"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1]
