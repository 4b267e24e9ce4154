"""Training by steps and time: checkpoint.every_n_steps resumes bit for bit after a hard kill,
trainer.max_steps and trainer.max_time end a run on a checkpoint that a larger budget continues
exactly, trainer.val_every_n_steps adds step rows to metrics.csv and early stopping counts them,
and bad values are refused up front."""

from __future__ import annotations

import pytest
import torch
from runs import assert_same_run, rows, saved

from conftest import cli, make_cfg
from nettrain.commands.train import train
from nettrain.config.schema import duration_seconds, problems
from nettrain.engine.interrupt import StopRequest
from nettrain.engine.state import Position
from nettrain.engine.steps import Steps, StepSettings

# dropout, warmup and a step schedule: every kind of state a resume must carry; 8 steps an epoch
BASE = [
    "data=synthetic",
    "data.num_samples=600",
    "epochs=3",
    "early_stopping.enabled=false",
    "regularization=dropout",
    "scheduler=step",
    "scheduler.step_size=2",
    "scheduler.warmup_ratio=0.1",
]
STEPS_PER_EPOCH = 8  # 480 training samples / 64
BY_STEPS = [*BASE, "checkpoint.every_n_steps=5", "trainer.val_every_n_steps=3"]


class Killed(BaseException):
    """A hard kill: nothing in the run catches it, so nothing is saved on the way out."""


class KillAt(StopRequest):
    """Kills the run when step `at` is done (as `kill -9` would, but at a chosen step)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def tick(self) -> bool:
        if self.steps + 1 == self.at:
            raise Killed
        return super().tick()


def timed(seconds_per_step: float) -> StopRequest:
    """A stop request whose clock advances `seconds_per_step` with each step: max_time without sleeping."""
    stop = StopRequest()
    stop.clock = lambda: seconds_per_step * stop.steps
    return stop


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run by epochs: the reference of the budget tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(make_cfg(*BASE), output_dir=out)
    return out


@pytest.fixture(scope="module")
def by_steps(tmp_path_factory):
    """The uninterrupted run that validates every 3 steps and checkpoints every 5."""
    out = tmp_path_factory.mktemp("by_steps") / "run"
    train(make_cfg(*BY_STEPS), output_dir=out)
    return out


def test_validations_inside_epochs_are_rows_with_a_step_and_do_not_change_training(straight, by_steps):
    steps = [(int(r["epoch"]), int(r["step"])) for r in rows(by_steps)]
    mid = [(1, 3), (1, 6), (2, 9), (2, 12), (2, 15), (3, 18), (3, 21)]  # every 3 steps, never an epoch's last
    ends = [(1, 8), (2, 16), (3, 24)]
    assert steps == sorted(mid + ends, key=lambda es: es[1])
    assert "step" not in rows(straight)[0]  # an epoch-only run keeps its columns
    at_ends = [{k: v for k, v in r.items() if k != "step"} for r in rows(by_steps) if int(r["step"]) % 8 == 0]
    assert at_ends == rows(straight)  # validating inside epochs does not change what trains
    inside = next(r for r in rows(by_steps) if r["step"] == "3")
    assert inside["grad_norm/fc1.weight"] == "" and inside["train_loss"] != "" and inside["lr"] != ""  # its columns
    wa, wb = saved(straight)["model"], saved(by_steps)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_kill_after_a_step_checkpoint_resumes_bit_identically(by_steps, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(make_cfg(*BY_STEPS), output_dir=out, stop=KillAt(STEPS_PER_EPOCH + 3))  # step 11, epoch 2
    last = saved(out)
    assert (last["epoch"], last["progress"]["step_in_epoch"], last["progress"]["global_step"]) == (1, 2, 10)
    assert [int(r["step"]) for r in last["step_validations"]["rows"]] == [3, 6, 9]
    train(make_cfg(*BY_STEPS, f"resume={out}"), output_dir=out)
    assert_same_run(by_steps, out)


def test_step_checkpoints_fall_on_optimizer_steps_under_accumulation(tmp_path):
    args = [*BASE, "batch_size=32", "trainer.accumulate_steps=3", "checkpoint.every_n_steps=2"]
    train(make_cfg(*args), output_dir=tmp_path / "straight")
    # 15 batches an epoch in groups of 3: 5 optimizer steps; in epoch 2, steps 6 and 8 end at batches 3 and 9
    with pytest.raises(Killed):
        train(make_cfg(*args), output_dir=tmp_path / "run", stop=KillAt(15 + 13))  # inside the group of batch 13
    last = saved(tmp_path / "run")
    assert (last["progress"]["step_in_epoch"], last["progress"]["global_step"]) == (9, 8)
    assert last["accumulation"]["grads"] == []  # a group boundary: no partial gradient sums
    train(make_cfg(*args, f"resume={tmp_path / 'run'}"), output_dir=tmp_path / "run")
    assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_max_steps_ends_on_a_checkpoint_that_a_larger_budget_continues_exactly(straight, tmp_path, capsys):
    out = tmp_path / "run"
    first = train(make_cfg(*BASE, "trainer.max_steps=13"), output_dir=out)
    assert first["status"] == "completed" and first["epochs_run"] == 1 and first["test_loss"] is not None
    last = saved(out)
    assert (last["epoch"], last["progress"]["step_in_epoch"], last["progress"]["global_step"]) == (1, 5, 13)
    printed = capsys.readouterr().out
    assert "stopped: max_steps=13 reached" in printed
    assert f"nettrain-train resume={out.resolve()} trainer.max_steps=26   (trains longer)" in printed  # not epochs=
    train(make_cfg(*BASE, "trainer.max_steps=null", f"resume={out}"), output_dir=out)  # may change on resume
    assert_same_run(straight, out)


def test_max_time_stops_within_one_step_of_the_budget_and_resumes(straight, tmp_path, capsys):
    out = tmp_path / "run"
    first = train(make_cfg(*BASE, "trainer.max_time=00:00:05"), output_dir=out, stop=timed(0.5))
    assert first["status"] == "completed"
    assert f"nettrain-train resume={out.resolve()} trainer.max_time=null" in capsys.readouterr().out
    last = saved(out)  # 0.5 s a step: the budget is spent by step 10, and the run stops right after it
    assert (last["progress"]["global_step"], last["progress"]["elapsed"]) == (10, 5.0)
    assert (last["epoch"], last["progress"]["step_in_epoch"]) == (1, 2)
    # the budget counts the earlier session: 3 s more, 6 steps, ends at epoch 2's end
    second = train(make_cfg(*BASE, "trainer.max_time=00:00:08", f"resume={out}"), output_dir=out, stop=timed(0.5))
    assert second["status"] == "completed" and second["epochs_run"] == 2
    assert saved(out)["progress"]["global_step"] == 16
    assert rows(out) == rows(straight)[:2]
    train(make_cfg(*BASE, "trainer.max_time=null", f"resume={out}"), output_dir=out)
    assert_same_run(straight, out)


def test_early_stopping_counts_validations_inside_epochs(tmp_path, capsys):
    args = [*BASE, "early_stopping.enabled=true", "early_stopping.patience=2", "early_stopping.min_delta=100"]
    result = train(make_cfg(*args, "trainer.val_every_n_steps=2"), output_dir=tmp_path / "run")
    # only the first validation improves (on infinity); two more without improvement stop the run at step 6
    assert result["status"] == "early_stopped" and result["epochs_run"] == 0 and result["best_epoch"] == 1
    assert [int(r["step"]) for r in rows(tmp_path / "run")] == [2, 4, 6]
    assert result["best_val_loss"] == float(rows(tmp_path / "run")[0]["val_loss"])
    assert saved(tmp_path / "run")["progress"]["step_in_epoch"] == 6
    assert "has not improved for 2 validations" in capsys.readouterr().out


def test_the_step_count_of_an_older_checkpoint_is_derived():
    history = [{"epoch_time_s": 2.0}, {"epoch_time_s": 3.0}]
    old = Position(epoch=2, step_in_epoch=7, train_time=1.5)  # no global_step, no elapsed
    steps = Steps(StepSettings(accumulate=3), 11, old, history, clock=lambda: 0.0)
    assert steps.done == 2 * 4 + 3  # 11 batches: 4 optimizer steps an epoch; 7 batches: 3 groups begun
    assert steps.elapsed() == 6.5
    newer = Position(epoch=2, step_in_epoch=7, global_step=99, elapsed=42.0)
    assert Steps(StepSettings(accumulate=3), 11, newer, history, clock=lambda: 0.0).done == 99


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:30:00", 1800), ("1:00:00:00", 86400), ("100:00:00", 360000), ("90", 90), ("0.5", 0.5)],
)
def test_max_time_takes_lightnings_forms_and_seconds(text, seconds):
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=0", "trainer.max_steps=0: must be null or an integer >= 1"),
        ("trainer.val_every_n_steps=-2", "trainer.val_every_n_steps=-2: must be null or an integer >= 1"),
        ("checkpoint.every_n_steps=0", "checkpoint.every_n_steps=0: must be null or an integer >= 1"),
        ("trainer.max_time=00:61:00", "trainer.max_time='00:61:00': must be null, HH:MM:SS or DD:HH:MM:SS"),
        ("trainer.max_time=1h", "trainer.max_time='1h': must be null, HH:MM:SS or DD:HH:MM:SS"),
        ("trainer.max_time=0", "trainer.max_time='0': must be null, HH:MM:SS or DD:HH:MM:SS"),
    ],
)
def test_bad_step_settings_name_key_value_and_what_is_allowed(override, message):
    found = problems(make_cfg(override))
    assert len(found) == 1 and found[0].startswith(message), found


def test_a_bad_max_time_exits_2_before_training(tmp_path):
    proc = cli("trainer.max_time=soon", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "trainer.max_time='soon': must be null, HH:MM:SS or DD:HH:MM:SS (e.g. 00:30:00)" in proc.stderr
    assert not list(tmp_path.rglob("*.pt"))
