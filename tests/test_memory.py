"""The training-memory estimate, part by part, against hand-computed values."""

from __future__ import annotations

import json
import mmap

import pytest
import torch

from conftest import cli
from nettrain.insight.memory import PeakMemory, data_bytes, estimate, rounded
from nettrain.models import MLP


def small_mlp():
    torch.manual_seed(0)
    return MLP((1, 4, 4), 3, hidden=[8])  # 16*8 + 8 + 8*3 + 3 = 163 parameters


def test_parts_of_a_small_mlp_by_hand():
    model = small_mlp()
    adam = torch.optim.Adam(model.parameters())
    x, y = torch.randn(10, 1, 4, 4), torch.randint(0, 3, (10,))
    est = estimate(model, adam, torch.nn.CrossEntropyLoss(), x, y, 32, data_bytes=1234)
    assert est.parts == {
        "parameters": 163 * 4,
        "gradients": 163 * 4,
        "optimizer_state": 2 * 163 * 4 + 4 * 4,  # exp_avg, exp_avg_sq, and a float32 step per tensor
        "best_weights": 163 * 4,
        # saved for backward: the input (32x16 floats, for fc1), ReLU's output (32x8, also fc2's
        # input), log_softmax's output (32x3), the int64 targets and nll_loss's total weight
        "activations": 32 * 16 * 4 + 32 * 8 * 4 + 32 * 3 * 4 + 32 * 8 + 4,
        "transients": 2 * 32 * 8 * 4,  # two of the largest new buffers (fc1's output): backward's grads
        "data": 1234,
    }
    assert est.total == sum(est.parts.values())
    assert est.at(64) - est.total == 32 * (16 * 4 + 8 * 4 + 3 * 4 + 8) + 2 * 32 * 8 * 4
    assert est.to_dict()["bytes"] == est.total


def test_optimizer_state_is_counted_not_assumed():
    model = small_mlp()
    x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))
    loss = torch.nn.CrossEntropyLoss()
    sgd = estimate(model, torch.optim.SGD(model.parameters(), lr=0.1), loss, x, y, 8, restore_best=False)
    momentum = estimate(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), loss, x, y, 8)
    assert sgd.parts["optimizer_state"] == 0 and sgd.parts["best_weights"] == 0
    assert momentum.parts["optimizer_state"] == 163 * 4


def test_the_probe_leaves_the_model_and_the_rng_alone():
    model = MLP((1, 4, 4), 3, hidden=[8], norm="batchnorm", dropout=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(4, 1, 4, 4), torch.randint(0, 3, (4,))
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)
    estimate(model, torch.optim.Adam(model.parameters()), torch.nn.CrossEntropyLoss(), x, y, 16)
    assert torch.equal(torch.rand(1), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_data_bytes_and_allocator_rounding():
    class S:
        x, y = torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.long)

    assert data_bytes([S, S], torch.device("cpu")) == 2 * (10 * 4 * 4 + 10 * 8)
    assert data_bytes([S], torch.device("cpu"), in_memory=False, batch_size=5) == 5 * 16 + 5 * 8
    assert rounded(1, torch.device("cuda")) == 512 and rounded(513, torch.device("cuda")) == 1024
    assert rounded(513, torch.device("cpu")) == 513


def test_peak_rss_increase_is_measured_on_cpu():
    peak = PeakMemory(torch.device("cpu"))
    peak.start()
    # 64 MiB of fresh pages, touched. (A tensor could reuse memory the allocator already holds
    # resident from earlier tests in this process, and then RSS would not rise.)
    block = mmap.mmap(-1, 64 * 2**20)
    page = b"\x01" * 2**20
    for _ in range(64):
        block.write(page)
    block.close()
    measured = peak.peak()
    assert measured is not None and 60 * 2**20 <= measured <= 80 * 2**20


def test_the_estimate_and_the_measured_peak_are_in_the_summary(run, capsys):
    summary, _ = run("data=synthetic", "data.num_samples=300", "epochs=1")
    est = summary["memory_estimate"]
    assert set(est["parts"]) == {
        "parameters",
        "gradients",
        "optimizer_state",
        "best_weights",
        "activations",
        "transients",
        "data",
    }
    assert est["parts"]["parameters"] == 203_530 * 4 and est["parts"]["optimizer_state"] == 2 * 203_530 * 4 + 16
    assert est["parts"]["data"] == (240 + 30 + 30) * (784 * 4 + 8)  # train, val and test splits
    assert est["bytes"] == sum(est["parts"].values()) and est["batch_size"] == 64
    peak = summary["memory_peak"]
    assert peak["method"] == "peak RSS increase" and peak["bytes"] >= 0
    assert "activations" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_estimate_holds_within_the_stated_tolerance(tmp_path):
    """A run whose training memory dwarfs the noise (~60 MiB): the peak RSS rise is 0.5-2.5x the
    estimate of what training adds (docs/explanation/memory.md)."""
    result = cli(
        "data=synthetic",
        "data.num_samples=1300",
        "model.hidden=[1024,1024]",
        "batch_size=1024",
        "epochs=1",
        "threads=1",
        "hydra.run.dir=run",
        cwd=tmp_path,
        process=True,  # a fresh process: the peak RSS is the process's own
    )
    assert result.returncode == 0, result.stderr
    peak = json.loads((tmp_path / "run" / "summary.json").read_text())["memory_peak"]
    assert 0.5 <= peak["ratio"] <= 2.5, peak
