"""Fine-tuning: frozen parameters (model.freeze, model.unfreeze_at_epoch), per-prefix learning rates
(optimizer.param_groups), no weight decay on norms and biases (optimizer.decay_norm_and_bias), and
model.pretrained for torchvision models; resume stays exact with each."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import QUIET, cli, make_cfg
from nettrain.commands.train import train
from nettrain.config.schema import problems
from nettrain.engine.build import build_run
from nettrain.engine.evaluation import evaluate_checkpoint
from nettrain.engine.loop import StopRequest
from nettrain.errors import ConfigError
from nettrain.models.from_torchvision import cache_path, torchvision_model
from nettrain.run.checkpoint import load_checkpoint
from nettrain.run.reproducibility import seed_everything

CPU = torch.device("cpu")
SMALL = ["data=synthetic", "data.num_samples=200", "model.hidden=[32,16]", "model.norm=batchnorm"]
DECAY_FIXTURE = Path(__file__).parent / "fixtures" / "weight-decay-2026-12" / "run"


def initial_weights(*overrides: str) -> dict[str, torch.Tensor]:
    """The model's weights as a run with these overrides starts training (seeded, then built)."""
    cfg = make_cfg(*overrides)
    seed_everything(cfg.seed)
    return {k: v.clone() for k, v in build_run(cfg, CPU).state.model.state_dict().items()}


def rows(run: Path) -> list[dict]:
    """metrics.csv without the timing columns."""
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("epoch_time_s", "samples_per_s")} for r in csv.DictReader(f)]


def losses(run: Path) -> list[tuple[str, ...]]:
    """Each epoch's losses, accuracy and lr from metrics.csv (the gradient statistics' last digits
    depend on the thread count)."""
    return [(r["train_loss"], r["val_loss"], r["val_acc"], r["lr"]) for r in rows(run)]


# -- freezing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optimizer", [["optimizer=adam"], ["optimizer=adamw"], ["optimizer=sgd", "optimizer.momentum=0.9", "lr=0.05"]]
)
def test_frozen_parameters_are_bit_identical_after_training(tmp_path, optimizer):
    """Weight decay on every parameter and momentum: a frozen tensor still gets no update."""
    args = [
        *SMALL,
        *optimizer,
        "epochs=2",
        "regularization.weight_decay=0.1",
        "optimizer.decay_norm_and_bias=true",
        "model.freeze=[fc1,bn2]",
    ]
    before = initial_weights(*args)
    summary = train(make_cfg(*args), output_dir=tmp_path / "run")
    assert summary["status"] == "completed" and summary["epochs_run"] == 2
    after = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    for name in ("fc1.weight", "bn2.weight", "bn2.bias"):
        assert torch.equal(after[name], before[name]), name
    for name in ("fc2.weight", "bn1.weight", "fc3.weight", "fc3.bias"):  # the control: the rest trained
        assert not torch.equal(after[name], before[name]), name
    # BatchNorm statistics are buffers, not parameters: a frozen norm layer still tracks them in training
    assert not torch.equal(after["bn2.running_mean"], before["bn2.running_mean"])


def test_a_prefix_matches_at_a_dot_and_one_that_matches_nothing_names_what_exists(tmp_path):
    cfg = make_cfg("data=synthetic", "data.num_samples=200", "model.hidden=[16,16,16,16,16,16,16,16,16,16]")
    cfg.model.freeze = ["fc1"]
    model = build_run(cfg, CPU).state.model
    frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["fc1.bias", "fc1.weight"]  # not fc10 nor fc11
    cfg.model.freeze = ["fc1", "backbone."]
    with pytest.raises(ConfigError) as err:
        build_run(cfg, CPU)
    assert err.value.problems == [
        "model.freeze=['fc1', 'backbone.']: 'backbone.' matches no parameter of the model; allowed: "
        "parameter-name prefixes, which start with one of fc1, fc2, fc3, fc4, fc5, fc6, fc7, fc8, fc9, fc10, fc11 "
        "(nettrain-train dry_run=true shows the model)"
    ]
    done = cli(*QUIET, "data=synthetic", "data.num_samples=200", "optimizer.param_groups={head:1e-4}", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "optimizer.param_groups=['head']: 'head' matches no parameter of the model" in done.stderr
    assert "start with one of fc1, fc2" in done.stderr


def test_bad_fine_tuning_settings_are_named_up_front():
    cfg = make_cfg(
        "model.freeze=[fc1,'']",
        "model.unfreeze_at_epoch=1",
        "optimizer.param_groups={fc1:0}",
        "optimizer.decay_norm_and_bias=sometimes",
    )
    found = problems(cfg)
    assert "model.freeze=['fc1', '']: must be a list of parameter-name prefixes, e.g. [fc1] or [layer1,layer2]" in found
    assert (
        "model.unfreeze_at_epoch=1: must be null (frozen for the whole run) or an epoch >= 2 "
        "(the frozen parameters train from it on)"
    ) in found
    assert any(
        p.startswith("optimizer.param_groups={'fc1': 0}: must be a mapping of parameter-name prefix") for p in found
    )
    assert "optimizer.decay_norm_and_bias='sometimes': allowed: true, false" in found
    lonely = problems(make_cfg("model.unfreeze_at_epoch=3"))
    assert lonely == [
        "model.unfreeze_at_epoch=3: there is nothing to unfreeze; give model.freeze=[prefixes] too, or leave it null"
    ]
    assert (
        problems(make_cfg("model.freeze=[fc1]", "model.unfreeze_at_epoch=2", "optimizer.param_groups={fc2:1e-4}")) == []
    )


# -- parameter groups: per-prefix learning rates, no decay on norms and biases ----------------------


def groups_by_name(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list[tuple[list[str], float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [([names[id(p)] for p in g["params"]], g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


def test_the_per_prefix_lr_and_the_undecayed_norms_and_biases_show_in_the_optimizer_groups():
    args = [*SMALL, "optimizer=adamw", "regularization.weight_decay=0.1", "model.freeze=[fc1]"]
    run = build_run(make_cfg(*args, "optimizer.param_groups={fc2:1e-4,fc3.bias:5e-4}"), CPU)
    assert groups_by_name(run.state.optimizer, run.state.model) == [
        (["fc1.weight", "fc3.weight"], 1e-3, 0.1),  # the top-level lr first; frozen fc1 is in its group
        (["bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"], 1e-3, 0.0),  # norms: no decay
        (["fc2.weight"], 1e-4, 0.1),  # fc2 (no bias: BatchNorm follows it)
        (["fc3.bias"], 5e-4, 0.0),  # the longest prefix wins; a bias: no decay
    ]
    decay_all = build_run(make_cfg(*args, "optimizer.decay_norm_and_bias=true"), CPU)
    assert [(len(n), lr, wd) for n, lr, wd in groups_by_name(decay_all.state.optimizer, decay_all.state.model)] == [
        (8, 1e-3, 0.1)  # torch's rule: one group, everything decays
    ]
    no_decay = build_run(make_cfg(*SMALL, "optimizer=adamw", "regularization.weight_decay=0"), CPU)
    assert len(no_decay.state.optimizer.param_groups) == 1  # nothing to split without weight decay


@pytest.mark.parametrize(
    "scheduler",
    [
        ["scheduler=step", "scheduler.step_size=1", "scheduler.warmup_ratio=0.2"],
        ["scheduler=cosine", "scheduler.interval=step"],
        ["scheduler=plateau", "scheduler.patience=0"],
    ],
)
def test_each_schedule_scales_every_groups_own_lr(scheduler):
    cfg = make_cfg(*SMALL, "epochs=4", "optimizer.param_groups={fc2:1e-4,fc3:3e-2}", *scheduler)
    run = build_run(cfg, CPU)
    optimizer, schedule = run.state.optimizer, run.state.schedule
    base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    assert base == [1e-3, 1e-4, 3e-2]
    factors = set()
    for epoch in range(3):
        for _ in range(2):
            optimizer.step()
            schedule.after_step()
        schedule.after_epoch(1.0)  # a flat validation loss: the plateau scheduler reduces too
        ratios = [g["lr"] / b for g, b in zip(optimizer.param_groups, base)]
        assert ratios == pytest.approx([ratios[0]] * 3, rel=1e-12), (epoch, ratios)
        factors.add(round(ratios[0], 12))
    assert len(factors) > 1 and min(factors) < 1  # the control: the rates moved, every group's alike


# -- resume stays exact -----------------------------------------------------------------------------

RESUMED = [
    *SMALL,
    "data.num_samples=600",
    "epochs=3",
    "early_stopping.enabled=false",
    "optimizer=adamw",
    "regularization.weight_decay=0.1",
    "model.freeze=[fc1,bn1]",
    "model.unfreeze_at_epoch=2",
    "optimizer.param_groups={fc1:3e-4,fc3:2e-3}",
    "scheduler=step",
    "scheduler.step_size=1",
    "scheduler.warmup_ratio=0.1",
]
STEPS_PER_EPOCH = 8  # 480 training samples / 64


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run, and the weights it started from."""
    out = tmp_path_factory.mktemp("straight") / "run"
    before = initial_weights(*RESUMED)
    train(make_cfg(*RESUMED), output_dir=out)
    return out, before


def assert_same_run(a: Path, b: Path) -> None:
    assert rows(a) == rows(b)
    wa, wb = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (a, b))
    assert all(torch.equal(wa["model"][k], wb["model"][k]) for k in wa["model"])
    assert wa["optimizer"]["param_groups"] == wb["optimizer"]["param_groups"]
    for key in ("status", "best_epoch", "best_val_loss", "test_loss", "test_acc", "epochs_run"):
        assert json.loads((a / "summary.json").read_text())[key] == json.loads((b / "summary.json").read_text())[key]


@pytest.mark.parametrize(
    "stop_after",
    [3, STEPS_PER_EPOCH + 3, 2 * STEPS_PER_EPOCH + 3],
    ids=["before-the-unfreeze-epoch", "inside-the-unfreeze-epoch", "after-the-unfreeze-epoch"],
)
def test_resume_with_freezing_and_groups_is_bit_identical(straight, tmp_path, stop_after):
    reference, before = straight
    out = tmp_path / "run"
    train(make_cfg(*RESUMED), output_dir=out, stop=StopRequest(after_steps=stop_after))
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    frozen = ("fc1.weight", "bn1.weight", "bn1.bias")
    if stop_after <= STEPS_PER_EPOCH:  # still in epoch 1: the frozen tensors have not moved
        assert all(torch.equal(saved["model"][k], before[k]) for k in frozen)
    else:
        assert not any(torch.equal(saved["model"][k], before[k]) for k in frozen)
    train(make_cfg(*RESUMED, f"resume={out}"), output_dir=out)
    assert_same_run(reference, out)
    final = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    assert not torch.equal(final["fc1.weight"], before["fc1.weight"])  # unfrozen at epoch 2, it trained


def test_a_fine_tuned_run_evaluates_without_its_fine_tuning_keys_reaching_the_model(straight):
    """model.freeze and unfreeze_at_epoch are nettrain's keys: nettrain-eval rebuilds the model without them."""
    reference, _ = straight
    result = evaluate_checkpoint(reference)
    summary = json.loads((reference / "summary.json").read_text())
    assert result["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-6)


def test_a_resume_may_not_change_the_fine_tuning_settings(straight, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(*RESUMED), output_dir=out, stop=StopRequest(after_steps=3))
    with pytest.raises(ConfigError, match=r"model.unfreeze_at_epoch: 2 -> 3"):
        train(make_cfg(*RESUMED, "model.unfreeze_at_epoch=3", f"resume={out}"), output_dir=out)


# -- runs saved before decay_norm_and_bias ---------------------------------------------------------


def test_a_run_saved_before_the_norm_rule_reruns_with_decay_on_everything(tmp_path):
    """Its saved config lacks optimizer.decay_norm_and_bias: it re-runs as it ran (every parameter
    decayed), not with today's default; the control shows the default would change its losses."""
    saved = tmp_path / "old"
    shutil.copytree(DECAY_FIXTURE, saved)
    assert "decay_norm_and_bias" not in (saved / ".hydra" / "config.yaml").read_text()
    config = ["--config-dir", str(saved / ".hydra"), "--config-name", "config"]
    done = cli(*config, "hydra.run.dir=again", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert losses(tmp_path / "again") == losses(saved)  # the same losses, bit for bit
    control = cli(*config, "+optimizer.decay_norm_and_bias=false", "hydra.run.dir=control", cwd=tmp_path)
    assert control.returncode == 0, control.stderr
    assert losses(tmp_path / "control") != losses(saved)


# -- model.pretrained ------------------------------------------------------------------------------

TINY_VISION = "squeezenet1_1"  # 1.2 M parameters: the smallest torchvision classifier with weights


def test_pretrained_reads_torchvisions_cache_and_offline_says_which_file_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from torchvision.models import get_model_weights

    cached = cache_path(get_model_weights(TINY_VISION).DEFAULT.url)
    args = [
        *QUIET,
        "model=torchvision",
        f"model.name={TINY_VISION}",
        "model.pretrained=true",
        "data=synthetic",
        "data.num_samples=40",
        "data.input_shape=[3,32,32]",
        "data.num_classes=4",
        "dry_run=true",
    ]
    done = cli(*args, cwd=tmp_path, env_extra={"TORCH_HOME": str(tmp_path / "torch")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"model.pretrained=true: {TINY_VISION}'s weights" in done.stderr
    assert f"no file {cached}" in done.stderr and "model.download=true" in done.stderr
    reference = torchvision_model((3, 32, 32), 1000, TINY_VISION)  # stands for torchvision's file
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model = torchvision_model((3, 32, 32), 4, TINY_VISION, pretrained=True)
    assert torch.equal(model.features[0].weight, reference.features[0].weight)
    done = cli(*args, cwd=tmp_path, env_extra={"TORCH_HOME": str(tmp_path / "torch")})
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError, match="model.pretrained=true and model.weights='IMAGENET1K_V1': choose one"):
        torchvision_model((3, 32, 32), 4, TINY_VISION, weights="IMAGENET1K_V1", pretrained=True)


def test_help_lists_the_fine_tuning_keys(tmp_path):
    shown = cli("--help", cwd=tmp_path).stdout
    for key in ("model.freeze", "model.unfreeze_at_epoch", "optimizer.param_groups", "optimizer.decay_norm_and_bias"):
        assert key in shown, key
    assert "parameter-name prefixes that do not train" in shown
    vision = cli("model=torchvision", "--help", cwd=tmp_path).stdout
    assert "model.pretrained" in vision and "torchvision's DEFAULT weights" in vision


@pytest.mark.slow
def test_two_processes_unfreeze_like_one(tmp_path):
    """Under torchrun the wrapper is rebuilt at the unfreeze: the unfrozen gradients are averaged
    over the ranks, so 2 gloo processes train what 1 process trains."""
    from torchrun import workers

    args = [
        "data=synthetic",
        "data.num_samples=400",
        "epochs=2",
        "early_stopping.enabled=false",
        "model.freeze=[fc1]",
        "model.unfreeze_at_epoch=2",
        "optimizer=sgd",  # an update linear in the gradient: the ranks' rounding stays small
        "lr=0.1",
        "console.show_config=false",
        "console.show_model=false",
        "plots=false",
    ]
    proc = workers("nettrain-train", *args, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "epoch 2: the parameters of model.freeze=['fc1'] train from here on" in proc.stdout
    initial = initial_weights(*args)
    train(make_cfg(*args), output_dir=tmp_path / "one")
    one, two = (load_checkpoint(tmp_path / r / "checkpoints" / "last.pt")["model"] for r in ("one", "two"))
    for name in ("fc1.weight", "fc2.weight"):
        assert torch.allclose(one[name], two[name], rtol=1e-5, atol=1e-7), name  # trained: moved by ~1e-3
        assert not torch.allclose(one[name], initial[name], rtol=1e-5, atol=1e-7), name
    for a, b in zip(losses(tmp_path / "one"), losses(tmp_path / "two")):
        assert [float(v) for v in b] == pytest.approx([float(v) for v in a], rel=1e-5)
