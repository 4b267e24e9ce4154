"""What a run prints: the run folder first, one line for the memory estimate, at most one line per
epoch for the diagnosis, and at the end one short table whatever the number of epochs: status,
epochs, best epoch, test figures, wall time, speed, the run folder and the commands to try next.
The details stay in summary.json and train.log."""

from __future__ import annotations

import logging

from made_data import table

TINY = ["data=synthetic", "data.num_samples=200", "model.hidden=[16]", "batch_size=32"]
ROWS = [
    "status",
    "epochs",
    "best epoch",
    "test",
    "wall time",
    "samples/s",
    "diagnosis",
    "run folder",
    "next",
    "details",
]


def end_of(printed: str, status: str = "completed") -> list[str]:
    """The lines from the closing table's rule (`run <status>`) to the end."""
    lines = printed.rstrip("\n").splitlines()
    start = max(i for i, line in enumerate(lines) if f" run {status} " in line and line.startswith("─"))
    return lines[start:]


def rows_of(end: list[str]) -> dict[str, str]:
    """label -> value of the closing table (a continued value's lines joined with newlines)."""
    rows: dict[str, str] = {}
    label = None
    for line in end[1:]:
        name, value = line[2:14].strip(), line[14:]
        if name:
            label, rows[name] = name, value
        else:
            rows[label] += "\n" + value.strip()
    return rows


def test_the_end_of_a_run_is_one_short_table_whatever_the_epoch_count(run, capsys, tmp_path):
    ends = {}
    for epochs in (1, 6):
        summary, out = run(
            *TINY, f"epochs={epochs}", "early_stopping.enabled=false", output_dir=tmp_path / f"e{epochs}"
        )
        printed = capsys.readouterr().out
        folder = str(out.resolve())
        assert printed.splitlines()[0] == f"run folder: {folder}"  # the run folder first ...
        end = end_of(printed)
        ends[epochs] = end
        rows = rows_of(end)
        assert list(rows) == ROWS
        assert rows["status"] == "completed" and rows["epochs"] == f"{epochs} of {epochs}"
        assert rows["best epoch"].startswith(f"{summary['best_epoch']}: val_loss {summary['best_val_loss']:.4g}")
        assert rows["test"] == f"accuracy {summary['test_acc']:.4f}, loss {summary['test_loss']:.4g}"
        assert rows["wall time"] == f"{summary['wall_time_s']:.1f} s"
        assert rows["samples/s"].startswith(f"{summary['samples_per_s']:,.0f} ")
        verdict = summary["diagnosis"]["verdict"]  # 6 epochs of noise: validation worse from the start
        assert rows["diagnosis"] == (
            verdict if verdict == "healthy" else f'{verdict}: findings in summary.json "diagnosis"'
        )
        assert rows["run folder"] == folder  # ... and at the end
        assert rows["next"].splitlines() == [
            f"nettrain-eval {folder}",
            f"nettrain-predict {folder} INPUT...",
            f"nettrain-export {folder} --format onnx",
            f"nettrain-train resume={folder} epochs={2 * epochs}   (trains longer)",
        ]
        assert "{'" not in printed and "class_names" not in printed  # no raw dict, no key dump
        memory = [line for line in printed.splitlines() if "memory estimate" in line]
        assert len(memory) == 1 and memory[0].startswith("memory estimate at batch 32: ") and "activations" in memory[0]
    assert len(ends[1]) == len(ends[6]) == 14  # the rule, 10 rows, 3 more lines of `next`


def test_a_regression_run_ends_with_r2_and_mae(run, capsys, tmp_path):
    path = table(tmp_path / "r.csv", n=200, task="regression")
    csv = ["data=csv", f"data.path={path}", "data.target=value", "data.task=regression", "model.hidden=[8]"]
    summary, _ = run(*csv, "epochs=2")
    rows = rows_of(end_of(capsys.readouterr().out))
    assert (
        rows["test"] == f"R² {summary['test_r2']:.4f}, MAE {summary['test_mae']:.4g}, loss {summary['test_loss']:.4g}"
    )
    assert f"val_r2 {summary['best_val_r2']:.4f}, val_mae {summary['best_val_mae']:.4g}" in rows["best epoch"]


def test_an_interrupted_run_says_how_to_resume_it(run, capsys, tmp_path):
    from conftest import make_cfg
    from nettrain.commands.train import train
    from nettrain.engine.interrupt import StopRequest

    out = tmp_path / "run"
    summary = train(make_cfg(*TINY, "epochs=3"), output_dir=out, stop=StopRequest(after_steps=9))  # in epoch 2
    rows = rows_of(end_of(capsys.readouterr().out, "interrupted"))
    assert summary["status"] == "interrupted" and summary["epochs_run"] == 1
    assert rows["status"] == "interrupted after 9 steps this session; a checkpoint is saved"
    assert rows["epochs"] == "1 of 3" and rows["test"] == "not run: the run did not reach its end"
    assert rows["next"] == f"nettrain-train resume={out.resolve()}   (continues to epoch 3)"


def test_a_diagnosis_that_persists_is_one_console_line_and_every_epoch_in_the_log(run, capsys, caplog):
    caplog.set_level(logging.WARNING, logger="nettrain")
    deep = ["model.hidden=[32,32,32,32,32,32,32]", "model.activation=sigmoid", "grad_monitor.every_n_steps=1"]
    summary, _ = run("data=synthetic", "data.num_samples=200", *deep, "epochs=3", "early_stopping.enabled=false")
    verdicts = [e["verdict"] for e in summary["diagnosis"]["epochs"]]
    assert verdicts == ["vanishing"] * 3
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: epoch")]
    assert len(printed) == 1 and printed[0].startswith("warning: epoch 1: vanishing: fc")
    logged = [r.getMessage() for r in caplog.records if "vanishing:" in r.getMessage()]
    assert [m.split(":")[0] for m in logged] == ["epoch 1", "epoch 2", "epoch 3"]
