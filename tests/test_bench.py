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


def test_the_start_up_targets_judge_the_medians(bench):
    """--startup: `--help` without torch and in at most half of `import torch`, the first step within
    0.5 s of the end of `import torch` and of the minimal torch script's, torchvision not imported;
    the timings on the medians of the rounds."""
    from types import SimpleNamespace

    def step(first, torchvision=False):
        return {
            "first_step_s": first,
            "torch_imported_s": first - 0.3,
            "nettrain_imported_s": 0.2,
            "config_composed_s": 0.4,
            "torchvision_imported": torchvision,
        }

    startup = {
        "import_torch": [2.0, 2.2, 4.0],
        "import_torch_done": [1.5, 1.6, 3.0],
        "import_torch_dynamo": [2.5, 2.6, 2.7],
        "help": [1.0, 1.1, 0.9],
        "first_step": [step(1.9), step(2.1), step(2.0)],
        "reference_first_step": [1.4, 1.5, 9.0],
        "help_imports": {"torch": False, "torchvision": False},
        "noisy_starts": 1,
        "commands": 15,
    }
    names = [name for name, _, _ in bench.startup_targets(startup)]
    assert [ok for _, _, ok in bench.startup_targets(startup)] == [True] * 5, names
    startup["help"] = [1.2, 1.15, 0.9]  # median 1.15 s: more than half of 2.2 s
    startup["first_step"][:2] = [step(2.3), step(2.2, torchvision=True)]  # median 2.2 s: more than 1.6 + 0.5
    startup["help_imports"]["torch"] = True
    met = {name: ok for name, _, ok in bench.startup_targets(startup)}
    assert met == {
        "`--help` does not import torch": False,
        "`--help` <= 0.5 x `import torch`": False,
        "command -> first training step <= `import torch` + 0.5 s (mnist_sample)": False,
        "torchvision not imported on mnist_sample": False,
        "command -> first training step <= the minimal torch script's + 0.5 s": False,  # 2.2 against 1.5 + 0.5
    }, met
    args = SimpleNamespace(device="cpu", startup_repeats=3, wait_quiet=20)
    info = {"cpu": "cpu", "cores": "2 cores", "python": "3.11", "torch": "2", "code": "abc"}
    meta = {"date": "today", "command": "bench.py --startup", "elapsed_min": 1.0, "load_start": 0.5, "load_end": 0.5}
    report = bench.startup_report(args, info, startup, meta)
    assert "| `--help` <= 0.5 x `import torch` | 1.15 s vs 2.20 s (0.52x) | **no** |" in report
    assert report.count("**no**") == 5 and "\n### Start-up\n" in report
    assert "median of 3 (1 of 15 commands started while other work kept the CPUs busy" in report
