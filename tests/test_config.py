"""Every YAML option composes and builds; bad settings fail up front with one clear message."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from conftest import CONF, make_cfg
from nettrain.config.schema import Checks, TrainConfig, problems, schema_config, validate
from nettrain.engine.build import build_optimizer
from nettrain.errors import ConfigError
from nettrain.optim.schedulers import LRSchedule, build_schedule

# Every option of every group, found by recursive glob: a new YAML file is covered automatically.
# (conf/hydra/ holds launcher and sweeper presets: tests/test_launchers.py covers those.)
OPTIONS = sorted(
    o
    for o in (p.relative_to(CONF).with_suffix("").as_posix() for p in CONF.glob("*/**/*.yaml"))
    if not o.startswith("hydra/")
)


def test_the_glob_finds_every_group():
    groups = {o.split("/")[0] for o in OPTIONS}
    assert groups == {"model", "optimizer", "scheduler", "regularization", "augment", "data", "loss"}
    named = {
        "loss/cross_entropy",
        "loss/bce_with_logits",
        "loss/mse",
        "model/mlp",
        "model/cnn",
        "optimizer/sgd",
        "optimizer/manual_sgd",
        "optimizer/adam",
        "optimizer/adamw",
        "optimizer/rmsprop",
        "scheduler/none",
        "scheduler/step",
        "scheduler/cosine",
        "scheduler/plateau",
        "regularization/none",
        "regularization/l1",
        "regularization/l2",
        "regularization/dropout",
        "data/mnist_sample",
        "data/mnist",
        "data/fashion_mnist",
        "data/synthetic",
    }
    assert named <= set(OPTIONS)


def data_files(name: str, mnist_root, tmp_path, monkeypatch) -> list[str]:
    """Overrides that point a data option at small files the test writes."""
    import made_data

    if "mnist" in name and name != "mnist_sample":
        return [f"data.root={mnist_root}"]
    if name == "image_folder":
        return [f"data.root={made_data.image_folder(tmp_path / 'imgs', per_class=5)}", "data.cache=false"]
    if name == "csv":
        return [f"data.path={made_data.table(tmp_path / 't.csv', n=40)}", "data.target=label"]
    if name in ("cifar10", "cifar100", "torchvision"):
        made_data.accept_tiny_cifar(monkeypatch)
        made_data.tiny_cifar(tmp_path, "CIFAR100" if name == "cifar100" else "CIFAR10", per_batch=4)
        return [f"data.root={tmp_path}"]
    return []


def loss_data(option: str, tmp_path) -> list[str] | None:
    """Overrides giving a loss option for another task than classification data of its task."""
    import made_data

    if option == "loss/mse":
        path = made_data.table(tmp_path / "r.csv", n=40, task="regression")
        return ["data=csv", f"data.path={path}", "data.target=value", "data.task=regression"]
    if option == "loss/bce_with_logits":
        path = made_data.multilabel_table(tmp_path / "m.csv", n=40)
        return ["data=csv", f"data.path={path}", f"data.target=[{','.join(made_data.LABELS)}]", "data.task=multilabel"]
    return None


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_and_builds(option, mnist_root, tmp_path, monkeypatch):
    from nettrain.data.preprocessing import input_transform
    from nettrain.engine.build import build_augment, build_data, build_model

    group, name = option.split("/", 1)
    overrides = [f"{group}={name}"]
    if group == "data":
        overrides += data_files(name, mnist_root, tmp_path, monkeypatch)
    elif (task_data := loss_data(option, tmp_path)) is not None:  # a loss for another task: its data
        overrides += task_data
    elif group == "augment":  # image transforms: image data
        overrides += ["data=image_folder", *data_files("image_folder", mnist_root, tmp_path, monkeypatch)]
    else:
        overrides += ["data=synthetic", "data.num_samples=200"]
    cfg = make_cfg(*overrides)
    validate(cfg)
    data, _ = build_data(cfg)
    assert cfg.model.sync_bn is False  # read by the distributed wrapper, not the model
    model = build_model(cfg, data, torch.device("cpu"))
    x = data.train.x[:4]
    transform = input_transform(data.meta, x, torch.device("cpu"))  # uint8 images: normalised per batch
    out = model(transform(x) if transform else x)
    assert out.shape == (4, data.num_classes)
    optimizer = build_optimizer(cfg, model, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.lr
    schedule = build_schedule(optimizer, OmegaConf.to_container(cfg.scheduler, resolve=True), 10, cfg.epochs)
    assert isinstance(schedule, LRSchedule)
    assert (schedule.main is None) == (cfg.scheduler._target_ is None)
    augment = build_augment(cfg, data, torch.Generator().manual_seed(0))
    if augment is not None:  # the training batches' augmentation keeps their shape
        x = transform(x) if transform else x
        assert augment(x, data.train.y[:4])[0].shape == x.shape


def test_top_level_keys_reach_their_users():
    cfg = make_cfg("optimizer=adam", "lr=0.02", "regularization=l2", "regularization.dropout=0.2")
    assert cfg.optimizer.lr == 0.02
    assert cfg.optimizer.weight_decay == 1e-4
    assert cfg.model.dropout == 0.2
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (0.02, 64, 100)
    assert OmegaConf.load(CONF / "train.yaml").device == "auto"  # (the tests pin device=cpu)


def test_defaults_are_the_tutorials():
    cfg = make_cfg()
    assert cfg.model._target_ == "nettrain.models.MLP" and list(cfg.model.hidden) == [256]
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.lr == 1e-3 and cfg.batch_size == 64
    assert cfg.early_stopping.patience == 3 and cfg.early_stopping.monitor == "val_loss"
    step = make_cfg("scheduler=step").scheduler
    assert (step.step_size, step.gamma) == (30, 0.1)
    assert make_cfg("regularization=l2").regularization.weight_decay == 1e-4
    assert make_cfg("regularization=dropout").regularization.dropout == 0.5
    assert make_cfg("regularization=l1").regularization.l1 == 1e-5


def test_wrong_type_fails_at_composition_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("lr=abc")
    assert isinstance(info.value.__cause__, ValidationError)
    assert "full_key: lr" in str(info.value.__cause__)
    with pytest.raises(ConfigCompositionException) as info:
        make_cfg("early_stopping.patience=soon")
    assert "full_key: early_stopping.patience" in str(info.value.__cause__)


def test_validation_reports_every_problem_at_once():
    cfg = make_cfg(
        "lr=-1",
        "batch_size=0",
        "model.activation=swish",
        "regularization.dropout=1.5",
        "scheduler.warmup_ratio=2",
        "early_stopping.monitor=train_loss",
        "device=tpu",
    )
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value) == "\n".join(
        [
            "Invalid config (7 problems):",
            "  - lr=-1.0: must be a number > 0",
            "  - batch_size=0: must be an integer in 1..65536",
            "  - device='tpu': allowed: auto, cpu, cuda, cuda:N, mps",
            "  - model.activation='swish': allowed: relu, gelu, tanh, sigmoid, leaky_relu, silu",
            "  - regularization.dropout=1.5: must be a probability in [0, 1)",
            "  - scheduler.warmup_ratio=2: must be a fraction in [0, 1); 0 = no warmup",
            "  - early_stopping.monitor='train_loss': not reported for data.task='classification'; "
            "allowed: val_loss, val_acc, or val_NAME with NAME in metrics",
        ]
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.norm=groupnorm"], "model.norm='groupnorm': allowed: none, batchnorm, layernorm"),
        (
            ["model.init=orthogonal"],
            "model.init='orthogonal': allowed: default, kaiming_normal, kaiming_uniform, xavier_normal, xavier_uniform",
        ),
        (["model.hidden=[256,0]"], "model.hidden=[256, 0]: must be a list of layer widths"),
        (["optimizer=sgd", "optimizer.nesterov=true"], "optimizer.nesterov=True: needs optimizer.momentum > 0"),
        (
            ["data.val_fraction=0.6", "data.test_fraction=0.5"],
            "data.val_fraction + data.test_fraction = 1.1: must be < 1",
        ),
        (["data=mnist", "data.name=CIFAR10"], "data.name='CIFAR10': allowed: MNIST, FashionMNIST, KMNIST"),
        (["scheduler.interval=batch"], "scheduler.interval='batch': allowed: epoch, step"),
        (["regularization.grad_clip=0"], "regularization.grad_clip=0.0: must be null (off) or a number > 0"),
        (
            ["scheduler=plateau", "scheduler.interval=step"],
            "scheduler.interval='step': ReduceLROnPlateau steps on the validation loss; allowed: epoch",
        ),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(*overrides))
    assert message in str(info.value)


def test_a_valid_config_has_no_problems():
    assert problems(make_cfg()) == []
    assert (
        problems(
            make_cfg(
                "model=cnn",
                "scheduler=cosine",
                "regularization=l2",
                "regularization.grad_clip=1.0",
                "trainer.precision=bf16",
                "device=cuda:1",
            )
        )
        == []
    )
    assert problems(make_cfg("lr=0")) == ["lr=0.0: must be a number > 0"]


def test_checks_read_resolved_values_and_a_section_that_does_not_resolve_is_read_key_by_key(monkeypatch):
    monkeypatch.delenv("NETTRAIN_TEST_UNSET", raising=False)
    cfg = make_cfg("data=synthetic", "regularization.dropout=1.5", "data.val_fraction=0.2", "model.activation=swish")
    OmegaConf.set_struct(cfg, False)
    cfg.scheduler.warmup_ratio = "${regularization.dropout}"  # an interpolation into another section
    cfg.data.num_samples = "???"  # not set: no range to check
    cfg.model.note = "${oc.env:NETTRAIN_TEST_UNSET}"  # the section fails to resolve as a whole
    checks = Checks(cfg)
    assert checks.get("scheduler.warmup_ratio") == 1.5
    assert checks.get("data.num_samples") is None and checks.get("data.val_fraction") == 0.2
    assert "num_samples" not in checks.get("data")  # a key left ??? is absent, as OmegaConf's `in` has it
    assert checks.get("model.activation") == "swish"  # read node by node, past the key that fails
    assert checks.get("data.no_such_key") is None and checks.get("no_such_section.key") is None
    assert isinstance(checks.get("optimizer"), dict)
    found = problems(cfg)
    assert "regularization.dropout=1.5: must be a probability in [0, 1)" in found
    assert "scheduler.warmup_ratio=1.5: must be a fraction in [0, 1); 0 = no warmup" in found
    assert any(line.startswith("model.activation='swish': allowed:") for line in found)


def test_the_schema_is_built_once_and_each_caller_gets_its_own_copy():
    from nettrain.run.resume import schema_defaults

    fresh = OmegaConf.to_container(OmegaConf.structured(TrainConfig))
    first = schema_config()
    assert OmegaConf.to_container(first) == fresh
    first.trainer.accumulate_steps = 99
    assert OmegaConf.to_container(schema_config()) == fresh
    defaults = schema_defaults()
    assert defaults["trainer.accumulate_steps"] == 1
    defaults["trainer.accumulate_steps"] = 99
    assert schema_defaults()["trainer.accumulate_steps"] == 1


def test_unknown_keyword_is_a_config_error_naming_the_group():
    cfg = make_cfg("+optimizer.bogus=1")
    with pytest.raises(ConfigError) as info:
        build_optimizer(cfg, torch.nn.Linear(2, 2), torch.device("cpu"))
    assert "optimizer: could not build torch.optim.Adam" in str(info.value)
    assert "bogus" in str(info.value)
