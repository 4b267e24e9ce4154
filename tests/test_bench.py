"""The speed benchmark's side-by-side figures (benchmarks/bench.py), on made-up runs: the order
of the rounds and the ratios the speed target is judged on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_round_runs_every_contender_once_starting_one_later(bench):
    kinds = ["tensor", "nettrain", "nettrain_nomon"]
    rounds = [bench.rotated(kinds, i) for i in range(4)]
    assert all(sorted(r) == sorted(kinds) for r in rounds)
    assert [r[0] for r in rounds] == ["tensor", "nettrain", "nettrain_nomon", "tensor"]


def test_the_table_gives_the_ratio_of_medians_and_the_median_of_the_rounds_ratios(bench):
    def runs(*rates):
        return [{"samples_per_s": float(v)} for v in rates]

    # round by round nettrain is 0.9x, 1.0x and 1.0x the tensor loop; the medians alone say 1.0x
    results = {"tensor": runs(100, 200, 300), "nettrain": runs(90, 200, 300), "nettrain_nomon": runs(100, 200, 300)}
    rows = {line.split(" | ")[0]: line for line in bench.compare_table(results) if line.startswith("| (")}
    assert rows["| (d) / (b)"].split(" | ")[1:3] == ["1.000", "1.000"]
    assert rows["| (d) / (b)"].split(" | ")[-1] == "0.900 - 1.000 |"
    assert "| 200 | 145 - 250 | 90 - 300 |" in rows["| (d) nettrain CLI, defaults"]


def test_the_paired_table_judges_the_median_pair_and_shows_the_summed_times(bench):
    """--paired: the target is judged on the median of all pairs' ratios; the ratio of the summed
    times (which carries a rare slow step, such as a sampled one, whatever the chunk) is shown per round."""
    from types import SimpleNamespace

    args = SimpleNamespace(batch_size=64, repeats=2, epochs=5, chunk=200, threads=2, set=[])
    info = {"cpu": "cpu", "cores": "2 cores", "python": "3.11", "torch": "2", "code": "abc"}
    meta = {"date": "today", "command": "bench.py --paired", "elapsed_min": 1.0, "load_start": 0.5, "load_end": 0.5}
    runs = [
        {
            "samples_per_s": 1000.0,
            "tensor_samples_per_s": 1020.0,
            "ratio": 0.98,
            "ratios": [0.97, 0.98, 0.99],
            "summed_ratio": 0.961,
        },
        {
            "samples_per_s": 990.0,
            "tensor_samples_per_s": 1010.0,
            "ratio": 0.96,
            "ratios": [0.95, 0.96, 0.975],
            "summed_ratio": 0.955,
        },
    ]
    table = bench.paired_report(args, info, {"nettrain": runs}, meta)
    row = next(line for line in table.splitlines() if line.startswith("| (d)"))
    assert row.split(" | ")[3:] == ["0.972", "0.962 - 0.979", "0.980, 0.960", "0.961, 0.955 |"]
    assert "on the median of all pairs: met." in table
    runs[0]["ratios"] = [0.95, 0.96, 0.965]
    assert "**not met**" in bench.paired_report(args, info, {"nettrain": runs}, meta)
