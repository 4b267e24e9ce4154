"""callbacks=[...]: each hook in order with the right counts and a read-only view; a hook that
raises ends the run with exit 1 naming it, and the run resumes exactly; a callback read from a
run folder is built only when the user allows it, as a model of the user's own is; a run without
callbacks calls nothing."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import QUIET, cli, make_cfg
from nettrain.commands.train import train
from nettrain.config import trust
from nettrain.config.schema import problems
from nettrain.errors import ConfigError
from nettrain.run.checkpoint import load_checkpoint

# 240 training samples in batches of 48: 5 steps an epoch
SMALL = [
    "data=synthetic",
    "data.num_samples=300",
    "data.input_shape=[1,4,4]",
    "data.num_classes=3",
    "batch_size=48",
    "epochs=2",
    "early_stopping.enabled=false",
    "model.hidden=[8]",
    "regularization=dropout",
]
EVENTS: list[tuple] = []


class Recorder:
    """Records each hook with the view's epoch and step; on_step_end every `every_n_steps` steps."""

    every_n_steps = 2

    def on_fit_start(self, view):
        EVENTS.append(("fit_start", view.epoch, view.step, len(view.history)))

    def on_epoch_start(self, view):
        EVENTS.append(("epoch_start", view.epoch, view.step))

    def on_step_end(self, view):
        assert view.loss is not None and view.loss > 0 and view.steps_per_epoch == 5
        EVENTS.append(("step_end", view.epoch, view.step))

    def on_validation_end(self, view):
        EVENTS.append(("validation_end", view.epoch, view.step, view.metrics["epoch"], len(view.history)))
        with pytest.raises(dataclasses.FrozenInstanceError):
            view.epoch = 99  # type: ignore[misc]
        with pytest.raises(TypeError):
            view.metrics["val_loss"] = 0.0  # type: ignore[index]

    def on_checkpoint(self, view):
        EVENTS.append(("checkpoint", view.epoch, view.step, view.checkpoint.name))

    def on_fit_end(self, view):
        EVENTS.append(("fit_end", view.epoch, view.step, isinstance(view.model, torch.nn.Module)))


class StepCounter:
    """Only on_step_end, at the run's interval (callbacks_every_n_steps)."""

    def on_step_end(self, view):
        EVENTS.append(("counter", view.step))


class FailAt:
    """Raises in on_step_end at step `step` of the run."""

    every_n_steps = 1

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, view):
        if view.step == self.step:
            raise RuntimeError(f"no good at step {view.step}")


class NoHooks:
    def on_epoch_end(self, view):  # not a hook
        pass


def _callbacks(*nodes: str) -> str:
    return f"callbacks=[{', '.join(nodes)}]"


def test_each_hook_runs_in_order_with_the_right_counts(tmp_path):
    EVENTS.clear()
    cfg = make_cfg(
        *SMALL,
        _callbacks("{_target_: test_callbacks.Recorder}", "{_target_: test_callbacks.StepCounter}"),
        "callbacks_every_n_steps=3",
    )
    train(cfg, output_dir=tmp_path / "run")
    expected: list[tuple] = [("fit_start", 0, 0, 0)]
    for epoch in (1, 2):
        expected.append(("epoch_start", epoch, (epoch - 1) * 5))
        for step in range((epoch - 1) * 5 + 1, epoch * 5 + 1):
            if step % 2 == 0:
                expected.append(("step_end", epoch, step))
            if step % 3 == 0:
                expected.append(("counter", step))
        expected += [("validation_end", epoch, epoch * 5, epoch, epoch), ("checkpoint", epoch, epoch * 5, "last.pt")]
    expected.append(("fit_end", 2, 10, True))
    assert EVENTS == expected
    assert sum(e[0] == "step_end" for e in EVENTS) == 5 and sum(e[0] == "counter" for e in EVENTS) == 3


class Validations:
    """Records each validation: the view's epoch and step, and the row it sees."""

    def on_validation_end(self, view):
        EVENTS.append((view.epoch, view.step, view.metrics.get("step"), view.metrics["val_loss"]))


def test_validations_inside_an_epoch_reach_on_validation_end_with_their_own_row(tmp_path):
    """trainer.val_every_n_steps=2 on 5 steps an epoch: steps 2 and 4, the epoch's end (5), then 6, 8
    and the end (10); each validation's view shows the row of metrics.csv that validation wrote."""
    EVENTS.clear()
    cfg = make_cfg(*SMALL, _callbacks("{_target_: test_callbacks.Validations}"), "trainer.val_every_n_steps=2")
    train(cfg, output_dir=tmp_path / "run")
    assert [e[:3] for e in EVENTS] == [(1, 2, 2), (1, 4, 4), (1, 5, 5), (2, 6, 6), (2, 8, 8), (2, 10, 10)]
    rows = {int(r["step"]): float(r["val_loss"]) for r in _rows(tmp_path / "run")}
    assert [rows[step] for _, _, step, _ in EVENTS] == [val_loss for *_, val_loss in EVENTS]


def test_a_run_without_callbacks_calls_nothing(tmp_path, monkeypatch):
    """The loop gets None and tests it once per point: no Callbacks object, no call per step."""
    from nettrain.engine import callbacks, recipe

    seen = []
    real_fit = recipe.fit

    def spy(state, train_batches, val_batches, settings, out, **kwargs):
        seen.append((out.callbacks, out.checkpointer.after_save))
        return real_fit(state, train_batches, val_batches, settings, out, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a Callbacks object was built for a run without callbacks")

    monkeypatch.setattr(recipe, "fit", spy)
    monkeypatch.setattr(callbacks.Callbacks, "__init__", refuse)
    summary = train(make_cfg(*SMALL, "epochs=1"), output_dir=tmp_path / "run")
    assert summary["status"] == "completed" and seen == [(None, None)]


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in csv.DictReader(f)]


def test_a_raising_callback_ends_the_run_with_exit_1_and_the_run_resumes_exactly(tmp_path):
    node = "{_target_: test_callbacks.FailAt, step: 3}"
    failed = cli(*QUIET, *SMALL, _callbacks(node), "hydra.run.dir=run", cwd=tmp_path)
    assert failed.returncode == 1
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith(
        "Error: callback test_callbacks.FailAt raised in on_step_end (epoch 1, step 3): RuntimeError: no good at step 3"
    )
    assert f"continue it with nettrain-train resume={tmp_path / 'run'}" in lines[0]
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (saved["epoch"], saved["progress"]["step_in_epoch"]) == (0, 3)  # the step the hook ran after

    # the saved config names the callback: a file's, built only when the user allows it
    refused = cli(f"resume={run}", cwd=tmp_path)
    assert refused.returncode == 2
    assert "callbacks[0]._target_='test_callbacks.FailAt'" in refused.stderr
    assert "trust_targets=[test_callbacks.FailAt]" in refused.stderr
    resumed = cli(f"resume={run}", "trust_targets=[test_callbacks.FailAt]", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    straight = tmp_path / "straight"
    train(make_cfg(*SMALL), output_dir=straight)
    assert _rows(run) == _rows(straight) and len(_rows(run)) == 2
    a, b = load_checkpoint(run / "checkpoints" / "last.pt"), load_checkpoint(straight / "checkpoints" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_raising_callback_shows_its_traceback_with_hydra_full_error(tmp_path):
    node = "{_target_: test_callbacks.FailAt, step: 1}"
    failed = cli(*QUIET, *SMALL, _callbacks(node), cwd=tmp_path, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert failed.returncode == 1
    assert "Traceback" in failed.stderr and "RuntimeError: no good at step 1" in failed.stderr


def test_a_callback_given_again_on_the_command_line_is_the_users_own(tmp_path):
    """Resuming with the callbacks set on the command line builds them: the user's own, as a
    `model._target_=` given there is."""
    run = tmp_path / "run"
    shutil.rmtree(run, ignore_errors=True)
    node = "{_target_: test_callbacks.StepCounter}"
    assert cli(*QUIET, *SMALL, "epochs=1", _callbacks(node), f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    EVENTS.clear()
    again = cli(f"resume={run}", "epochs=2", _callbacks(node), "callbacks_every_n_steps=5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert EVENTS == [("counter", 10)]


def test_callbacks_in_a_file_are_checked_like_a_model_of_the_users_own():
    saved = {"model": {"_target_": "mymodels.Net"}, "callbacks": [{"_target_": "mycallbacks.Log", "every": 5}]}
    found = trust.problems(saved, "f")
    assert found[0].startswith("model._target_='mymodels.Net' in f: from a file, model takes only")
    assert found[1].startswith(
        "callbacks[0]._target_='mycallbacks.Log' in f: nettrain ships no callbacks: from a file, callbacks build "
        "only what you allow, and this could run any code"
    )
    assert trust.problems(saved, "f", trusted=["mymodels.*", "mycallbacks.Log"]) == []
    hidden = {"callbacks": [{"_target_": "mycallbacks.Log", "to": "${oc.create:{_target_: os.system}}"}]}
    assert "calls the resolver 'oc.create'" in trust.problems(hidden, "f", trusted=["mycallbacks.Log"])[0]
    never = {"callbacks": [{"_target_": "nettrain.files.write_text"}]}
    assert "never builds this from a file" in trust.problems(never, "f", trusted=["nettrain.files.write_text"])[0]
    assert trust.trusted_from_overrides(["callbacks=[{_target_: mycallbacks.Log, every: 5}]"]) == ["mycallbacks.Log"]


def test_bad_callback_settings_name_the_key_and_what_is_allowed(tmp_path):
    assert problems(make_cfg(*SMALL, "callbacks=[1]", "callbacks_every_n_steps=0")) == [
        "callbacks_every_n_steps=0: must be an integer >= 1 (1 = every step)",
        "callbacks[0]=1: each callback is a mapping with a _target_, "
        "e.g. callbacks='[{_target_: mycallbacks.PrintLoss, every: 10}]'",
    ]
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*SMALL, _callbacks("{_target_: test_callbacks.NoHooks}")), output_dir=tmp_path / "a")
    assert str(err.value).endswith(
        "callbacks[0]: test_callbacks.NoHooks has none of the hooks (it has on_epoch_end); allowed: on_fit_start, "
        "on_epoch_start, on_step_end, on_validation_end, on_checkpoint, on_fit_end"
    )
    with pytest.raises(ConfigError) as err:
        train(make_cfg(*SMALL, _callbacks("{_target_: nocallbacks.Log}")), output_dir=tmp_path / "b")
    assert "callbacks[0]: cannot import module 'nocallbacks' for _target_ 'nocallbacks.Log'" in str(err.value)
