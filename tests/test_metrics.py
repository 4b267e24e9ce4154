"""metrics.csv round trip, the status names, the finite-number check and the run timestamp."""

from __future__ import annotations

import json
import math
import re

from nettrain.config.schema import is_finite_number
from nettrain.files import timestamp
from nettrain.run.metrics import MetricsWriter, read_metrics
from nettrain.run.summary import FINISHED, RunStatus


def test_read_metrics_gives_back_exactly_the_rows_written(tmp_path):
    rows = [
        {"epoch": 1, "train_loss": 0.1 + 0.2, "val_loss": 2.302585092994046, "lr": 1e-3, "note": "warmup"},
        {"epoch": 2, "train_loss": math.nan, "val_loss": math.inf, "lr": None, "note": "x,y"},
    ]
    MetricsWriter(tmp_path / "metrics.csv").write(rows)
    back = read_metrics(tmp_path)  # a run dir or the file itself
    assert repr(back) == repr(read_metrics(tmp_path / "metrics.csv"))  # repr: nan != nan
    assert back[0] == rows[0]  # full precision: 0.30000000000000004 stays itself
    assert type(back[0]["epoch"]) is int and type(back[0]["lr"]) is float
    assert math.isnan(back[1]["train_loss"]) and back[1]["val_loss"] == math.inf
    assert back[1]["lr"] is None and back[1]["note"] == "x,y"


def test_status_names_are_what_summary_json_records():
    """The strings old runs hold: a renamed status would orphan them."""
    assert [s.value for s in RunStatus] == [
        "completed",
        "early_stopped",
        "interrupted",
        "diverged",
        "failed",
        "dry_run",
        "lr_find",
        "batch_size",
        "profile",
    ]
    assert FINISHED == ("completed", "early_stopped") and RunStatus("early_stopped").finished
    assert f"{RunStatus.DIVERGED}" == str(RunStatus.DIVERGED) == "diverged"
    assert json.dumps({"status": RunStatus.INTERRUPTED}) == '{"status": "interrupted"}'
    # what the loggers report (MLflow FINISHED / KILLED / FAILED; W&B exit code 0 / 0 / 1)
    assert [s.value for s in RunStatus if s.finished] == ["completed", "early_stopped"]
    assert [s.value for s in RunStatus if s.ended] == ["completed", "early_stopped", "interrupted"]


def test_is_finite_number():
    assert all(is_finite_number(v) for v in (0, -3, 1e-300, 2.5))
    assert not any(is_finite_number(v) for v in (True, False, math.nan, math.inf, -math.inf, "1", None, [1]))


def test_timestamp_is_a_sortable_folder_name():
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", timestamp())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d-\d{6}", timestamp(sep="/"))


def test_plots_false_writes_no_plots_and_true_writes_each_png(run):
    _, off = run("data=synthetic", "data.num_samples=200", "epochs=1", "plots=false", output_dir=None)
    assert (off / "metrics.csv").is_file() and not (off / "plots").exists()
    import shutil

    shutil.rmtree(off)
    _, on = run("data=synthetic", "data.num_samples=200", "epochs=1", "plots=true")
    for png in ("loss.png", "accuracy.png", "lr.png", "grad_means.png", "gradients.png"):
        assert (on / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
