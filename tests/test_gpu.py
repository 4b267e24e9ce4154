"""The CUDA paths: run by benchmarks/gpu.sh on a machine with a GPU, skipped elsewhere."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_cfg
from nettrain.commands.train import train
from nettrain.engine.loop import StopRequest
from nettrain.errors import ConfigError
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.metrics import read_metrics

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


# -- trainer.cuda_graph: the whole step as one CUDA graph -------------------------------------------

GRAPH_COLUMNS = ("train_loss", "val_loss", "lr")
BASE = [a for a in CUDA if not a.startswith("data.num_samples=")]


def _graph_and_eager(tmp_path, *extra):
    eager = train(make_cfg(*CUDA, "trainer.cuda_graph=off", *extra), output_dir=tmp_path / "eager")
    graph = train(make_cfg(*CUDA, "trainer.cuda_graph=on", *extra), output_dir=tmp_path / "graph")
    assert (eager["train_step"], graph["train_step"]) == ("eager", "cuda_graph")
    return rows(tmp_path / "eager"), rows(tmp_path / "graph")


def _close(eager_rows, graph_rows, rel):
    assert len(eager_rows) == len(graph_rows) == 2
    for e, g in zip(eager_rows, graph_rows):
        for key in (*GRAPH_COLUMNS, *(k for k in e if k.startswith("grad_mean/"))):
            assert float(g[key]) == pytest.approx(float(e[key]), rel=rel), key
        assert float(g["val_acc"]) == pytest.approx(float(e["val_acc"]), abs=0.02)


@pytest.mark.parametrize(
    "extra",
    [
        [],  # Adam
        ["optimizer=adamw", "regularization.weight_decay=0.01"],
        ["optimizer=sgd", "lr=0.05"],
        ["optimizer=sgd", "lr=0.05", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
        ["optimizer=manual_sgd", "lr=0.05"],
        ["optimizer=rmsprop", "lr=1e-4", "optimizer.momentum=0.5"],
        ["regularization=l1", "regularization.grad_clip=0.5", "grad_monitor.every_n_steps=1"],
        ["scheduler=step", "scheduler.step_size=1", "scheduler.warmup_ratio=0.3"],
        ["scheduler=cosine", "scheduler.interval=step"],
        ["model.norm=batchnorm"],
    ],
    ids=[
        "adam",
        "adamw",
        "sgd",
        "sgd-nesterov",
        "manual_sgd",
        "rmsprop",
        "l1-clip-monitor",
        "warmup-step",
        "cosine-per-step",
        "batchnorm",
    ],
)
def test_the_graph_step_trains_as_the_eager_step(tmp_path, extra):
    """The same losses, learning rates and gradient means as the eager loop, to float32 rounding
    (the graph's learning rate is a float32 tensor, the eager loop's a Python float)."""
    _close(*_graph_and_eager(tmp_path, *extra), rel=1e-3)


def test_bf16_in_the_graph(tmp_path):
    _close(*_graph_and_eager(tmp_path, "trainer.precision=bf16"), rel=2e-2)


def test_fp16_falls_back_to_the_eager_step_and_on_refuses_it(tmp_path, capsys):
    summary = train(make_cfg(*CUDA, "trainer.precision=fp16"), output_dir=tmp_path / "auto")
    assert summary["train_step"] == "eager" and summary["status"] == "completed"
    assert "trainer.cuda_graph=auto: the eager step is used: trainer.precision='fp16'" in capsys.readouterr().out
    with pytest.raises(
        ConfigError, match="trainer.cuda_graph='on': cannot capture the training step: trainer.precision='fp16'"
    ):
        train(make_cfg(*CUDA, "trainer.precision=fp16", "trainer.cuda_graph=on"), output_dir=tmp_path / "on")


def _graph_step(model, optimizer, n=512, size=64, **kwargs):
    from nettrain.engine.cuda_graph import GraphStep

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, 1, 28, 28, device="cuda", generator=g)
    y = torch.randint(0, 10, (n,), device="cuda", generator=g)
    return GraphStep(
        model=model, loss_fn=torch.nn.CrossEntropyLoss(), optimizer=optimizer, x=x, y=y, batch_sizes=[size], **kwargs
    )


def test_dropout_in_the_graph_draws_fresh_masks_each_replay():
    from nettrain.models import MLP

    torch.manual_seed(0)
    model = MLP(input_shape=[1, 28, 28], num_classes=10, dropout=0.5).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, fused=True)  # lr 0: the weights stay put
    step = _graph_step(model, optimizer)
    index = torch.arange(64, device="cuda")
    rng = torch.cuda.get_rng_state()
    first, second = step(index).clone(), step(index).clone()
    assert not torch.equal(first, second)  # same weights, same batch: only the masks differ
    assert not torch.equal(torch.cuda.get_rng_state(), rng)  # the generator advanced, as eager dropout does


def test_graph_replays_make_no_host_sync():
    """torch reports every synchronising call; with "error" it raises. The whole step and a
    warmup schedule (a tensor lr filled in place) for 30 steps, without one."""
    from nettrain.models import MLP
    from nettrain.optim.schedulers import LRSchedule

    model = MLP(input_shape=[1, 28, 28], num_classes=10, norm="batchnorm", dropout=0.2).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
    from nettrain.engine.cuda_graph import tensor_lr

    tensor_lr(optimizer, torch.device("cuda"))
    schedule = LRSchedule(optimizer, warmup_steps=20)
    step = _graph_step(model, optimizer, n=2048, schedule=schedule, l1=1e-5, grad_clip=1.0)
    order = torch.randperm(2048, device="cuda")
    loss_sum = torch.zeros((), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(30):
            loss_sum += step(order[(i % 32) * 64 : (i % 32 + 1) * 64])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(loss_sum.item()) and optimizer.param_groups[0]["lr"].item() == pytest.approx(1e-3)


def test_graph_runs_make_no_cuda_synchronisation_per_step(tmp_path):
    def syncs(num_samples):
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train(
                    make_cfg(*BASE, "trainer.cuda_graph=on", f"data.num_samples={num_samples}", "batch_size=16"),
                    output_dir=tmp_path / str(num_samples),
                )
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing CUDA operation" in str(w.message) for w in caught)

    assert syncs(400) == syncs(1600)


def test_deterministic_resume_with_graphs_is_exact(tmp_path):
    args = [
        *BASE,
        "deterministic=true",
        "trainer.cuda_graph=on",
        "regularization=dropout",
        "model.norm=batchnorm",
        "scheduler.warmup_ratio=0.2",
        "data.num_samples=1000",
    ]
    try:
        straight = train(make_cfg(*args), output_dir=tmp_path / "straight")
        train(make_cfg(*args), output_dir=tmp_path / "run", stop=StopRequest(after_steps=5))
        train(make_cfg(*args, f"resume={tmp_path / 'run'}"), output_dir=tmp_path / "run")
    finally:
        torch.use_deterministic_algorithms(False)
    assert straight["train_step"] == "cuda_graph"
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


# last: a failed capture is the one test that leaves CUDA an error to clear
def test_a_model_whose_control_flow_reads_its_data_is_not_captured_and_is_left_as_it_was():
    from nettrain.engine.cuda_graph import GraphCaptureError

    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(784, 10)

        def forward(self, x):
            h = self.fc(x.flatten(1))
            return h if h.sum() > 0 else -h  # reads a tensor value on the host

    model = Branchy().cuda()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
    with pytest.raises(GraphCaptureError, match="control flow reads tensor values on the host"):
        _graph_step(model, optimizer)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(float(s["step"]) == 0 for s in optimizer.state.values())
