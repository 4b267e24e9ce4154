"""A non-finite training loss stops the run: status `diverged`, exit 3, no non-finite checkpoint,
strict JSON, and summaries treat it as a failure."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest
import torch

from conftest import QUIET

SMALL = ["data=synthetic", "data.num_samples=300", "model.hidden=[16]", "batch_size=32"]
# epoch 1 trains normally; the step scheduler then multiplies lr by 1e9: epoch 2 diverges
LATE = ["optimizer=sgd", "lr=0.05", "epochs=3", "scheduler=step", "scheduler.step_size=1", "scheduler.gamma=1e9"]


def strict_json(path):
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def finite_checkpoints(folder) -> dict[str, int]:
    epochs = {}
    for path in sorted(folder.glob("*.pt")):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(t).all() for t in state["model"].values()), path
        epochs[path.name] = state["epoch"]
    return epochs


def test_divergence_stops_the_run_and_keeps_the_last_finite_checkpoint(run, capsys):
    summary, out = run(*SMALL, *LATE)
    assert summary["status"] == "diverged"
    end = capsys.readouterr().out.split(" run diverged ")[-1].splitlines()  # the closing table
    assert "  epochs      1 of 3" in end and "  test        not run: the run diverged" in end
    assert f"  run folder  {out.resolve()}" in end and not any("nettrain-eval" in line for line in end)
    assert summary["epochs_run"] == 1
    assert re.search(r"epoch 2, step \d+: the run diverged", summary["error"]) and "lower lr" in summary["error"]
    assert finite_checkpoints(out / "checkpoints") == {"best.pt": 1, "last.pt": 1}
    saved = strict_json(out / "summary.json")
    assert saved["status"] == "diverged"


def test_divergence_in_the_first_epoch_leaves_no_checkpoint_and_null_metrics(run):
    summary, out = run(*SMALL, "optimizer=sgd", "lr=1e8", "epochs=3")
    assert summary["status"] == "diverged" and summary["epochs_run"] == 0
    assert finite_checkpoints(out / "checkpoints") == {}
    saved = strict_json(out / "summary.json")
    assert saved["best_val_loss"] is None


def test_the_cli_exits_3_with_one_message(monkeypatch, capsys, tmp_path):
    from nettrain.commands.train import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["nettrain-train", *QUIET, *SMALL, *LATE, f"hydra.run.dir={tmp_path / 'r'}"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert err.count("Error:") == 1 and re.search(r"epoch 2, step \d+", err) and "Traceback" not in err


def test_summaries_count_a_diverged_run_as_failed(run, tmp_path):
    from nettrain.commands.summarize import summarize

    sweep = tmp_path / "sweep"
    run(*SMALL, "optimizer=sgd", "lr=1e8", "epochs=2", output_dir=sweep / "0")
    result = summarize(sweep, plot=False)
    assert not result.all_finished
    assert [r.status for r in result.not_finished] == ["diverged"]


def test_strict_json_writer_turns_non_finite_numbers_into_null_with_the_reason(tmp_path):
    from nettrain.files import write_json

    write_json(tmp_path / "s.json", {"best_val_loss": math.nan, "x": [1.0, -math.inf], "n": {"y": math.inf}, "ok": 1})
    assert strict_json(tmp_path / "s.json") == {
        "best_val_loss": None,
        "best_val_loss_reason": "nan",
        "x": [1.0, None],
        "n": {"y": None, "y_reason": "inf"},
        "ok": 1,
    }


def test_eval_of_a_diverged_run_says_so_and_exits_3(run, capsys):
    from nettrain.commands.evaluate import main

    summary, out = run(*SMALL, *LATE)
    assert summary["status"] == "diverged"
    capsys.readouterr()
    assert main([str(out)]) == 3  # the last finite checkpoint is evaluated, and the run is a failure
    captured = capsys.readouterr()
    assert "nettrain-eval: test split" in captured.out
    assert re.search(r"Error: the training loss became nan at epoch 2, step \d+: the run diverged", captured.err)
    assert "figures above are of that last finite checkpoint" in captured.err


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], "became inf at epoch 5, step 3"),
        ([1.0, math.nan, 3.0, 4.0], "became nan at epoch 5, step 2"),
    ],
)
def test_every_rank_stops_at_the_first_non_finite_step_of_any_rank(monkeypatch, own, expected):
    # another rank's loss became inf at its step 3 (0-based 2): this rank, whose own losses may all
    # be finite, must raise as well (else it would go on to validate alone), naming the earliest step
    from nettrain.engine import distributed
    from nettrain.engine.divergence import Diverged, LossWatch

    watch = LossWatch(4, "cpu")
    for step, loss in enumerate(own):
        watch.record(step, torch.tensor(loss))
    agreed: list[int] = []

    def agree(flag: int) -> int:  # the other rank's side of both calls: -its step, then its loss's kind
        if not agreed:
            agreed.append(max(flag, -2))
            return agreed[0]
        return max(flag, 2 if agreed[0] == -2 else 0)  # 2: inf, given only when its step is the earliest

    monkeypatch.setattr(distributed, "agree", agree)
    with pytest.raises(Diverged, match=expected):
        watch.check(5)


def test_a_diverged_regression_run_has_regression_figures_not_test_acc(run, tmp_path):
    """The summary of a diverged run names the task's figures: R² and MAE for regression, no accuracy."""
    from made_data import table

    data = table(tmp_path / "values.csv", task="regression")
    csv = ["data=csv", f"data.path={data}", "data.target=value", "data.task=regression", "model.hidden=[16]"]
    summary, out = run(*csv, "batch_size=32", *LATE)
    assert summary["status"] == "diverged" and summary["epochs_run"] == 1
    saved = strict_json(out / "summary.json")
    assert "test_acc" not in saved and "best_val_acc" not in saved
    assert saved["test_r2"] is None and saved["test_mae"] is None
    assert saved["best_val_r2"] == pytest.approx(summary["best_val_r2"]) and math.isfinite(saved["best_val_mae"])
