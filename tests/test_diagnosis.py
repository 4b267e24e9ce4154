"""The gradient diagnosis: statistics on sampled steps, and the verdict with its advice."""

from __future__ import annotations

import math

import torch

from nettrain.insight.diagnosis import (
    DEAD,
    EXPLODING,
    HEALTHY,
    VANISHING,
    TrainingDiagnostics,
    diagnose,
    plot_gradients,
    weight_names,
)
from nettrain.models import MLP

WEIGHTS = ["fc1.weight", "fc2.weight", "fc3.weight"]


def row(epoch=1, means=(1e-3, 2e-3, 3e-3), norms=(0.5, 0.5, 0.5), ratios=(1e-3, 1e-3, 1e-3), dead=0.0, loss=0.5):
    r = {"epoch": epoch, "train_loss": loss, "dead_units/fc1": dead, "dead_units/fc2": 0.0}
    for name, m, n, u in zip(WEIGHTS, means, norms, ratios):
        r.update({f"grad_mean/{name}": m, f"grad_norm/{name}": n, f"update_ratio/{name}": u})
    return r


def test_healthy_statistics_give_a_healthy_verdict():
    d = diagnose(row(), None, WEIGHTS, lr=1e-3)
    assert d.verdict == HEALTHY and d.findings == []


def test_a_layer_far_below_the_largest_is_vanishing_and_named():
    d = diagnose(row(means=(2e-9, 1e-5, 1e-3)), None, WEIGHTS, lr=1e-3)
    assert d.verdict == VANISHING
    assert d.findings == [
        (
            "vanishing: fc1's gradients are 2e-06 of fc3's: try model.init=kaiming_normal, "
            "model.norm=batchnorm, model.activation=relu or gelu, or fewer layers"
        )
    ]


def test_growth_large_updates_and_nan_are_exploding_with_advice():
    d = diagnose(row(epoch=2, norms=(50, 50, 50)), row(), WEIGHTS, lr=0.5)
    assert d.verdict == EXPLODING
    assert d.findings[0].startswith("exploding: gradient norm grew 100x in one epoch")
    assert "lower lr (now 0.5) or set regularization.grad_clip=1.0" in d.findings[0]
    d = diagnose(row(ratios=(0.8, 1e-3, 1e-3)), None, WEIGHTS, lr=1.0)
    assert d.verdict == EXPLODING and "fc1's weights by 80%" in d.findings[0] and "try lr=0.1" in d.findings[0]
    d = diagnose(row(means=(math.nan, 1e-3, 1e-3), loss=math.nan), None, WEIGHTS, lr=1.0)
    assert d.verdict == EXPLODING and "inf/NaN in fc1" in d.findings[0]


def test_dead_units_name_the_layer():
    d = diagnose(row(dead=0.75), None, WEIGHTS, lr=1e-3)
    assert d.verdict == DEAD
    assert d.findings[0].startswith("dead units: units that never fired this epoch: fc1 (75%)")


def test_sampled_update_ratio_and_dead_units_are_measured():
    torch.manual_seed(0)
    model = MLP((1, 2, 2), 2, hidden=[4])
    with torch.no_grad():
        model.fc1.bias[:2] = -100.0  # two of the four hidden units can never fire
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = {"n": 0}
    diag = TrainingDiagnostics(model, opt, in_forward=lambda: steps["n"] % 2 == 0)
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,))
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps["n"] += 1
    assert diag.ratio_steps == 2  # steps 0 and 2 were sampled
    stats = diag.end_epoch()
    assert stats["dead_units/fc1"] == 0.5
    assert len([k for k in stats if k.startswith("update_ratio/")]) == 4
    assert 0 < stats["update_ratio/fc1.weight"] < 1
    diag.remove()
    assert weight_names(model) == ["fc1.weight", "fc2.weight"]


def test_a_conv_channel_is_one_unit_that_fires_at_any_position_of_any_sample():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    diag = TrainingDiagnostics(model, opt, in_forward=lambda: True)
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, 1.0, -1.0, -1.0]))  # channel 1 fires everywhere
        model[0].weight[2, 0, 1, 1] = 1.0  # channel 2: only where the input passes 1
    x = torch.zeros(3, 1, 5, 5)
    x[2, 0, 3, 3] = 3.0  # one position of one sample: channel 2 fires there and nowhere else
    model(x)
    assert diag.end_epoch()["dead_units/0"] == 0.5  # channels 0 and 3 never fired
    model(torch.zeros(3, 1, 5, 5))
    assert diag.end_epoch()["dead_units/0"] == 0.75  # a new epoch: only channel 1 fired


def test_restored_units_are_added_to_a_copy_not_to_the_loaded_state():
    model = MLP((1, 2, 2), 2, hidden=[4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    diag = TrainingDiagnostics(model, opt, in_forward=lambda: True)
    saved = {
        "ratio_sums": torch.zeros(4, dtype=torch.float64),
        "ratio_steps": 0,
        "fired": {"fc1": torch.zeros(4, dtype=torch.bool)},
    }
    diag.load_state_dict(saved)
    with torch.no_grad():
        model.fc1.bias.fill_(100.0)  # every unit fires
    model(torch.randn(8, 1, 2, 2))
    assert diag.end_epoch()["dead_units/fc1"] == 0.0
    assert not saved["fired"]["fc1"].any()


def test_forward_hooks_are_attached_only_for_sampled_steps():
    """A module with a hook takes torch's slow call path: the probe hooks the activations only
    while the next step is sampled, and still counts every sampled step's units."""
    torch.manual_seed(0)
    model = MLP((1, 2, 2), 2, hidden=[4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = {"n": 0}
    diag = TrainingDiagnostics(  # as the gradient monitor counts: a step is counted after backward
        model, opt, in_forward=lambda: steps["n"] % 3 == 0, after_backward=lambda: (steps["n"] - 1) % 3 == 0
    )
    relu = diag.layers[0][1]
    x, y = torch.randn(16, 1, 2, 2), torch.randint(0, 2, (16,))
    hooked, step_hooked = [], []
    for _ in range(6):
        hooked.append(bool(relu._forward_hooks))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        steps["n"] += 1
        diag.follow_sampling()  # as the gradient monitor tells it each time it counts a step
        step_hooked.append(bool(opt._optimizer_step_pre_hooks) and bool(opt._optimizer_step_post_hooks))
        opt.step()
    assert hooked == [True, False, False, True, False, False]
    assert step_hooked == hooked  # the optimizer's step hooks too: none on a step not sampled
    assert diag.ratio_steps == 2 and "dead_units/fc1" in diag.end_epoch()
    steps["n"] = 0  # a new epoch starts with a sampled step: end_epoch hooks the activations again
    diag.end_epoch()
    assert relu._forward_hooks
    diag.remove()
    assert not relu._forward_hooks and not opt._optimizer_step_pre_hooks


def test_a_skipped_update_before_a_sampled_step_still_hooks_it():
    """fp16: the GradScaler skips optimizer.step() (and its hooks) when gradients overflow; the
    gradient monitor, which counts every step, tells the probe instead."""
    from nettrain.insight.grad_monitor import GradientMonitor

    model = MLP((1, 2, 2), 2, hidden=[4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model.named_parameters(), every_n_steps=2)
    diag = TrainingDiagnostics(model, opt, in_forward=monitor.sampling_next, after_backward=monitor.sampled_last)
    monitor.on_count.append(diag.follow_sampling)
    relu = diag.layers[0][1]
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,))
    hooked = []
    for step in range(4):
        hooked.append(bool(relu._forward_hooks))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        monitor.accumulate()
        if step != 1:  # step 1's update is skipped, as after an fp16 overflow
            opt.step()
        opt.zero_grad()
    assert hooked == [True, False, True, False]
    assert diag.ratio_steps == 2 and "dead_units/fc1" in diag.end_epoch()


def test_the_monitor_tells_the_probe_only_when_sampling_changes_and_the_hooks_follow_every_sample():
    """The gradient monitor calls its listeners on the counts that change what is sampled (3 of
    every_n_steps), not on every step; the probe's hooks are still on for exactly the sampled steps."""
    from nettrain.insight.grad_monitor import GradientMonitor

    model = MLP((1, 2, 2), 2, hidden=[4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    monitor = GradientMonitor(model.named_parameters(), every_n_steps=5)
    diag = TrainingDiagnostics(model, opt, in_forward=monitor.sampling_next, after_backward=monitor.sampled_last)
    told: list[int] = []
    monitor.on_count += [diag.follow_sampling, lambda: told.append(monitor.calls)]
    relu = diag.layers[0][1]
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,))
    forward_hooked, step_hooked = [], []
    for _ in range(23):
        forward_hooked.append(bool(relu._forward_hooks))
        torch.nn.functional.cross_entropy(model(x), y).backward()
        monitor.accumulate()
        step_hooked.append(bool(opt._optimizer_step_pre_hooks))
        opt.step()
        opt.zero_grad()
    sampled = [step % 5 == 0 for step in range(23)]
    assert forward_hooked == sampled and step_hooked == sampled
    assert told == [c for c in range(1, 24) if c % 5 in (0, 1, 2)]
    assert diag.ratio_steps == monitor.steps == 5


def test_the_weight_copy_is_kept_on_a_cpu_and_let_go_elsewhere():
    """On a CPU the copy before a sampled step is reused (a fresh one costs page faults); on any
    other device (here: meta) it is let go after the step, so it is not held while activations peak."""
    for device, kept in (("cpu", True), ("meta", False)):
        model = torch.nn.Linear(3, 2, device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        diag = TrainingDiagnostics(model, opt, in_forward=lambda: True)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        opt.step()
        assert diag.ratio_steps == 1 and bool(diag._before) is kept, device


def test_without_activations_there_are_no_forward_hooks_and_no_dead_units():
    model = MLP((1, 2, 2), 2, hidden=[4])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    diag = TrainingDiagnostics(model, opt, in_forward=lambda: True, activations=False)
    assert not any(m._forward_hooks for m in model.modules())
    loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 2, 2)), torch.randint(0, 2, (8,)))
    loss.backward()
    opt.step()
    stats = diag.end_epoch()
    assert "update_ratio/fc1.weight" in stats and not any(k.startswith("dead_units/") for k in stats)


def test_update_ratio_is_the_mean_over_sampled_steps():
    model = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    diag = TrainingDiagnostics(model, opt, in_forward=lambda: True)
    model.weight.grad = torch.full_like(model.weight, 0.5)  # w: 1 -> 0.5, ratio 0.5
    opt.step()
    model.weight.grad = torch.full_like(model.weight, 0.25)  # w: 0.5 -> 0.25, ratio 0.5
    opt.step()
    assert math.isclose(diag.end_epoch()["update_ratio/weight"], 0.5, rel_tol=1e-9)


def test_gradients_png_is_written(tmp_path):
    rows = [row(epoch=1), row(epoch=2)]
    assert plot_gradients(rows, tmp_path / "plots" / "gradients.png")
    assert (tmp_path / "plots" / "gradients.png").stat().st_size > 1000
    assert not plot_gradients([{"epoch": 1, "train_loss": 1.0}], tmp_path / "none.png")


# -- through a run ----------------------------------------------------------------------------

QUICK = (
    "data=synthetic",
    "data.num_samples=400",
    "epochs=1",
    "grad_monitor.every_n_steps=1",
    "checkpoint.enabled=false",
)


def test_the_default_simplenet_is_healthy_and_every_statistic_is_recorded(run):
    import csv

    summary, out = run(*QUICK, "plots=true")
    assert summary["diagnosis"]["verdict"] == HEALTHY, summary["diagnosis"]
    with open(out / "metrics.csv") as f:
        row = next(csv.DictReader(f))
    for key in ("grad_mean/fc1.weight", "update_ratio/fc1.weight", "dead_units/fc1"):
        assert 0 <= float(row[key]) < 1, key
    assert 0 < float(row["grad_norm/fc1.weight"]) < 100
    assert (out / "plots" / "gradients.png").stat().st_size > 1000


def test_a_deep_sigmoid_mlp_is_flagged_vanishing(run, capsys):
    summary, _ = run(*QUICK, "model.hidden=[64,64,64,64,64,64,64]", "model.activation=sigmoid")
    assert summary["diagnosis"]["verdict"] == VANISHING
    finding = summary["diagnosis"]["findings"][0]
    assert finding.startswith("vanishing: fc") and "of fc8's: try model.init=kaiming_normal" in finding
    assert "epoch 1: vanishing: fc" in capsys.readouterr().out


def test_a_huge_lr_is_flagged_exploding(run):
    summary, _ = run(*QUICK, "lr=1.0")
    assert summary["diagnosis"]["verdict"] == EXPLODING
    assert "lower lr (now 1, try lr=0.1)" in summary["diagnosis"]["findings"][0]


def test_validation_worse_from_the_first_epoch_is_found_only_then():
    from nettrain.insight.diagnosis import OVERFITTING, summary_of, worse_from_the_start

    def history(val, train):
        return [{"epoch": i, "val_loss": v, "train_loss": t, "lr": 0.01} for i, (v, t) in enumerate(zip(val, train), 1)]

    rising = history([2.2, 2.5, 3.0, 3.5], [2.4, 0.2, 0.01, 0.003])
    found = worse_from_the_start(rising)
    assert found.startswith("validation got worse from the first epoch: val_loss 2.2 at epoch 1")
    assert "3.5 at epoch 4" in found and "try a lower lr (now 0.01, try lr=0.001)" in found
    assert worse_from_the_start(history([2.2, 2.0, 2.5, 3.0], [2.4, 1.0, 0.5, 0.1])) is None  # it improved first
    assert worse_from_the_start(history([2.2, 2.5, 3.0], [2.4, 2.5, 2.6])) is None  # nothing learnt at all
    assert worse_from_the_start(history([2.2, 2.5], [2.4, 0.2])) is None  # too few epochs to tell
    assert worse_from_the_start(history([2.2, math.nan, 3.0], [2.4, 1.0, 0.1])) is None
    healthy = diagnose(row(), None, WEIGHTS, lr=1e-3)
    assert summary_of([healthy], found)["verdict"] == OVERFITTING
    assert summary_of([healthy], found)["findings"] == [f"{OVERFITTING}: {found}"]
    dead = diagnose(row(dead=0.75), None, WEIGHTS, lr=1e-3)
    assert summary_of([dead], found)["verdict"] == DEAD  # the gradients' verdict comes first
    assert summary_of([healthy])["verdict"] == HEALTHY
