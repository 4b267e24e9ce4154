"""The CUDA paths: run by benchmarks/gpu.sh on a machine with a GPU, skipped elsewhere."""

from __future__ import annotations

import pytest
import torch

from conftest import make_cfg
from nettrain.checkpoint import load_checkpoint
from nettrain.loop import StopRequest
from nettrain.metrics import read_metrics
from nettrain.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = ["device=cuda", "data=synthetic", "data.num_samples=2000", "epochs=2", "early_stopping.enabled=false"]


def rows(run):
    return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in read_metrics(run)]


def test_a_run_on_cuda_reports_its_device_and_memory(tmp_path):
    summary = train(make_cfg(*CUDA), output_dir=tmp_path / "run")
    assert summary["device"].startswith("cuda") and summary["device_name"] == torch.cuda.get_device_name()
    assert 0 < summary["cuda_peak_memory_mb"]
    assert summary["memory_estimate_mb"] > 0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path, precision):
    summary = train(make_cfg(*CUDA, f"trainer.precision={precision}"), output_dir=tmp_path / precision)
    assert summary["status"] == "completed" and summary["best_val_loss"] < 2.31  # below chance level (ln 10)


def test_cnn_with_channels_last_fused_adam_and_compile_on_cuda(tmp_path):
    summary = train(make_cfg(*CUDA, "model=cnn", "trainer.compile=true"), output_dir=tmp_path / "run")
    weight = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]["conv2.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last)  # channels_last=auto on CUDA
    assert summary["status"] == "completed"


def test_deterministic_resume_on_cuda_is_exact(tmp_path):
    args = [*CUDA, "deterministic=true", "regularization=dropout"]
    try:
        train(make_cfg(*args), output_dir=tmp_path / "straight")
        train(make_cfg(*args), output_dir=tmp_path / "run", stop=StopRequest(after_steps=5))
        train(make_cfg(*args, f"resume={tmp_path / 'run'}"), output_dir=tmp_path / "run")
    finally:
        torch.use_deterministic_algorithms(False)
    assert rows(tmp_path / "run") == rows(tmp_path / "straight")


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("batch", [32, 4096])
def test_the_memory_estimate_holds_within_25_percent_on_cuda(tmp_path, model, batch):
    overrides = ["device=cuda", "data=synthetic", "data.num_samples=5200", "epochs=1", f"model={model}"]
    summary = train(make_cfg(*overrides, f"batch_size={batch}"), output_dir=tmp_path / "run")
    peak = summary["memory_peak"]
    assert peak["method"] == "torch.cuda.max_memory_allocated" and "workspace" in summary["memory_estimate"]["parts"]
    assert 0.75 <= peak["ratio"] <= 1.25, (model, batch, peak, summary["memory_estimate"])


def test_batch_size_finder_confirms_its_batch_with_one_real_step_on_cuda(tmp_path):
    found = train(
        make_cfg("device=cuda", "find=batch_size", "data=synthetic", "data.num_samples=2000"),
        output_dir=tmp_path / "run",
    )
    assert found["confirmed"] and found["batch_size"] == 1600 and found["measured_peak_bytes"] > 0
