"""nettrain.commands.summarize on run dirs written by hand (no training): swept keys, statuses, the best
row, seed grouping, the log-axis choice, the files written, and nettrain-summarize's exit status."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from nettrain.commands import summarize as S

PNG = b"\x89PNG\r\n\x1a\n"
SUMMARY_FILES = {"summary.csv", "summary.md", "summary.png"}


def fake_run(
    path: Path, overrides: list[str], summary: dict | None = None, val_losses=(2.0, 1.5, 1.6), monitor: str = "val_loss"
) -> Path:
    """A run dir as nettrain-train leaves it: .hydra/overrides.yaml, metrics.csv, summary.json
    (summary=None: none, as a killed run; {"status": "failed", ...}: a failed run)."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_acc", "lr", "epoch_time_s", "samples_per_s"])
        for epoch, loss in enumerate(val_losses, 1):
            writer.writerow([epoch, loss + 0.1, loss, 1 - loss / 3, 0.001, 0.5, 1000.0])
    if summary is not None:
        best = min(range(len(val_losses)), key=lambda i: val_losses[i]) if val_losses else None
        full = {
            "status": "early_stopped",
            "monitor": monitor,
            "epochs_run": len(val_losses),
            "wall_time_s": 3.0,
            "samples_per_s": 1000.0,
            "test_acc": 0.9,
        }
        if best is not None:
            full |= {
                "best_epoch": best + 1,
                "best_val_loss": val_losses[best],
                "best_val_acc": 1 - val_losses[best] / 3,
            }
        full.update(summary)
        (path / "summary.json").write_text(json.dumps(full))
    return path


def common(*extra: str) -> list[str]:
    return [*extra, "data=synthetic", "epochs=5"]


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A 2 (lr) x 2 (seed) sweep, plus a failed job and an incomplete one: jobs 0..5."""
    root = tmp_path / "sweep"
    (root).mkdir()
    (root / "multirun.yaml").write_text("hydra: {}\n")
    losses = {(1e-4, 0): 1.2, (1e-4, 1): 1.0, (1e-2, 0): 0.7, (1e-2, 1): 0.5}
    for job, ((lr, seed), loss) in enumerate(losses.items()):
        fake_run(root / str(job), common(f"lr={lr}", f"seed={seed}"), {}, val_losses=(2.0, loss, loss + 0.1))
    fake_run(
        root / "4",
        common("lr=1.0", "seed=0"),
        {"status": "failed", "error": "ValueError: Expected more than 1 value per channel\nTraceback..."},
        val_losses=(0.1,),
    )  # a failed run is never the best, whatever its losses
    fake_run(root / "5", common("lr=1.0", "seed=1"), None, val_losses=(3.0, 0.2))  # killed mid-run
    (root / ".submitit").mkdir()  # not a run dir
    return root


def test_a_sweep_gives_one_row_per_job_with_swept_values_status_and_the_best_marked(sweep):
    summary = S.collect([sweep])
    assert [r.name for r in summary.runs] == ["0", "1", "2", "3", "4", "5"]
    assert summary.swept == ["lr", "seed"]  # data=, epochs= are the same in every job
    assert [r.status for r in summary.runs] == ["early-stopped"] * 4 + ["failed", "incomplete"]
    assert summary.runs[4].error == "ValueError: Expected more than 1 value per channel"
    assert summary.runs[4].status_text == "failed: ValueError: Expected more than 1 value per channel"
    assert summary.monitor == "val_loss" and summary.best == 3  # lowest val_loss among finished runs
    incomplete = summary.runs[5]  # no summary.json: what metrics.csv shows so far
    assert incomplete.values["epochs_run"] == 2 and incomplete.values["best_val_loss"] == 0.2
    assert not summary.all_finished and [r.name for r in summary.not_finished] == ["4", "5"]
    assert summary.out_dir == sweep.resolve()


def test_summary_files_are_written_atomically(sweep):
    summary = S.summarize(sweep, show=False)
    assert {p.name for p in summary.written} == {"summary.csv", "summary.md", "summary.png"}
    with open(sweep / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["job", "lr", "seed", "status", "error", *S.METRICS, "best"]
    assert [r["best"] for r in rows] == ["0", "0", "0", "1", "0", "0"]
    assert rows[3]["lr"] == "0.01" and rows[3]["seed"] == "1" and float(rows[3]["best_val_loss"]) == 0.5
    assert rows[4]["status"] == "failed" and rows[4]["error"].startswith("ValueError: Expected")
    assert rows[5]["status"] == "incomplete" and rows[5]["epochs_run"] == "2"
    md = (sweep / "summary.md").read_text()
    assert "| * | 3 | 0.01 | 1 | early-stopped |" in md
    assert "failed: ValueError: Expected more than 1 value per channel" in md
    assert "best: 3 (lr=0.01, seed=1), val_loss 0.5000" in md and "1 failed, 1 incomplete" in md
    assert "![" in md and "(summary.png)" in md
    assert (sweep / "summary.png").read_bytes()[:8] == PNG
    assert not list(sweep.glob(".summary*"))  # no temporaries left


def test_seeds_are_grouped_into_mean_and_min_max(sweep):
    summary = S.collect([sweep])
    assert S.plot_keys(summary) == ["lr"]  # seed has no panel of its own when other keys were swept
    series = S.grouped_points(summary, "lr")
    assert list(series) == [()]  # no other swept key (seed excepted): one series
    points = series[()]
    assert [p.x for p in points] == [1e-4, 1e-2]  # the failed and incomplete lr=1.0 runs are left out
    assert [p.n for p in points] == [2, 2]
    assert points[0].mean == pytest.approx(1.1) and (points[0].low, points[0].high) == (1.0, 1.2)
    assert points[1].mean == pytest.approx(0.6) and (points[1].low, points[1].high) == (0.5, 0.7)


def test_a_grid_gives_one_series_per_value_of_the_other_keys(tmp_path):
    root = tmp_path / "grid"
    for job, (bs, opt) in enumerate([(32, "adam"), (32, "sgd"), (64, "adam"), (64, "sgd")]):
        fake_run(root / str(job), [f"batch_size={bs}", f"optimizer={opt}"], {}, val_losses=(1.0, 0.5 + job / 10))
    summary = S.collect([root])
    assert summary.swept == ["batch_size", "optimizer"]
    series = S.grouped_points(summary, "batch_size")
    assert set(series) == {("adam",), ("sgd",)}
    assert [(p.x, p.mean) for p in series[("sgd",)]] == [(32, 0.6), (64, 0.8)]
    by_opt = S.grouped_points(summary, "optimizer")
    assert [p.x for p in by_opt[(64,)]] == ["adam", "sgd"]  # categorical values
    assert S.save_plot(summary, tmp_path / "grid.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize(
    "key, values, scale",
    [
        ("lr", [1e-3, 1e-2], "log"),  # lr-like: log even within one decade
        ("optimizer.lr", [0.1, 0.2], "log"),
        ("regularization.weight_decay", [0.0, 1e-4, 1e-3], "symlog"),  # lr-like with a 0
        ("regularization.l1", [1e-5, 1e-4], "log"),
        ("batch_size", [32, 64, 256], "linear"),  # under two decades
        ("data.num_samples", [100, 1000, 10000], "log"),  # positive, spanning >= 2 decades
        ("regularization.dropout", [0.0, 0.5], "linear"),
        ("seed", [0, 1, 2], "linear"),
        ("optimizer", ["adam", "sgd"], "linear"),
        ("x", [-1.0, 100.0], "linear"),
    ],
)
def test_log_axis_for_lr_like_keys_and_values_spanning_two_decades(key, values, scale):
    assert S.axis_scale(key, values) == scale


def test_best_by_val_acc_is_the_highest(tmp_path):
    for job, loss in enumerate([0.9, 0.3, 0.6]):
        fake_run(
            tmp_path / "s" / str(job),
            [f"lr={job}"],
            {"monitor": "val_acc", "best_val_acc": 1 - loss},
            monitor="val_acc",
        )
    summary = S.collect([tmp_path / "s"])
    assert summary.monitor == "val_acc" and summary.best == 1
    assert "higher is better" in S.to_markdown(summary)


def test_statuses_and_the_first_line_of_the_error(tmp_path):
    fake_run(tmp_path / "a", ["lr=1"], {"status": "completed"})
    fake_run(tmp_path / "b", ["lr=2"], {"status": "early_stopped"})
    fake_run(tmp_path / "c", ["lr=3"], {"status": "failed", "error": "RuntimeError: boom\nmore"}, val_losses=())
    fake_run(tmp_path / "d", ["lr=4"], None, val_losses=())  # killed before its first epoch
    fake_run(tmp_path / "e", ["lr=5"], {"status": "interrupted", "signal": 15})  # stopped, resumable
    runs = S.collect([tmp_path]).runs
    assert [r.status_text for r in runs] == [
        "ok",
        "early-stopped",
        "failed: RuntimeError: boom",
        "incomplete",
        "incomplete: interrupted by signal 15; nettrain-train resume=RUN_DIR continues it",
    ]
    assert runs[3].values["epochs_run"] is None and runs[3].curve == []
    assert S.pick_best(runs, "val_loss") == 0  # an interrupted run is not ranked
    header, rows = S.table_rows(S.collect([tmp_path]))
    assert rows[3][header.index("best val_loss")] == "-"


def test_overrides_parse_to_values_that_compare_as_numbers():
    assert S.parse_overrides(
        ["lr=1e-3", "batch_size=64", "+extra=true", "++n=null", "model.hidden=[8,8]", "optimizer=sgd", "~loss"]
    ) == {
        "lr": 0.001,
        "batch_size": 64,
        "extra": True,
        "n": None,
        "model.hidden": "[8,8]",
        "optimizer": "sgd",
        "~loss": None,
    }


def test_run_dirs_anywhere_are_summarized_into_their_common_parent(tmp_path):
    a = fake_run(tmp_path / "outputs" / "day1" / "10-00", ["lr=0.1"], {"status": "completed"})
    b = fake_run(tmp_path / "outputs" / "day2" / "09-00", ["lr=0.01", "seed=3"], {"status": "completed"})
    summary = S.summarize([a, b], show=False)
    assert summary.out_dir == (tmp_path / "outputs").resolve()
    assert [r.name for r in summary.runs] == ["day1/10-00", "day2/09-00"]
    assert summary.swept == ["lr", "seed"]  # seed only in one run: it differs
    assert (tmp_path / "outputs" / "summary.csv").exists()
    out = tmp_path / "report"
    S.summarize([a, b], out_dir=out, show=False)
    assert {p.name for p in out.iterdir()} == {"summary.csv", "summary.md", "summary.png"}


def test_main_prints_the_table_and_exits_1_when_a_job_did_not_finish(sweep, tmp_path, capsys):
    assert S.main([str(sweep), "--no-plot"]) == 1
    out = capsys.readouterr().out
    assert "sweep summary" in out and "failed: ValueError" in out and "incomplete" in out
    assert not (sweep / "summary.png").exists()
    ok = tmp_path / "ok"
    fake_run(ok / "0", ["lr=0.1"], {"status": "completed"})
    fake_run(ok / "1", ["lr=0.2"], {"status": "early_stopped"})
    assert S.main([str(ok)]) == 0
    assert S.main([str(tmp_path / "empty_or_missing")]) == 2
    (tmp_path / "empty").mkdir()
    assert S.main([str(tmp_path / "empty")]) == 2
    assert "no run dirs" in capsys.readouterr().err


def test_a_single_run_summarizes_too(tmp_path):
    run = fake_run(tmp_path / "only", ["lr=0.1"], {"status": "completed"})
    summary = S.summarize(run, show=False)
    assert summary.swept == [] and summary.best == 0 and summary.out_dir == tmp_path.resolve()
    assert (tmp_path / "summary.png").read_bytes()[:8] == PNG


# -- the Hydra callback ------------------------------------------------------------------------------


def hydra_config(tmp_path: Path, mode: str = "MULTIRUN", output_dir: Path | None = None):
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "hydra": {
                "mode": RunMode[mode],
                "sweep": {"dir": str(tmp_path)},
                "runtime": {"output_dir": str(output_dir or tmp_path)},
            },
            "early_stopping": {"monitor": "val_loss"},
        }
    )


def test_the_callback_writes_the_summary_when_a_multirun_ends_and_sets_the_exit_code(sweep, capsys):
    from nettrain.commands import sweep_callback

    callback = sweep_callback.SweepSummaryCallback()
    callback.on_multirun_start(hydra_config(sweep))
    assert sweep_callback.sweep_exit_code() == 0
    callback.on_multirun_end(hydra_config(sweep))
    assert SUMMARY_FILES <= {p.name for p in sweep.iterdir()}
    assert sweep_callback.last_summary().out_dir == sweep.resolve()
    assert sweep_callback.sweep_exit_code() == 1  # job 4 failed, job 5 is incomplete
    captured = capsys.readouterr()
    assert "sweep summary" in captured.out
    assert "warning: job 4 failed: ValueError" in captured.err and "warning: job 5 incomplete" in captured.err
    callback.on_multirun_start(hydra_config(sweep))  # the next multirun starts clean
    assert sweep_callback.last_summary() is None and sweep_callback.sweep_exit_code() == 0


def test_the_callback_never_fails_the_sweep(tmp_path, capsys):
    from nettrain.commands import sweep_callback

    sweep_callback.SweepSummaryCallback().on_multirun_end(hydra_config(tmp_path / "nothing_here"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: sweep summary not written: FileNotFoundError")
    assert sweep_callback.sweep_exit_code() == 0
    sweep_callback.SweepSummaryCallback(enabled=False).on_multirun_end(hydra_config(tmp_path))
    assert not any(tmp_path.iterdir())


# -- data sets, regression, folders that trained nothing ----------------------------------------------


def with_config(run: Path, **config) -> Path:
    """Give a fake run the .hydra/config.yaml nettrain-train saves (only the keys a test needs)."""
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def test_runs_on_different_data_sets_are_never_ranked_together(tmp_path, capsys):
    synthetic = {"_target_": "nettrain.data.synthetic", "num_samples": 300, "in_memory": True}
    for job, (data, loss) in enumerate([(synthetic, 0.2), ({**synthetic, "in_memory": False}, 0.4)]):
        with_config(fake_run(tmp_path / "same" / str(job), [f"lr={job}"], {}, val_losses=(1.0, loss)), data=data)
    same = S.collect([tmp_path / "same"])  # in_memory loads the same data: one ranking
    assert same.best == 0 and same.best_by_data == {} and "data set" not in S.table_rows(same)[0]

    sets = [
        ("a.csv", {"_target_": "nettrain.data.tabular.csv", "path": "a.csv", "target": "y"}, 0.9),
        ("b.csv", {"_target_": "nettrain.data.tabular.csv", "path": "b.csv", "target": "y"}, 0.1),
        ("a.csv", {"_target_": "nettrain.data.tabular.csv", "path": "a.csv", "target": "y"}, 0.5),
        ("synthetic", synthetic, 0.3),
    ]
    root = tmp_path / "mixed"
    for job, (_, data, loss) in enumerate(sets):
        with_config(fake_run(root / str(job), [f"lr={job}"], {}, val_losses=(1.0, loss)), data=data)
    assert S.main([str(root), "--no-plot"]) == 0
    printed = capsys.readouterr()
    summary = S.collect([root])
    assert summary.best is None  # b.csv's 0.1 is not "the best" of runs on other data
    assert summary.best_by_data == {"csv path=a.csv": 2, "csv path=b.csv": 1, "synthetic": 3}
    assert "warning: the runs differ in data (csv path=a.csv, csv path=b.csv, synthetic)" in printed.err
    with open(root / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["data_set"], r["best"]) for r in rows] == [
        ("csv path=a.csv", "0"),
        ("csv path=b.csv", "1"),
        ("csv path=a.csv", "1"),
        ("synthetic", "1"),
    ]
    md = (root / "summary.md").read_text()
    assert "on 3 data sets (csv path=a.csv, csv path=b.csv, synthetic), so no best across them" in md
    assert "csv path=a.csv: 2 (lr=2), val_loss 0.5000" in md


def regression_run(path: Path, r2: list[float], mae: list[float], summary: dict | None, monitor: str) -> Path:
    """A regression run dir: metrics.csv with val_r2 and val_mae, summary.json as given (an older
    nettrain's summary has no best_val_mae), config.yaml with data.task=regression."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"early_stopping.monitor={monitor}"]))
    with_config(path, data={"_target_": "nettrain.data.tabular.csv", "path": "r.csv", "task": "regression"})
    with open(path / "metrics.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "train_loss", "val_loss", "val_r2", "val_mae"])
        for epoch, (a, b) in enumerate(zip(r2, mae), 1):
            writer.writerow([epoch, 1.0, 1 - a, a, b])
    if summary is not None:
        (path / "summary.json").write_text(json.dumps({"status": "completed", "monitor": monitor, **summary}))
    return path


def test_regression_runs_show_r2_and_mae_and_rank_by_the_monitored_metric(tmp_path):
    root = tmp_path / "r2"
    for job, r2 in enumerate([0.5, 0.9, 0.7]):
        regression_run(
            root / str(job),
            [0.1, r2],
            [3.0, 1.0 - r2],
            {"best_epoch": 2, "best_val_loss": 1 - r2, "best_val_r2": r2, "test_r2": r2 - 0.05, "test_mae": 1.5},
            "val_r2",
        )
    assert S.main([str(root), "--no-plot"]) == 0
    with open(root / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["best"] for r in rows] == ["0", "1", "0"]  # the highest R²
    assert [float(r["test_r2"]) for r in rows] == pytest.approx([0.45, 0.85, 0.65]) and "test_acc" not in rows[0]
    summary = S.collect([root])
    assert summary.monitor == "val_r2" and summary.best == 1
    header, rows = S.table_rows(summary)
    assert {"best val_r2", "best val_mae", "test r2", "test mae"} <= set(header)
    assert "test acc" not in header and "best val_acc" not in header  # every run is a regression
    assert rows[1][header.index("test r2")] == "0.8500" and rows[1][header.index("best val_mae")] == "0.1"
    assert "best: 1, val_r2 0.9000" in S.to_markdown(summary)

    root = tmp_path / "mae"  # val_mae: lowest is best, read from metrics.csv where summary.json lacks it
    for job, mae in enumerate([0.8, 0.3, 0.6]):
        regression_run(root / str(job), [0.1, 0.5], [2.0, mae], {"best_epoch": 2, "best_val_loss": 0.5}, "val_mae")
    summary = S.collect([root])
    assert [run.values["best_val_mae"] for run in summary.runs] == [0.8, 0.3, 0.6]
    assert summary.monitor == "val_mae" and summary.best == 1
