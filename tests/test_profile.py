"""profile=true: a trace json.load reads, a table whose parts add up to the step, advice that names
the setting to change when the data is the bottleneck and nothing on a fast run; no training kept."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.config.schema import problems
from nettrain.data import Batches
from nettrain.engine.profiling import HOST_SYNC, step_table

SMALL = ["data=synthetic", "data.num_samples=400", "profile=true", "profiler.warmup=2", "profiler.steps=6"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> tuple[dict, Path]:
    """A profile of a small MLP on in-memory data: the data is no bottleneck."""
    out = tmp_path_factory.mktemp("profiled") / "run"
    return train(make_cfg(*SMALL, "model.hidden=[512,512]", "batch_size=128"), output_dir=out), out


def within_ten_percent(table: dict) -> bool:
    return abs(sum(table["parts_ms"].values()) - table["step_ms"]) <= 0.1 * table["step_ms"]


def test_the_trace_loads_with_json_and_holds_each_phase(profiled):
    _, out = profiled
    trace = json.loads((out / "profile" / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {
        "nettrain: step",
        "nettrain: data",
        "nettrain: forward",
        "nettrain: backward",
        "nettrain: optimizer",
    } <= names
    assert "nettrain: augment" not in names  # the run has no augmentation
    assert any(name.startswith("aten::addmm") for name in names if name)  # the model's own ops


def test_the_parts_sum_to_the_step_time_within_ten_percent(profiled):
    summary, out = profiled
    table = json.loads((out / "profile" / "summary.json").read_text())
    assert table["measured_steps"] == 6 and table["step_ms"] > 0
    assert set(table["parts_ms"]) == {"data", "forward", "backward", "optimizer", HOST_SYNC}
    assert within_ten_percent(table), table
    assert table["parts_ms"] == summary["parts_ms"] and summary["status"] == "profile"
    assert abs(sum(table["shares"].values()) - table["parts_sum_ms"] / table["step_ms"]) < 1e-3


def test_a_fast_run_gets_no_advice_about_the_data(profiled):
    summary, _ = profiled
    assert summary["shares"]["data"] < 0.3, summary["shares"]
    assert summary["advice"] == [summary["advice"][0]] and summary["advice"][0].startswith("nothing stands out")
    assert "data." not in summary["advice"][0]


def test_profiling_trains_nothing_it_keeps(profiled):
    _, out = profiled
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["profile"]  # no checkpoints/


def test_slow_data_loading_is_named_with_the_keys_that_fix_it(tmp_path, monkeypatch, capsys):
    """Each batch waits 50 ms for its data (a slow file system, say) for a small model: the advice
    names the loader keys."""
    batches = Batches.batches

    def slow(self, order, first_step=0):
        for batch in batches(self, order, first_step):
            time.sleep(0.05)
            yield batch

    monkeypatch.setattr(Batches, "batches", slow)
    cfg = make_cfg(*SMALL, "data.in_memory=false", "model.hidden=[16]", "threads=1")
    summary = train(cfg, output_dir=tmp_path / "run")
    assert summary["shares"]["data"] >= 0.3 and within_ten_percent(summary), summary
    first = summary["advice"][0]
    assert first.startswith(f"data loading is {summary['shares']['data']:.0%} of the step")
    assert "data.in_memory=true" in first and "data.num_workers=0 now" in first
    shown = capsys.readouterr().out
    assert f"advice: {first}" in shown and "ms/step" in shown


def _events(*spans: tuple[str, float, float]) -> list:
    return [SimpleNamespace(name=name, time_range=SimpleNamespace(start=a, end=b)) for name, a, b in spans]


def test_host_syncs_are_taken_out_of_the_phase_they_happen_in():
    events = _events(
        ("nettrain: step", 0, 100),
        ("nettrain: data", 1, 10),
        ("nettrain: forward", 10, 40),
        ("nettrain: backward", 40, 70),
        ("aten::_local_scalar_dense", 50, 60),  # an .item() in backward, its stream sync inside it
        ("cudaStreamSynchronize", 52, 59),
        ("nettrain: optimizer", 70, 99),
        ("cudaDeviceSynchronize", 95, 99),  # the profile's own wait: the optimizer's kernels
    )
    table = step_table(events, steps=1)
    assert table["parts_ms"] == {"data": 0.009, "forward": 0.03, "backward": 0.02, "optimizer": 0.029, HOST_SYNC: 0.01}
    assert table["step_ms"] == 0.1 and table["parts_sum_ms"] == 0.098


def test_bad_profile_settings_are_named():
    found = problems(make_cfg("profiler.steps=0", "profiler.warmup=0", "profile=true", "dry_run=true"))
    assert "profiler.steps=0: must be an integer in 1..10000" in found
    assert "profiler.warmup=0: must be an integer in 1..10000 (the first steps pay one-off costs)" in found
    assert "profile=True and dry_run=True: choose one (profile=true profiles a fresh run)" in found
