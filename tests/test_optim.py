"""Optimizers and learning-rate schedules: the tutorial's update rule, weight decay, StepLR,
warmup over the first 5% of steps, cosine and plateau."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from conftest import make_cfg
from nettrain.engine.build import build_optimizer
from nettrain.optim import ManualSGD
from nettrain.optim.schedulers import LRSchedule, build_schedule


def _two_models(seed=0):
    torch.manual_seed(seed)
    a = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    b = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))
    b.load_state_dict(a.state_dict())
    return a, b


def _train(model, optimizer, steps=20):
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_manual_sgd_is_the_tutorials_update():
    a, b = _two_models()
    x, y = torch.randn(8, 20), torch.randint(0, 3, (8,))
    nn.functional.cross_entropy(a(x), y).backward()
    nn.functional.cross_entropy(b(x), y).backward()
    for param in a.parameters():  # the tutorial, verbatim
        param.data -= 0.01 * param.grad
    ManualSGD(b.parameters(), lr=0.01).step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-4])
def test_manual_sgd_matches_torch_sgd(weight_decay):
    # lr a power of two: lr * grad is exact, so the tutorial's two-step update and torch's fused
    # multiply-add round identically and the weights are bit-identical.
    a, b = _two_models()
    _train(a, ManualSGD(a.parameters(), lr=2**-6, weight_decay=weight_decay))
    _train(b, torch.optim.SGD(b.parameters(), lr=2**-6, weight_decay=weight_decay))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    # any other lr: equal within float32 rounding
    a, b = _two_models()
    _train(a, ManualSGD(a.parameters(), lr=0.01, weight_decay=weight_decay))
    _train(b, torch.optim.SGD(b.parameters(), lr=0.01, weight_decay=weight_decay))
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, rtol=0, atol=1e-6)


def test_manual_sgd_skips_params_without_grad():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    ManualSGD([p, q], lr=0.5).step()
    assert torch.equal(p.data, torch.full((3,), 0.5)) and torch.equal(q.data, torch.ones(3))


@pytest.mark.parametrize("optimizer", ["sgd", "manual_sgd", "adam", "adamw", "rmsprop"])
def test_l2_weight_decay_reaches_every_optimizer(optimizer):
    cfg = make_cfg(f"optimizer={optimizer}", "regularization=l2")
    opt = build_optimizer(cfg, nn.Linear(2, 2), torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]  # the weight; the bias (no decay)
    none = build_optimizer(make_cfg(f"optimizer={optimizer}"), nn.Linear(2, 2), torch.device("cpu"))
    assert [g["weight_decay"] for g in none.param_groups] == [0.0]


def test_weight_decay_shrinks_weights():
    a, b = _two_models()
    zero = torch.zeros(8, 20)
    for model, wd in ((a, 0.0), (b, 0.1)):
        opt = ManualSGD(model.parameters(), lr=0.1, weight_decay=wd)
        for _ in range(10):  # zero inputs and zero loss gradient on the first layer's weights
            opt.zero_grad()
            (model(zero).sum() * 0).backward()
            opt.step()
    assert torch.equal(a[0].weight, _two_models()[0][0].weight)
    assert torch.allclose(b[0].weight, a[0].weight * (1 - 0.1 * 0.1) ** 10)


def _schedule(*overrides, steps_per_epoch=10, epochs=None):
    cfg = make_cfg(*overrides)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=cfg.lr)
    node = OmegaConf.to_container(cfg.scheduler, resolve=True)
    return build_schedule(opt, node, steps_per_epoch, epochs or cfg.epochs)


def _run_epochs(schedule: LRSchedule, epochs: int, steps_per_epoch: int, val_loss=lambda e: 1.0):
    per_step, per_epoch = [], []
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            per_step.append(schedule.lr)  # the lr this step trains with
            schedule.optimizer.step()
            schedule.after_step()
        per_epoch.append(schedule.lr)
        schedule.after_epoch(val_loss(epoch))
    return per_step, per_epoch


def test_steplr_decays_by_gamma_every_30_epochs():
    schedule = _schedule("scheduler=step", "lr=0.1", steps_per_epoch=2)
    _, per_epoch = _run_epochs(schedule, 65, 2)
    assert per_epoch[0] == per_epoch[29] == pytest.approx(0.1)
    assert per_epoch[30] == per_epoch[59] == pytest.approx(0.01)
    assert per_epoch[60] == pytest.approx(0.001)


def test_warmup_ramps_linearly_over_the_first_5_percent_of_steps():
    # 100 epochs x 10 steps = 1000 steps; 5% = the first 50 steps
    schedule = _schedule("scheduler.warmup_ratio=0.05", "lr=0.1")
    assert schedule.warmup_steps == 50
    per_step, _ = _run_epochs(schedule, 10, 10)
    expected = [0.1 * (k + 1) / 51 for k in range(51)]
    assert per_step[:51] == pytest.approx(expected)
    assert all(a < b for a, b in zip(per_step[:51], per_step[1:51]))
    assert per_step[50:] == pytest.approx([0.1] * 50)


def test_warmup_chains_with_steplr():
    schedule = _schedule(
        "scheduler=step",
        "scheduler.warmup_ratio=0.05",
        "scheduler.step_size=10",
        "lr=0.1",
        "epochs=40",
        steps_per_epoch=10,
    )
    assert schedule.warmup_steps == 20
    per_step, per_epoch = _run_epochs(schedule, 12, 10)
    assert per_step[0] == pytest.approx(0.1 / 21) and per_step[20] == pytest.approx(0.1)
    assert per_epoch[9] == pytest.approx(0.1) and per_epoch[10] == pytest.approx(0.01)


def test_cosine_anneals_to_zero_over_the_run():
    schedule = _schedule("scheduler=cosine", "lr=0.1", "epochs=10")
    _, per_epoch = _run_epochs(schedule, 10, 1)
    assert per_epoch[0] == pytest.approx(0.1)
    assert per_epoch[5] == pytest.approx(0.05)
    assert per_epoch == sorted(per_epoch, reverse=True)


def test_plateau_cuts_the_lr_when_val_loss_stalls():
    schedule = _schedule("scheduler=plateau", "lr=0.1")
    losses = [1.0, 0.9, 0.9, 0.9, 0.9]
    _, per_epoch = _run_epochs(schedule, 5, 1, val_loss=lambda e: losses[e])
    assert per_epoch[:4] == pytest.approx([0.1] * 4)  # patience 1: the second flat epoch triggers the cut
    assert per_epoch[4] == pytest.approx(0.01)


def test_schedule_state_round_trips():
    a = _schedule("scheduler=step", "scheduler.warmup_ratio=0.05", "lr=0.1")
    _run_epochs(a, 3, 10)
    b = _schedule("scheduler=step", "scheduler.warmup_ratio=0.05", "lr=0.1")
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
