"""trainer.cuda_graph: which configurations capture the whole step, which fall back and why.

The decision is a pure function of the settings (nettrain.config.graph_plan.plan), so it is tested here
on any machine; tests/test_gpu.py replays the graphs themselves on CUDA.
"""

from __future__ import annotations

import pytest

from conftest import make_cfg
from nettrain.config.graph_plan import CAPTURABLE_OPTIMIZERS, compile_mode, optimizer_kwargs, plan

ADAM = "torch.optim.Adam"


def test_a_plain_cuda_run_captures_under_auto_and_on():
    for setting in ("auto", "on"):
        p = plan(setting, device="cuda", optimizer=ADAM, train_size=4096, batch_size=64)
        assert p.capture and p.fallbacks == [] and p.message() is None and p.refusal() == []
        assert p.notes == []


def test_off_never_captures_and_says_nothing():
    p = plan("off", device="cuda", precision="fp16", in_memory=False)
    assert not p.capture and p.message() is None and p.refusal() == []


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_on_a_device_without_cuda_is_eager_without_a_word(device):
    p = plan("auto", device=device, optimizer=ADAM)
    assert not p.capture and p.message() is None and p.refusal() == []


def test_on_without_cuda_is_refused_naming_the_device():
    p = plan("on", device="cpu", optimizer=ADAM)
    assert not p.capture
    expected = (
        "trainer.cuda_graph='on': cannot capture the training step: device='cpu': CUDA graphs "
        "need a CUDA device; use trainer.cuda_graph=auto to fall back to the eager step, or off"
    )
    assert p.refusal() == [expected]


def test_fp16_falls_back_because_its_grad_scaler_syncs():
    p = plan("auto", device="cuda", precision="fp16", optimizer=ADAM)
    assert not p.capture
    assert p.message() == (
        "trainer.cuda_graph=auto: the eager step is used: trainer.precision='fp16': its GradScaler checks the "
        "gradients for inf/NaN on the host every step (a sync a graph cannot hold); bf16 needs no scaler and "
        "is captured"
    )
    assert p.refusal() == []  # auto never refuses


def test_distributed_training_falls_back_because_ddp_all_reduces_outside_the_step():
    p = plan("auto", device="cuda", optimizer=ADAM, world_size=2)
    assert not p.capture
    assert "distributed training (2 processes)" in p.message()
    assert plan("on", device="cuda", optimizer=ADAM, world_size=2).refusal()
    assert plan("auto", device="cuda", optimizer=ADAM, world_size=1).capture


def test_bf16_and_32_capture():
    for precision in ("32", "bf16"):
        assert plan("on", device="cuda:0", precision=precision, optimizer=ADAM).capture


def test_the_dataloader_path_falls_back():
    p = plan("auto", device="cuda", in_memory=False, optimizer=ADAM)
    assert not p.capture and "data.in_memory=false: batches come from a DataLoader" in p.message()


@pytest.mark.parametrize("target", sorted(CAPTURABLE_OPTIMIZERS))
def test_every_optimizer_option_captures(target):
    assert plan("on", device="cuda", optimizer=target).capture


def test_an_optimizer_without_capturable_support_falls_back_and_on_is_refused():
    target = "torch.optim.Adagrad"
    auto = plan("auto", device="cuda", optimizer=target)
    assert not auto.capture and auto.fallbacks == [
        f"optimizer._target_='{target}': its step is not known to be capturable; captured: "
        + ", ".join(CAPTURABLE_OPTIMIZERS)
    ]
    assert (
        plan("on", device="cuda", optimizer=target)
        .refusal()[0]
        .startswith(
            "trainer.cuda_graph='on': cannot capture the training step: optimizer._target_='torch.optim.Adagrad'"
        )
    )


def test_sgd_needs_its_fused_kernel():
    assert plan("on", device="cuda", optimizer="torch.optim.SGD", fused_optimizer="auto").capture
    p = plan("auto", device="cuda", optimizer="torch.optim.SGD", fused_optimizer="off")
    assert not p.capture and "trainer.fused_optimizer='off'" in p.message()


def test_sgd_with_dampening_falls_back():
    p = plan("auto", device="cuda", optimizer="torch.optim.SGD", optimizer_options={"momentum": 0.9, "dampening": 0.1})
    assert not p.capture and "optimizer.dampening=0.1" in p.message()


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compile_modes_with_their_own_graphs_fall_back(mode):
    p = plan("auto", device="cuda", optimizer=ADAM, compile=mode)
    assert not p.capture and f"trainer.compile='{mode}'" in p.message()


@pytest.mark.parametrize("value", [True, "default", False])
def test_compile_default_captures(value):
    assert plan("on", device="cuda", optimizer=ADAM, compile=value).capture


def test_a_last_batch_of_another_size_gets_its_own_graph():
    p = plan("on", device="cuda", optimizer=ADAM, train_size=1000, batch_size=64)
    assert p.capture and p.notes == ["the last batch has 40 samples: it gets a graph of its own"]


def test_every_reason_is_listed_at_once():
    p = plan("on", device="cpu", precision="fp16", in_memory=False, optimizer="torch.optim.Adagrad")
    assert len(p.refusal()) == 4


def test_device_auto_judges_only_what_holds_everywhere():
    """At config time `device=auto` is not resolved yet: no device verdict, the rest is judged."""
    assert plan("on", device="auto", optimizer=ADAM).capture
    assert not plan("on", device="auto", precision="fp16", optimizer=ADAM).capture


def test_compile_mode_and_optimizer_kwargs():
    assert [compile_mode(v) for v in (True, False, None, "default", "max-autotune")] == [
        "default",
        None,
        None,
        "default",
        "max-autotune",
    ]
    assert optimizer_kwargs("torch.optim.Adam") == {"capturable": True}
    assert optimizer_kwargs("torch.optim.RMSprop") == {"capturable": True}
    assert optimizer_kwargs("torch.optim.SGD") == {}  # fused: nettrain's fused_optimizer setting
    assert optimizer_kwargs("nettrain.optim.ManualSGD") == {}


@pytest.mark.slow
def test_the_decision_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from nettrain.config.graph_plan import plan; plan('auto', device='cuda'); print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


# -- the index batches the graph step gathers from ----------------------------------------------


def _batches(n=300, batch_size=64):
    import torch

    from nettrain.data import Batches, Split

    split = Split(torch.randn(n, 1, 4, 4), torch.arange(n) % 10)
    return Batches(split, batch_size, torch.device("cpu"), shuffle=True, generator=torch.Generator().manual_seed(0))


def test_index_batches_select_the_rows_batches_serves():
    import torch

    from nettrain.engine.cuda_graph import IndexBatches

    batches = _batches()
    view = IndexBatches(batches)
    order = batches.order()
    assert len(view) == len(batches) == 5 and view.n == 300 and view.generator is batches.generator
    for first_step in (0, 3):
        served = list(batches.batches(order, first_step=first_step))
        indexed = list(view.batches(order, first_step=first_step))
        assert len(served) == len(indexed) == 5 - first_step
        for (x, y), (index, same) in zip(served, indexed):
            assert same is index
            assert torch.equal(view.x.index_select(0, index), x) and torch.equal(view.y.index_select(0, index), y)
    assert [len(i) for i, _ in view.batches(None)] == [64, 64, 64, 64, 44]


def test_index_batches_know_the_epochs_batch_sizes():
    from nettrain.engine.cuda_graph import IndexBatches

    assert IndexBatches(_batches(300, 64)).batch_sizes() == {64, 44}
    assert IndexBatches(_batches(256, 64)).batch_sizes() == {64}
    assert IndexBatches(_batches(40, 64)).batch_sizes() == {40}  # one batch, smaller than batch_size


def test_index_batches_refuse_the_dataloader_path():
    import torch

    from nettrain.data import Batches, Split
    from nettrain.engine.cuda_graph import IndexBatches

    loader = Batches(
        Split(torch.zeros(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)), 4, torch.device("cpu"), in_memory=False
    )
    with pytest.raises(ValueError, match="in_memory"):
        IndexBatches(loader)


# -- the setting in the config, and the step the loop gets on CPU --------------------------------


def test_the_settings_values_are_checked_up_front():
    from nettrain.config.schema import problems

    assert problems(make_cfg("trainer.cuda_graph=always")) == ["trainer.cuda_graph='always': allowed: auto, on, off"]
    assert problems(make_cfg("trainer.compile=fast")) == [
        "trainer.compile='fast': allowed: false, true, default, reduce-overhead, max-autotune"
    ]
    for value in ("true", "false", "default", "reduce-overhead", "max-autotune"):
        assert problems(make_cfg(f"trainer.compile={value}")) == []


def test_on_with_settings_that_cannot_be_captured_is_refused_before_anything_is_built():
    from nettrain.config.schema import problems

    found = problems(make_cfg("trainer.cuda_graph=on", "device=cuda", "trainer.precision=fp16", "data.in_memory=false"))
    assert [p.split(": ")[2] for p in found] == ["trainer.precision='fp16'", "data.in_memory=false"]
    assert "device='cpu': CUDA graphs need a CUDA device" in problems(make_cfg("trainer.cuda_graph=on"))[0]
    assert problems(make_cfg("trainer.cuda_graph=on", "device=auto")) == []  # judged once the device is known


def test_on_refuses_a_cpu_run_through_the_cli(tmp_path):
    from conftest import cli

    proc = cli("device=cpu", "trainer.cuda_graph=on", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, plots=None)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no run folder
    assert (
        "trainer.cuda_graph='on': cannot capture the training step: device='cpu': CUDA graphs need a CUDA "
        "device; use trainer.cuda_graph=auto to fall back to the eager step, or off"
    ) in proc.stderr


def test_a_cpu_run_under_auto_trains_eagerly_without_a_word(run, capsys):
    summary, _ = run("data=synthetic", "data.num_samples=300", "epochs=1")
    assert summary["train_step"] == "eager"
    assert "cuda_graph" not in capsys.readouterr().out


def _built(*overrides):
    import torch

    from nettrain.engine.build import build_run

    torch.manual_seed(0)
    return build_run(make_cfg("data=synthetic", "data.num_samples=300", *overrides), torch.device("cpu"))


STEP_SETTINGS = (
    "regularization.l1=1e-4",
    "regularization.grad_clip=0.05",
    "grad_monitor.every_n_steps=2",
    "scheduler.warmup_ratio=0.5",
    "model.norm=batchnorm",
)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "manual_sgd", "rmsprop"])
def test_the_captured_body_computes_what_the_eager_step_computes(optimizer):
    """GraphStep's body (what the graph holds), run eagerly on CPU, against the loop's own step:
    the same losses, weights, optimizer state and gradient-mean sums, bit for bit."""
    import torch

    from nettrain.engine.cuda_graph import GraphStep, IndexBatches, tensor_lr
    from nettrain.engine.loop import LoopSettings, train_step

    settings = LoopSettings(epochs=1, l1=1e-4, grad_clip=0.05)
    eager_run, graph_run = (
        _built(f"optimizer={optimizer}", *STEP_SETTINGS),
        _built(f"optimizer={optimizer}", *STEP_SETTINGS),
    )
    for r in (eager_run, graph_run):  # the graph's learning rate is a tensor; here both runs share it
        tensor_lr(r.state.optimizer, torch.device("cpu"))
        r.state.model.train()
    eager = train_step(eager_run.state, settings)
    s = graph_run.state
    view = IndexBatches(graph_run.train_batches)
    graph = GraphStep(
        model=s.model,
        loss_fn=s.loss_fn,
        optimizer=s.optimizer,
        x=view.x,
        y=view.y,
        batch_sizes=view.batch_sizes(),
        l1=settings.l1,
        grad_clip=settings.grad_clip,
        grad_monitor=s.grad_monitor,
        schedule=s.schedule,
        capture=False,
    )
    order = eager_run.train_batches.order()
    for (x, y), (index, _) in zip(eager_run.train_batches.batches(order), view.batches(order)):
        expected = eager(x, y)
        got = graph._body(index, s.grad_monitor.tick())
        s.schedule.after_step()
        assert torch.equal(got, expected)
    for a, b in zip(eager_run.state.model.state_dict().values(), s.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(eager_run.state.grad_monitor.sums, s.grad_monitor.sums)
    assert eager_run.state.grad_monitor.steps == s.grad_monitor.steps == 2
    assert float(eager_run.state.optimizer.param_groups[0]["lr"]) == float(s.optimizer.param_groups[0]["lr"])


def test_a_failed_capture_falls_back_under_auto_and_stops_under_on(monkeypatch, run, capsys, tmp_path):
    """What happens when capturing raises (a model with data-dependent control flow, say): the
    step choice is exercised on CPU with a plan that captures and a GraphStep that fails."""
    from nettrain.config import graph_plan
    from nettrain.engine import cuda_graph
    from nettrain.errors import ConfigError

    def failing(**kwargs):
        raise cuda_graph.GraphCaptureError("capturing the step failed (RuntimeError: operation not permitted)")

    real_plan = graph_plan.plan
    monkeypatch.setattr(graph_plan, "plan", lambda setting, **kw: graph_plan.Plan(setting, setting != "off"))
    monkeypatch.setattr(cuda_graph, "GraphStep", failing)
    monkeypatch.setattr(graph_plan, "optimizer_kwargs", lambda target: {})  # CPU: no capturable optimizers
    monkeypatch.setattr(cuda_graph, "tensor_lr", lambda optimizer, device: None)  # ... and a float lr
    summary, _ = run("data=synthetic", "data.num_samples=300", "epochs=2")
    assert summary["train_step"] == "eager" and summary["status"] == "completed"
    assert (
        "trainer.cuda_graph=auto: the eager step is used: capturing the step failed (RuntimeError: operation "
        "not permitted)"
    ) in capsys.readouterr().out
    monkeypatch.setattr(graph_plan, "plan", real_plan)
    plain, _ = run(
        "data=synthetic", "data.num_samples=300", "epochs=2", "trainer.cuda_graph=off", output_dir=tmp_path / "plain"
    )
    assert (summary["best_val_loss"], summary["test_acc"]) == (plain["best_val_loss"], plain["test_acc"])
    monkeypatch.setattr(graph_plan, "plan", lambda setting, **kw: graph_plan.Plan(setting, True))
    with pytest.raises(ConfigError, match="trainer.cuda_graph='on': capturing the step failed"):
        run(
            "data=synthetic",
            "data.num_samples=300",
            "epochs=1",
            "trainer.cuda_graph=on",
            "device=auto",
            output_dir=tmp_path / "on",
        )


def test_compile_mode_default_trains_on_cpu(run, monkeypatch):
    """The compiled model compiles once per shape and grad mode, not once per sampled step: the
    gradient diagnosis puts no forward hooks on it (no dead units), only optimizer step hooks.

    Dynamo traces and AOTAutograd splits the graphs as they would for inductor; only inductor's
    C++ code generation is left out (the `aot_eager` backend): a cold inductor cache spends ~15 s
    building its CPU toolchain checks before the first kernel. tests/test_gpu.py compiles with
    inductor on CUDA."""
    import csv

    import torch
    import torch._dynamo
    from torch._dynamo.utils import counters

    compiled = []
    real_compile = torch.nn.Module.compile

    def compile_eagerly(self, *args, **kwargs):
        compiled.append((type(self).__name__, args, kwargs))
        real_compile(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_eagerly)
    torch._dynamo.reset()
    counters.clear()
    summary, out = run(
        "data=synthetic", "data.num_samples=300", "epochs=2", "grad_monitor.every_n_steps=2", "trainer.compile=default"
    )
    torch._dynamo.reset()
    assert compiled == [("MLP", (), {"mode": None})]  # torch.compile's default mode, in place
    assert summary["status"] == "completed"
    assert 2 <= counters["stats"]["unique_graphs"] <= 3, dict(counters["stats"])  # full batch, last batch, eval
    with open(out / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert "update_ratio/fc1.weight" in columns and not any(c.startswith("dead_units/") for c in columns)
