"""Reproducible runs: re-run from the saved config, resume after an interruption (at an epoch
boundary, mid-epoch, by a real signal), refuse an incompatible resume, fall back from a corrupted
checkpoint, nettrain-verify-resume and nettrain-eval."""

from __future__ import annotations

import itertools
import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from probes import SignalAt, cli_signalled
from runs import assert_same_run, rows, saved
from torch import nn

from conftest import cli, make_cfg
from nettrain.commands.evaluate import main as eval_main
from nettrain.commands.train import train
from nettrain.commands.verify_resume import main as verify_main
from nettrain.engine.loop import Position, StopRequest
from nettrain.errors import CheckpointError, ConfigError
from nettrain.models import MLP
from nettrain.run.checkpoint import load_checkpoint, newest_valid
from nettrain.run.reproducibility import provenance_differences
from nettrain.run.resume import config_changes

# dropout, warmup and a step schedule: every kind of state a resume must carry
BASE = [
    "data=synthetic",
    "data.num_samples=600",
    "epochs=4",
    "early_stopping.enabled=false",
    "regularization=dropout",
    "scheduler=step",
    "scheduler.step_size=2",
    "scheduler.warmup_ratio=0.1",
]
STEPS_PER_EPOCH = 8  # 480 training samples / 64


def weights(run: Path, name: str = "last.pt") -> dict:
    return saved(run, name)["model"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted reference run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(make_cfg(*BASE), output_dir=out)
    return out


# -- determinism and the data order ------------------------------------------------------------
def test_same_seed_same_run_and_a_different_seed_differs(straight, tmp_path):
    train(make_cfg(*BASE), output_dir=tmp_path / "again")
    assert_same_run(straight, tmp_path / "again")
    train(make_cfg(*BASE, "seed=1"), output_dir=tmp_path / "other")
    assert rows(tmp_path / "other") != rows(straight)


def test_the_data_order_does_not_depend_on_other_randomness(tmp_path):
    """Drawing from torch's global RNG between steps (as a monitor or dropout would) must not
    shift the batches: the order comes from its own generator."""
    from nettrain.data import Batches, synthetic

    data = synthetic(num_samples=200)
    a = Batches(data.train, 32, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0))
    b = Batches(data.train, 32, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0))
    first = [y for _, y in a]
    second = []
    for _, y in b:
        torch.rand(100)
        second.append(y)
    assert all(torch.equal(x, y) for x, y in zip(first, second))


class Observe(StopRequest):
    """Records torch's process-wide settings as the loop sees them, at every step."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def tick(self) -> bool:
        self.seen.add((torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()))
        return super().tick()


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test (the suite's workers run on 1), so that a run's threads=1
    differs from what the process had."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(threads)


def test_process_wide_settings_apply_during_the_run_and_are_restored_after(tmp_path, two_threads):
    """threads and deterministic are the run's own: a sequential sweep (-m threads=1,null or
    deterministic=true,false) must not leak them into the next job."""
    threads_before = torch.get_num_threads()
    assert threads_before == two_threads
    assert not torch.are_deterministic_algorithms_enabled()
    observed = Observe()
    summary = train(
        make_cfg(*BASE, "epochs=1", "deterministic=true", "threads=1"), output_dir=tmp_path / "a", stop=observed
    )
    assert observed.seen == {(True, 1)}
    assert summary["deterministic"] is True and summary["torch_threads"] == 1
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads_before
    observed = Observe()
    summary = train(make_cfg(*BASE, "epochs=1"), output_dir=tmp_path / "b", stop=observed)
    assert observed.seen == {(False, threads_before)}
    assert summary["torch_threads"] == threads_before


@pytest.mark.slow
def test_a_sequential_sweep_does_not_leak_settings_into_the_next_job(tmp_path, two_threads):
    """-m threads=1,null through Hydra's basic launcher in this process: the second job runs on
    torch's own thread count, and a deterministic job leaves nothing on for the next."""
    import sys

    from nettrain.commands.train import main

    threads_before = torch.get_num_threads()
    assert threads_before == two_threads
    argv = sys.argv
    sys.argv = [
        "nettrain-train",
        "-m",
        *BASE,
        "epochs=1",
        "threads=1,null",
        "deterministic=true,false",
        "console.show_config=false",
        "console.show_model=false",
        "console.progress=off",
        "device=cpu",
        "plots=false",
        f"hydra.sweep.dir={tmp_path}",
    ]
    try:
        main()
    finally:
        sys.argv = argv
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert [(s["torch_threads"], s["deterministic"]) for s in summaries] == [
        (1, True),
        (1, False),
        (threads_before, True),
        (threads_before, False),
    ]
    assert torch.get_num_threads() == threads_before and not torch.are_deterministic_algorithms_enabled()


# -- resume --------------------------------------------------------------------------------------
def test_resume_after_a_stop_at_an_epoch_boundary_is_bit_identical(straight, tmp_path):
    out = tmp_path / "run"
    first = train(make_cfg(*BASE), output_dir=out, stop=StopRequest(after_steps=2 * STEPS_PER_EPOCH))
    assert first["status"] == "interrupted" and first["epochs_run"] == 2
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (2, 0)
    train(make_cfg(*BASE, f"resume={out}"), output_dir=out)
    assert_same_run(straight, out)


def test_resume_mid_epoch_is_bit_identical_with_no_duplicate_rows(straight, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(*BASE), output_dir=out, stop=StopRequest(after_steps=STEPS_PER_EPOCH + 3))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (1, 3)
    assert len(state["progress"]["order"]) == 480 and len(state["history"]) == 1
    assert len(rows(out)) == 1
    train(make_cfg(*BASE, f"resume={out}"), output_dir=out)
    assert [r["epoch"] for r in rows(out)] == ["1", "2", "3", "4"]
    assert_same_run(straight, out)


def test_resume_from_a_named_checkpoint_file(straight, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(*BASE), output_dir=out, stop=StopRequest(after_steps=STEPS_PER_EPOCH * 3 + 1))
    train(make_cfg(*BASE, f"resume={out / 'checkpoints' / 'previous.pt'}"), output_dir=out)
    assert_same_run(straight, out)


def test_a_finished_run_says_so_and_does_nothing(straight, capsys):
    before = (straight / "metrics.csv").stat().st_mtime_ns
    summary = train(make_cfg(*BASE, f"resume={straight}"), output_dir=straight)
    assert summary["already_finished"] is True
    assert "already finished (completed after 4 epochs); nothing to do" in capsys.readouterr().out
    assert (straight / "metrics.csv").stat().st_mtime_ns == before


def test_training_longer_on_resume_matches_a_longer_run(tmp_path):
    longer = [*BASE[:2], "epochs=5", *BASE[3:5]]  # no epoch-dependent schedule
    train(make_cfg(*longer), output_dir=tmp_path / "five")
    short = [*BASE[:2], "epochs=3", *BASE[3:5]]
    train(make_cfg(*short), output_dir=tmp_path / "run")
    train(make_cfg(*longer, f"resume={tmp_path / 'run'}"), output_dir=tmp_path / "run")
    assert len(rows(tmp_path / "run")) == 5
    assert rows(tmp_path / "run") == rows(tmp_path / "five")


def test_an_incompatible_resume_is_refused_listing_what_changed(tmp_path):
    out = tmp_path / "run"
    train(make_cfg(*BASE), output_dir=out, stop=StopRequest(after_steps=5))
    before = (out / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as info:
        train(make_cfg(*BASE, "model.hidden=[128]", "lr=0.01", f"resume={out}"), output_dir=out)
    message = str(info.value)
    assert "these settings differ from the run being resumed" in message
    assert "model.hidden: [256] -> [128]" in message and "lr: 0.001 -> 0.01" in message
    assert "optimizer.lr: 0.001 -> 0.01" in message
    assert "Allowed to change on resume: epochs, device, threads, resume, plots, early_stopping.enabled," in message
    assert (
        "checkpoint*, trainer.max_steps, trainer.max_time, console*, trust_targets, loggers, logger*, lr_find*"
        in message
    )  # the schema's order
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_config_changes_ignores_only_the_safe_keys():
    old = {"epochs": 3, "lr": 0.1, "console": {"progress": "auto"}, "model": {"hidden": [256]}}
    new = {"epochs": 9, "lr": 0.1, "console": {"progress": "off"}, "model": {"hidden": [256], "x": 1}}
    assert config_changes(old, new) == ["model.x: '<unset>' -> 1"]


def test_a_corrupted_checkpoint_is_named_and_resume_falls_back(straight, tmp_path, capsys):
    out = tmp_path / "run"
    train(make_cfg(*BASE), output_dir=out, stop=StopRequest(after_steps=STEPS_PER_EPOCH * 2 + 4))
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match=f"checkpoint {last}: checksum mismatch"):
        load_checkpoint(last)
    path, state = newest_valid(out / "checkpoints", report=lambda m: None)
    assert path.name == "previous.pt" and state["epoch"] == 2
    capsys.readouterr()
    train(make_cfg(*BASE, f"resume={out}"), output_dir=out)
    printed = capsys.readouterr().out
    assert f"skipping checkpoint {last}: checksum mismatch" in printed
    assert "resuming" in printed and "from previous.pt" in printed
    assert_same_run(straight, out)


def test_an_unreadable_file_with_a_matching_checksum_is_still_named(tmp_path):
    from nettrain.run.checkpoint import _sha256

    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a checkpoint")
    (tmp_path / "x.pt.sha256").write_text(_sha256(bad))
    with pytest.raises(CheckpointError, match=f"checkpoint {bad}: cannot be read"):
        load_checkpoint(bad)


# -- through the CLI: re-run, provenance, refusals, signals ---------------------------------------
CLI_BASE = [
    "device=cpu",
    "data=synthetic",
    "data.num_samples=600",
    "epochs=3",
    "early_stopping.enabled=false",
    "regularization=dropout",
    "console.show_config=false",
    "console.show_model=false",
]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One finished run through the console script, shared; tests that change it copy it first."""
    run = tmp_path_factory.mktemp("cli") / "first"
    proc = cli(*CLI_BASE, f"hydra.run.dir={run}", cwd=run.parent)
    assert proc.returncode == 0, proc.stderr
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp_path / run.name))


@pytest.mark.slow
def test_rerun_from_the_saved_config_is_bit_identical_and_takes_overrides(cli_run, tmp_path):
    saved = cli_run / ".hydra"
    proc = cli("--config-dir", str(saved), "--config-name", "config", "epochs=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rerun,) = [p for p in (tmp_path / "outputs").glob("*/*")]  # nettrain's own run-dir naming
    assert rows(rerun) == rows(cli_run)[:2]  # the same epochs, bit for bit; the override applied
    assert "differs from the original run" not in proc.stdout
    proc = cli("--config-dir", str(saved), "--config-name", "config", "lr=abc", cwd=tmp_path)
    assert proc.returncode == 2 and "lr=abc: wrong type for lr" in proc.stderr  # types are still checked by the schema


@pytest.mark.slow
def test_provenance_is_recorded_and_differences_are_printed(cli_run, tmp_path):
    first = copy_of(cli_run, tmp_path)
    record = json.loads((first / ".hydra" / "provenance.json").read_text())
    for key in ("nettrain", "python", "torch", "torchvision", "hydra", "device", "data_fingerprint", "command"):
        assert record[key], key
    assert record["torch"] == torch.__version__ and "data=synthetic" in record["command"]
    assert len(record["data_fingerprint"]) == 16
    record["torch"] = "0.0.1"
    (first / ".hydra" / "provenance.json").write_text(json.dumps(record))
    proc = cli(
        "--config-dir",
        str(first / ".hydra"),
        "--config-name",
        "config",
        "epochs=1",
        f"hydra.run.dir={tmp_path / 'second'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0
    assert f"differs from the original run: torch: '0.0.1' -> '{torch.__version__}'" in proc.stdout


def test_provenance_differences_ignore_the_command_line():
    assert provenance_differences({"torch": "1", "command": "a"}, {"torch": "2", "command": "b"}) == [
        "torch: '1' -> '2'"
    ]


@pytest.mark.slow
def test_resume_refusals_through_the_cli(cli_run, tmp_path):
    proc = cli("resume=/nonexistent/run", cwd=tmp_path)
    assert proc.returncode == 2 and "resume='/nonexistent/run': not a nettrain run folder" in proc.stderr
    run = copy_of(cli_run, tmp_path)
    proc = cli(f"resume={run}", "model.activation=gelu", "epochs=4", cwd=tmp_path)
    assert proc.returncode == 2 and "model.activation: 'relu' -> 'gelu'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli(f"resume={run}", cwd=tmp_path)
    assert proc.returncode == 0 and "already finished" in proc.stdout


# -- signals: the real handler, delivered at a chosen step (see tests/probes.py) ------------
def test_sigterm_mid_epoch_checkpoints_and_resume_is_bit_identical(straight, tmp_path, capfd):
    out, before = tmp_path / "run", signal.getsignal(signal.SIGTERM)
    summary = train(make_cfg(*BASE), output_dir=out, stop=SignalAt(STEPS_PER_EPOCH + 3, signal.SIGTERM))
    assert (summary["status"], summary["signal"], summary["epochs_run"]) == ("interrupted", signal.SIGTERM, 1)
    printed = capfd.readouterr()
    assert "SIGTERM: finishing this step, then saving a checkpoint" in printed.err
    assert "still stopping" not in printed.err
    assert f"status      interrupted after {STEPS_PER_EPOCH + 3} steps this session" in printed.out
    assert f"next        nettrain-train resume={out.resolve()}   (continues to epoch 4)" in printed.out
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (1, 3)  # right after the signalled step
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before  # train() put the previous handler back
    train(make_cfg(*BASE, f"resume={out}"), output_dir=out)
    assert_same_run(straight, out)


def test_more_ctrl_c_during_the_save_do_not_corrupt_it(straight, tmp_path, capfd, monkeypatch):
    """Two more SIGINTs while the checkpoint is being written: the handler says to wait, the
    save completes (checksum verified), no KeyboardInterrupt, and the run resumes exactly."""
    stop = SignalAt(2 * STEPS_PER_EPOCH + 5, signal.SIGINT)
    save, late = torch.save, [signal.SIGINT, signal.SIGINT]

    def save_under_fire(*args, **kwargs):
        while stop.signum is not None and late:  # the save that the first SIGINT asked for
            signal.raise_signal(late.pop())
        return save(*args, **kwargs)

    monkeypatch.setattr(torch, "save", save_under_fire)
    out, before = tmp_path / "run", signal.getsignal(signal.SIGINT)
    summary = train(make_cfg(*BASE), output_dir=out, stop=stop)
    assert (summary["status"], summary["signal"]) == ("interrupted", signal.SIGINT) and not late
    err = capfd.readouterr().err
    assert "SIGINT: finishing this step" in err and err.count("still stopping: writing the checkpoint") == 2
    state = load_checkpoint(out / "checkpoints" / "last.pt")  # checksum verified
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (2, 5)
    assert signal.getsignal(signal.SIGINT) == before
    train(make_cfg(*BASE, f"resume={out}"), output_dir=out)
    assert_same_run(straight, out)


# End to end, one test per signal path: exit code, messages, checkpoint, resume through the CLI.
CLI_SIGNAL_RUN = [*BASE, "device=cpu", "console.show_config=false", "console.show_model=false"]


@pytest.mark.slow
def test_sigterm_through_the_cli_exits_143_and_resume_matches_an_uninterrupted_run(straight, tmp_path):
    run = tmp_path / "run"
    proc = cli_signalled(
        *CLI_SIGNAL_RUN, f"hydra.run.dir={run}", cwd=tmp_path, step=STEPS_PER_EPOCH + 3, signals=[signal.SIGTERM]
    )
    assert proc.returncode == 143, proc.stderr
    assert "SIGTERM: finishing this step, then saving a checkpoint" in proc.stderr
    assert f"next        nettrain-train resume={run}   (continues to epoch 4)" in proc.stdout
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (1, 3)  # stopped inside epoch 2
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    resumed = cli(f"resume={run}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert list((run / ".hydra").glob("resume-*/config.yaml"))  # the resumed session's own record
    assert_same_run(straight, run)


@pytest.mark.slow
def test_a_second_and_third_ctrl_c_during_the_save_through_the_cli_exit_130(tmp_path):
    run = tmp_path / "run"
    proc = cli_signalled(
        *CLI_SIGNAL_RUN,
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        step=STEPS_PER_EPOCH + 3,
        signals=[signal.SIGINT],
        during_save=[signal.SIGINT, signal.SIGINT],
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.count("still stopping: writing the checkpoint, please wait") == 2
    assert "Traceback" not in proc.stderr
    state = load_checkpoint(run / "checkpoints" / "last.pt")  # checksum verified
    assert (state["epoch"], state["progress"]["step_in_epoch"]) == (1, 3)
    resumed = cli(f"resume={run}", "epochs=2", "threads=1", cwd=tmp_path)  # safe overrides
    assert resumed.returncode == 0, resumed.stderr
    assert len(rows(run)) == 2


# -- nettrain-verify-resume -----------------------------------------------------------------------
class NoisyMLP(MLP):
    """A model with a random op outside the run's seeding: each instance draws its noise from its
    own generator, seeded differently each time, as a clock-seeded one would be."""

    instances = itertools.count()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.noise = torch.Generator().manual_seed(next(NoisyMLP.instances))

    def forward(self, x):
        out = super().forward(x)
        return out + 0.1 * torch.randn(out.shape, generator=self.noise) if self.training else out


def test_verify_resume_says_identical(tmp_path, capsys):
    assert verify_main([*BASE, "plots=false", "epochs=2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("identical: straight vs interrupted after step 8 of 16 and resumed")
    assert json.loads((tmp_path / "verify.json").read_text())["identical"] is True


def test_verify_resume_reports_a_planted_difference(tmp_path, capsys):
    code = verify_main(
        [*BASE, "plots=false", "epochs=2", f"model._target_={__name__}.NoisyMLP", "--out", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("DIFFERENT: straight vs interrupted after step 8 of 16 and resumed")
    assert "metrics epoch 1 train_loss:" in out and "model.fc1.weight: max |diff|" in out
    report = json.loads((tmp_path / "verify.json").read_text())
    assert not report["identical"] and report["differences"]


def test_verify_resume_rejects_bad_config(tmp_path, capsys):
    assert verify_main(["lr=-1", "--out", str(tmp_path)]) == 2
    assert "lr=-1.0: must be a number > 0" in capsys.readouterr().err


# -- nettrain-eval ---------------------------------------------------------------------------------
def test_eval_reproduces_the_runs_test_and_val_results(straight, capsys):
    summary = json.loads((straight / "summary.json").read_text())
    assert eval_main([str(straight)]) == 0
    result = json.loads((straight / "eval" / "best-test.json").read_text())
    assert (result["test_loss"], result["test_acc"]) == (summary["test_loss"], summary["test_acc"])
    assert eval_main([str(straight / "checkpoints" / "best.pt"), "--split", "val", "batch_size=100"]) == 0
    val = json.loads((straight / "eval" / "best-val.json").read_text())
    assert val["val_loss"] == pytest.approx(summary["best_val_loss"], rel=1e-6)
    assert "test_acc" in capsys.readouterr().out


def test_eval_names_a_bad_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    assert eval_main([str(tmp_path)]) == 2
    assert f"no valid checkpoint in {tmp_path / 'checkpoints'}" in capsys.readouterr().err


# -- edge cases of resume ------------------------------------------------------------------------
def test_resume_mid_epoch_through_the_dataloader_path_is_bit_identical(tmp_path):
    args = [*BASE, "data.in_memory=false"]
    train(make_cfg(*args), output_dir=tmp_path / "straight")
    train(make_cfg(*args), output_dir=tmp_path / "run", stop=StopRequest(after_steps=3))
    train(make_cfg(*args, f"resume={tmp_path / 'run'}"), output_dir=tmp_path / "run")
    assert_same_run(tmp_path / "straight", tmp_path / "run")


def test_a_fresh_run_in_a_used_folder_sets_the_old_results_aside(straight, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    train(make_cfg(*BASE), output_dir=out, stop=StopRequest(after_steps=3))  # a new run, interrupted
    (aside,) = out.glob("previous-*")
    assert rows(aside) == rows(straight) and (aside / "checkpoints" / "best.pt").is_file()
    assert (aside / "eval" / "test-report.json").is_file() and not (out / "eval").exists()  # the old test's report
    train(make_cfg(*BASE, f"resume={out}"), output_dir=out)  # resumes the new run, not the old one
    assert_same_run(straight, out)


def test_resume_without_a_valid_checkpoint_is_a_config_error_that_keeps_the_summary(straight, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    for ckpt in (out / "checkpoints").glob("*.pt"):
        ckpt.write_bytes(b"broken")
    before = (out / "summary.json").read_text()
    with pytest.raises(ConfigError, match="resume=.*no valid checkpoint in .*allowed: a run dir with a valid"):
        train(make_cfg(*BASE, "epochs=6", f"resume={out}"), output_dir=out)
    assert (out / "summary.json").read_text() == before


def test_a_longer_run_on_resume_keeps_the_warmup_it_started_with():
    from nettrain.optim.schedulers import LRSchedule

    def schedule(warmup_steps):
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        return LRSchedule(opt, None, "epoch", warmup_steps)

    first = schedule(20)
    for _ in range(10):
        first.optimizer.step()
        first.after_step()
    resumed = schedule(200)  # 10x the epochs: a longer warmup if recomputed
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())
    for _ in range(10):
        resumed.optimizer.step()
        resumed.after_step()
    assert resumed.lr == pytest.approx(0.1)


def test_a_corrupt_last_checkpoint_never_replaces_a_good_previous(tmp_path):
    from nettrain.engine.checkpointer import Checkpointer
    from nettrain.run.checkpoint import save_checkpoint

    folder = tmp_path / "checkpoints"
    save_checkpoint(
        folder / "previous.pt",
        {
            "format": 1,
            "epoch": 1,
            "progress": {"step_in_epoch": 0},
            "model": {},
            "optimizer": {},
            "config": {},
            "history": [],
        },
    )
    (folder / "last.pt").write_bytes(b"corrupt")
    (folder / "last.pt.sha256").write_text("0" * 64)

    class Part:
        def state_dict(self):
            return {}

    from nettrain.engine.state import TrainState

    state = TrainState(
        model=Part(),
        loss_fn=Part(),
        optimizer=Part(),
        schedule=Part(),
        early_stopping=Part(),
        grad_monitor=Part(),
        precision=Part(),
        data_generator=torch.Generator(),
    )
    checkpointer = Checkpointer(folder, config={})
    checkpointer.save(state, Position(epoch=2))
    assert load_checkpoint(folder / "previous.pt")["epoch"] == 1
    assert load_checkpoint(folder / "last.pt")["epoch"] == 2
    checkpointer.save(state, Position(epoch=3), is_best=True)
    assert [load_checkpoint(folder / n)["epoch"] for n in ("previous.pt", "last.pt", "best.pt")] == [2, 3, 3]


def test_verify_resume_fails_when_it_could_not_interrupt(tmp_path, capsys):
    assert verify_main([*BASE, "plots=false", "epochs=1", "--stop-after", "100", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().out.startswith("NOT VERIFIED: the run ended after 8 steps")


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_verify_resume_refuses_a_stop_after_that_is_not_a_positive_count(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as info:
        verify_main([*BASE, "plots=false", "--stop-after", value, "--out", str(tmp_path / "v")])
    assert info.value.code == 2  # argparse's exit for a bad argument
    err = capsys.readouterr().err
    assert f"--stop-after: {value}" in err or f"--stop-after: '{value}'" in err
    assert "allowed: an integer >= 1" in err and "Traceback" not in err
    assert not (tmp_path / "v").exists()  # refused before anything ran


def test_eval_of_a_checkpoint_outside_a_run_writes_beside_it(straight, tmp_path):
    import shutil

    loose = tmp_path / "loose"
    loose.mkdir()
    for name in ("best.pt", "best.pt.sha256"):
        shutil.copy(straight / "checkpoints" / name, loose / name)
    assert eval_main([str(loose / "best.pt")]) == 0
    assert (loose / "eval" / "best-test.json").is_file() and not (tmp_path / "eval").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_provenance_records_the_working_directorys_commit_and_reads_nettrains_own_checkout_once(monkeypatch, tmp_path):
    from nettrain.run import reproducibility

    for args in (
        ["init", "-q"],
        [
            "-c",
            "user.email=a@b.c",
            "-c",
            "user.name=a",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "c",
        ],
    ):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    read, git = [], reproducibility._git
    monkeypatch.setattr(reproducibility, "_git", lambda cwd: read.append(cwd) or git(cwd))
    reproducibility._source_git.cache_clear()
    monkeypatch.chdir(tmp_path)
    first = reproducibility.provenance(torch.device("cpu"), "data")
    if first["nettrain_git"]:  # a checkout (an installed wheel has none): each record gets its own copy
        first["nettrain_git"].clear()
    second = reproducibility.provenance(torch.device("cpu"), "data")
    assert second["git"] == {"root": str(tmp_path.resolve()), "commit": head, "dirty": False}
    assert read.count(Path.cwd()) == 2 and len(read) == 3  # the working directory each time, nettrain's once
    assert second["nettrain_git"] == git(Path(reproducibility.nettrain.__file__).resolve().parent)
