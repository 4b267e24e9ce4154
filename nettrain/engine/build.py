"""Building a run: everything that turns a composed config into objects.

The device, the data and its batches, the model, the loss, the optimizer (with fused kernels
where they exist), mixed precision, the learning-rate schedule, early stopping and the gradient
monitor. `build_run` puts them together into a :class:`Run` whose `state` (a TrainState) is
what the loop trains and what checkpoints save. Each `build_*` step can be used on its own:
`nettrain-eval` and the tests build just the data and the model.

A component that cannot be built from its config becomes a ConfigError that names the group and
the target, never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from nettrain.config import graph_plan as capture
from nettrain.config import trust as trust_lib
from nettrain.config import usermodules
from nettrain.config.schema import (
    FITTING_LOSSES,
    TASKS,
    image_augment_settings,
    metric_mode,
    plain,
    schema_config,
    validate,
)
from nettrain.data import Batches, DataSplits, Split
from nettrain.data.augment import Augment, ImageAugment, chained
from nettrain.data.preprocessing import PreprocessingRecord, input_transform
from nettrain.data.tabular import EmbeddedInputs
from nettrain.engine import cuda_graph, distributed, finetune
from nettrain.engine.accumulate import Accumulation, optimizer_steps
from nettrain.engine.balance import (
    ClassWeightedLoss,
    ClassWeights,
    balanced_weights,
    class_counts,
    loss_weights,
    sample_weights,
)
from nettrain.engine.distributed import resolve_device
from nettrain.engine.early_stopping import EarlyStopping
from nettrain.engine.ema import EMA, inference_weights
from nettrain.engine.precision import Precision
from nettrain.engine.state import TrainState
from nettrain.engine.steps import StepValidations
from nettrain.errors import CheckpointError, ConfigError
from nettrain.insight import loggers
from nettrain.insight.diagnosis import Diagnostician, Thresholds, TrainingDiagnostics, weight_names
from nettrain.insight.grad_monitor import GradientMonitor
from nettrain.insight.memory import data_bytes, estimate
from nettrain.optim import schedulers
from nettrain.run import launch
from nettrain.run.folder import in_multirun

FUSED_OPTIMIZERS = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


@contextlib.contextmanager
def building(group: str, target: str | None, context: str = "", node: Any = None) -> Iterator[None]:
    """Turn a failure to build `target` of config group `group` into a ConfigError naming both
    (and `context`, e.g. the data the model is built for); a target that cannot be imported is
    explained: which module, where it was looked for, the fix.

    First, the modules of your own that `target` and the `_target_`s nested in `node` name are
    imported from the working directory where that is where they are (nettrain/config/usermodules.py):
    here, just before building, so only after a file's config has passed its trust check, and in
    every process that builds (torchrun ranks, sweep jobs)."""
    for name in dict.fromkeys([target, *usermodules.targets_in(node)]):
        problem = usermodules.load_problem(name) if name else None
        if problem:
            raise ConfigError([f"{group}: {problem}"])
    try:
        yield
    except (InstantiationException, TypeError, ValueError, ImportError) as exc:
        if isinstance(exc, ConfigError):
            raise
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        if isinstance(cause, ImportError) and target:
            problem = usermodules.import_problem(target)
            if problem:
                raise ConfigError([f"{group}: {problem}"]) from exc
        raise ConfigError([f"{group}: could not build {target}{context}: {cause}"]) from exc


def instantiate(node: Any, group: str, *call_args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, then call the partial with call_args if any; a failure becomes a
    config error that names the group and the target."""
    with building(group, node.get("_target_"), node=node):
        built = hydra_instantiate(node, **kwargs)
        return built(*call_args) if call_args else built


def fused_kwargs(target: str, device: torch.device, setting: str = "auto") -> dict[str, bool]:
    """`fused=True` for torch optimizers with fused kernels: on CUDA under `auto`, always under
    `on`; nothing (torch's default) otherwise, so CPU runs keep their exact arithmetic."""
    if target in FUSED_OPTIMIZERS and (setting == "on" or (setting == "auto" and device.type == "cuda")):
        return {"fused": True}
    return {}


# data keys nettrain reads itself (the image options' augmentation), not passed to the data's _target_
AUGMENT_KEYS = ("augment", "crop_padding", "mix", "mix_alpha")
SAMPLER_KEY = "sampler"  # data.sampler: the training order (build_class_weights), read by nettrain
IMAGE_FOLDER = "nettrain.data.image_folder.image_folder"


def build_data(cfg: DictConfig) -> tuple[DataSplits, dict[str, Any]]:
    """The data splits, and the loader settings nettrain reads itself (in_memory, num_workers)."""
    data_node = plain(cfg.data)
    loader = {"in_memory": data_node.pop("in_memory", True), "num_workers": data_node.pop("num_workers", 0)}
    for key in (*AUGMENT_KEYS, SAMPLER_KEY):
        data_node.pop(key, None)
    if data_node.get("_target_") == IMAGE_FOLDER:  # in_memory=false: its files are decoded per batch
        data_node["in_memory"] = loader["in_memory"]
    return instantiate(data_node, "data"), loader


def build_augment(cfg: DictConfig, data: DataSplits, generator: torch.Generator):
    """The training batches' on-device augmentation (nettrain/data/augment.py) drawing from the
    data generator: augment=... (torchvision's transforms, per image), then the data option's
    flips, crops and mixes; None when all of it is off."""
    image = build_image_augment(cfg, data, generator)
    settings = {key: cfg.data[key] for key in AUGMENT_KEYS if key in cfg.data}
    augment = Augment(**settings, num_classes=data.num_classes, generator=generator) if settings else None
    return chained(image, augment if augment is not None and augment.active else None)


def build_image_augment(cfg: DictConfig, data: DataSplits, generator: torch.Generator) -> ImageAugment | None:
    """augment=... (conf/augment/) for image data, or None when off; for data that is no images
    (a kind other than image, or no [C, H, W] inputs) a ConfigError."""
    settings = image_augment_settings(cfg.get("augment") or {})
    if not settings:
        return None
    meta = data.meta
    if meta.get("kind") != "image" or len(data.input_shape) != 3 or "mean" not in meta:
        shown = ", ".join(f"augment.{key}={value!r}" for key, value in settings.items())
        raise ConfigError(
            [
                f"{shown}: image transforms, and data {data.name!r} gives {meta.get('kind')} inputs of shape "
                f"{list(data.input_shape)}; allowed for image data only: augment=none"
            ]
        )
    return ImageAugment(meta["mean"], meta["std"], data.input_shape[1:], **plain(cfg.augment), generator=generator)


def build_model(cfg: DictConfig, data: DataSplits, device: torch.device) -> torch.nn.Module:
    """The model for the data's input shape and class count, on `device`, checked by a forward
    pass of one sample: a model that cannot take the data is a config error naming both."""
    about = f"data {data.name!r} (input shape {list(data.input_shape)}, {data.num_classes} classes)"
    model = build_model_for(cfg, data.meta, device, context=f" for {about}")
    check_model_fits(model, cfg.model.get("_target_"), data.input_shape, data.num_classes, about)
    return model


def build_model_for(
    cfg: DictConfig, preprocessing: dict[str, Any], device: torch.device, context: str = ""
) -> torch.nn.Module:
    """The model for data described by `preprocessing` (DataSplits.meta, or the record a checkpoint
    keeps): its input shape and class count; tables with embedded categories get the embeddings in front."""
    shape, num_classes = list(preprocessing["input_shape"]), preprocessing["num_classes"]
    node = model_node(cfg)

    def make(width: list[int]) -> torch.nn.Module:
        with building("model", node.get("_target_"), context=context, node=node):
            return hydra_instantiate(node, input_shape=width, num_classes=num_classes)

    if preprocessing.get("categorical") == "embed":
        return EmbeddedInputs(preprocessing["features"], make).to(device)
    return make(shape).to(device)


# model keys nettrain reads itself, not passed to the model's _target_: sync_bn (the distributed
# wrapper, build_parts), freeze and unfreeze_at_epoch (nettrain/engine/finetune.py)
WRAPPER_KEYS = ("sync_bn", "freeze", "unfreeze_at_epoch")


def model_node(cfg: DictConfig) -> dict[str, Any]:
    """The model option as the model class takes it: a plain dict, without WRAPPER_KEYS."""
    node = plain(cfg.model)
    for key in WRAPPER_KEYS:
        node.pop(key, None)
    return node


def check_model_fits(model: torch.nn.Module, target: str | None, input_shape, num_classes: int, about: str) -> None:
    """Run one zero sample through the model in eval mode (no RNG drawn, no statistics changed)
    and check it gives (1, num_classes) logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape), device=next(model.parameters()).device))
    except Exception as exc:  # any failure here means the shapes do not fit
        first_line = (str(exc).strip().splitlines() or [""])[0]
        problem = f"model {target} cannot take the data's inputs: {about}; a forward pass of one sample failed: "
        raise ConfigError([problem + f"{type(exc).__name__}: {first_line}"]) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        problem = f"model {target} does not fit the data: {about}; one sample gave output {got}, "
        raise ConfigError([problem + f"expected [1, {num_classes}] (a batch of logits, one per class)"])


@dataclass
class ModelInputs:
    """What the model was built for, kept in every checkpoint (`model_io`), so that export and
    prediction can rebuild it without the data set."""

    input_shape: list[int]
    num_classes: int

    def state_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Fixed by the config and the data, which resume already checks."""


@dataclass
class Trained:
    """A trained model rebuilt from its checkpoint by :func:`build_trained`."""

    model: torch.nn.Module  # in eval mode, with the inference weights (the EMA's when the run kept one)
    cfg: DictConfig  # the run's config with the overrides on top: checked (trust.check) and validated
    preprocessing: dict[str, Any]  # the saved preprocessing, with the model's input_shape and num_classes
    device: torch.device


def build_trained(
    state: dict[str, Any],
    source: str,
    overrides: list[str] | tuple[str, ...] = (),
    device: str | torch.device | None = None,
    trust: bool = False,
) -> Trained:
    """The model a checkpoint (`state`, read from `source`) holds, as nettrain-eval, -predict and
    -export use it: built from the checkpoint's config with `overrides` on top, for the input its
    saved preprocessing describes (no data set is read), with its inference weights loaded.

    The stored config is data from a file: it is checked (nettrain.config.trust.check, `trust_targets=`
    in `overrides`, `trust` for --trust) before anything is built or resolved. `device`: a name
    (`cpu`, `auto`, `cuda:1`) or a torch.device; None: the config's `device`."""
    overrides = list(overrides)
    stored = {k: v for k, v in state["config"].items() if k != "callbacks"}  # never built here: not checked
    cfg = OmegaConf.merge(schema_config(), stored, OmegaConf.from_dotlist(overrides))
    assert isinstance(cfg, DictConfig)  # merged onto the schema: a mapping
    trust_lib.check(cfg, source, trust_lib.trusted_from_overrides(overrides), trust_all=trust)
    validate(cfg)
    preprocessing = saved_preprocessing(state, source)
    where = resolve_device(str(device) if device is not None else cfg.device)
    model = build_model_for(cfg, preprocessing, where, context=f" for the input {source} was trained on")
    load_weights(model, inference_weights(state), source, overrides)
    return Trained(model.eval(), cfg, preprocessing, where)


def saved_preprocessing(state: dict[str, Any], source: str) -> dict[str, Any]:
    """The checkpoint's preprocessing record with its model_io (input shape, class count) on top."""
    record = state.get("preprocessing")
    if not isinstance(record, dict) or not record:
        raise CheckpointError(
            f"{source}: holds no preprocessing (it was written by an older nettrain), so the model's input "
            "is not known; train the model again"
        )
    task = record.get("task", "classification")
    if task not in TASKS:
        raise CheckpointError(f"{source}: preprocessing.task={task!r}; allowed: {', '.join(TASKS)}")
    return {**record, **(state.get("model_io") or {})}


def load_weights(model: torch.nn.Module, weights: dict[str, Any], source: str, overrides: list[str]) -> None:
    """Load `weights` into `model`; weights that do not fit are a ConfigError naming the overrides."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        mismatch = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()][:3]
        given = f" (overrides: {' '.join(overrides)})" if overrides else ""
        raise ConfigError(
            [
                f"the model built from the config{given} does not fit the weights in {source}: "
                + "; ".join(mismatch)
                + ". Drop the model overrides; the model is rebuilt as the checkpoint was trained"
            ]
        ) from None


def use_channels_last(setting: str, device: torch.device, model: torch.nn.Module) -> bool:
    """trainer.channels_last: `on`, or `auto` for conv models on CUDA."""
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return setting == "on" or (setting == "auto" and device.type == "cuda" and has_conv)


CROSS_ENTROPY = "torch.nn.CrossEntropyLoss"
LOSS_KEYS = ("class_weights",)  # loss keys nettrain reads itself, not passed to the loss's _target_


def build_loss(cfg: DictConfig, task: str = "classification", weight: list[float] | None = None) -> torch.nn.Module:
    """The `loss` option (on the CPU); for regression data (data.task=regression) the default
    cross-entropy becomes mean squared error. `weight`: the per-class weights loss.class_weights
    stands for (build_class_weights): the loss is built with them as its `weight` tensor and
    reduction='none', and averaged over the samples (ClassWeightedLoss)."""
    if task == "regression" and cfg.loss._target_ == CROSS_ENTROPY:
        return torch.nn.MSELoss()
    node = plain(cfg.loss)
    for key in LOSS_KEYS:
        node.pop(key, None)
    if weight is None:
        return instantiate(node, "loss")
    target = node.get("_target_")
    with building("loss", target, node=node):
        try:
            weighted = hydra_instantiate(node, weight=torch.tensor(weight, dtype=torch.float32), reduction="none")
        except (InstantiationException, TypeError) as exc:
            if not any(word in str(exc.__cause__ or exc) for word in ("weight", "reduction")):
                raise
            raise ConfigError(
                [
                    f"loss.class_weights={_shown(cfg.loss.get('class_weights'))}: loss._target_={target} does not "
                    "take a per-class `weight` (with reduction='none'); allowed: a loss that does "
                    "(torch.nn.CrossEntropyLoss, torch.nn.NLLLoss, torch.nn.MultiMarginLoss), or loss.class_weights=null"
                ]
            ) from None
    return ClassWeightedLoss(weighted)


def _shown(value: Any) -> str:
    """A setting's value as the command line gives it: `balanced`, `[1.0, 3.0]`."""
    return str(list(value)) if OmegaConf.is_list(value) or isinstance(value, list) else str(value)


def build_class_weights(cfg: DictConfig, data: DataSplits) -> ClassWeights | None:
    """The training split's class counts and the class weights the run uses: the loss's
    (loss.class_weights) and the sampler's (data.sampler=balanced); None for regression, which
    has no classes (the config checks refuse either setting there)."""
    setting, sampler = cfg.loss.get("class_weights"), cfg.data.get(SAMPLER_KEY, "shuffle")
    if data.task != "classification":
        given = [f"loss.class_weights={_shown(setting)}"] if setting is not None else []
        given += ["data.sampler=balanced"] if sampler == "balanced" else []
        if given:
            raise ConfigError([f"{key}: weighs classes, and data {data.name!r} is {data.task} data" for key in given])
        return None
    counts = class_counts(data.train.y, data.num_classes)
    return ClassWeights(
        train_counts=counts,
        loss=loss_weights(setting, counts, data.meta.get("class_names")),
        sampler=balanced_weights(counts) if sampler == "balanced" else None,
    )


def trained_loss(cfg: DictConfig, state: dict[str, Any], task: str) -> torch.nn.Module:
    """The loss a checkpoint's run trained with (`state`: the checkpoint), for evaluating it: the
    class weights of loss.class_weights come from the training split's counts the checkpoint keeps."""
    setting = cfg.loss.get("class_weights") if task == "classification" else None
    if setting is None:
        return build_loss(cfg, task)
    counts = (state.get("class_weights") or {}).get("train_counts")
    if counts is not None:
        names = (state.get("preprocessing") or {}).get("class_names")
        return build_loss(cfg, task, loss_weights(setting, counts, names))
    if isinstance(setting, str):
        raise ConfigError(
            [
                "loss.class_weights='balanced': the checkpoint keeps no class counts of its training split "
                "(an older nettrain wrote it); give the weights as a list, or loss.class_weights=null"
            ]
        )
    return build_loss(cfg, task, [float(w) for w in setting])


def check_loss_fits(loss_fn: torch.nn.Module, target: str, task: str, num_classes: int, labels: torch.Tensor) -> None:
    """Evaluation, the metrics and the loss plot assume the task's kind of loss: probe the loss on
    two samples' worth of model output and the data's own labels, backward included, before any
    training; a loss that does not take them is a ConfigError naming it and what fits."""
    takes, losses = FITTING_LOSSES.get(task, FITTING_LOSSES["classification"])
    fitting = ", ".join(losses)
    out = torch.zeros(len(labels), max(num_classes, 1), requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's broadcast warning for a target of another shape
            value = loss_fn(out, labels.cpu())
            if value.numel() != 1:
                raise ValueError(f"it returns {tuple(value.shape)}, not one number (set reduction='mean')")
            value.backward()
    except Exception as exc:  # any failure means it does not take the task's outputs and labels
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            [f"loss={target}: does not fit {task} data, whose loss takes {takes} ({first}); allowed: {fitting}"]
        ) from None


def build_optimizer(
    cfg: DictConfig, model: torch.nn.Module, device: torch.device, capturable: bool = False
) -> torch.optim.Optimizer:
    """The optimizer option over the model's parameters (all of them, frozen ones too), in the
    groups of optimizer.param_groups and decay_norm_and_bias (nettrain/engine/finetune.py), fused
    on CUDA where torch has kernels; `capturable`: ready for the CUDA graph step (capturable flag,
    learning rate a device tensor)."""
    node = plain(cfg.optimizer)  # without the keys nettrain reads itself, which make the groups:
    lrs = node.pop("param_groups", None) or {}
    decay_all = node.pop("decay_norm_and_bias", finetune.DECAYS_EVERYTHING)  # absent: a config saved before the key
    groups = finetune.param_groups(model, lrs, node.get("weight_decay") or 0.0, decay_all)
    kwargs = fused_kwargs(node["_target_"], device, cfg.trainer.fused_optimizer)
    if capturable:
        kwargs.update(capture.optimizer_kwargs(node["_target_"]))
    optimizer = instantiate(node, "optimizer", groups, _partial_=True, **kwargs)
    if capturable:
        cuda_graph.tensor_lr(optimizer, device)
    return optimizer


def graph_plan(cfg: DictConfig, device: torch.device, train_size: int, eager_only: list[str] | None = None):
    """trainer.cuda_graph for this run: capture or not, and why (nettrain.config.graph_plan.plan); `on`
    with a step that cannot be captured is a ConfigError."""
    found = capture.plan(
        cfg.trainer.cuda_graph,
        device=str(device),
        precision=cfg.trainer.precision,
        in_memory=cfg.data.get("in_memory", True),
        optimizer=cfg.optimizer._target_,
        optimizer_options=plain(cfg.optimizer),
        fused_optimizer=cfg.trainer.fused_optimizer,
        compile=cfg.trainer.compile,
        train_size=train_size,
        batch_size=cfg.batch_size,
        world_size=launch.context().world_size,
        eager_only=eager_only or [],
    )
    if found.refusal():
        raise ConfigError(found.refusal())
    return found


def build_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The scheduler option, with its warmup, as an LRSchedule."""
    with building("scheduler", cfg.scheduler._target_, node=cfg.scheduler):
        return schedulers.build_schedule(
            optimizer,
            plain(cfg.scheduler),
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.epochs,
        )


def build_early_stopping(cfg: DictConfig):
    es = cfg.early_stopping
    return EarlyStopping(
        monitor=es.monitor,
        mode=metric_mode(es.monitor),
        patience=es.patience,
        min_delta=es.min_delta,
        enabled=es.enabled,
    )


def build_grad_monitor(cfg: DictConfig, model: torch.nn.Module):
    gm = cfg.grad_monitor
    return GradientMonitor(
        model.named_parameters(),
        enabled=gm.enabled,
        skip_nonfinite=cfg.trainer.precision == "fp16",
        every_n_steps=gm.every_n_steps,
    )


@dataclass
class Run:
    """A built run: the device, the data and its batches, and the training state."""

    device: torch.device
    data: DataSplits
    loader: dict[str, Any]  # in_memory, num_workers, and this rank's place (rank, world_size)
    batch_size: int
    state: TrainState
    train_batches: Any  # Batches, or cuda_graph.IndexBatches for the CUDA graph step
    val_batches: Batches
    augment: Any = None  # the training batches' augmentation (nettrain/data/augment.py), or None
    graph: Any = None  # the trainer.cuda_graph plan (nettrain.config.graph_plan.Plan)
    eval_batch_size: int | None = None  # validation and test batches; None = batch_size
    step: Any = None  # the step the loop used (nettrain.engine.cuda_graph.StepChoice; set by train.py)
    memory: Any = None  # the training-memory estimate (nettrain.insight.memory.MemoryEstimate), made before compiling
    unfreeze: Any = None  # model.unfreeze_at_epoch: the loop's call at each epoch's start (finetune.Unfreeze), or None

    def batches(self, split: Split) -> Batches:
        """Unshuffled batches of another split (the test split), served like the others."""
        transform = input_transform(self.data.meta, split.x, self.device)
        return Batches(split, self.eval_batch_size or self.batch_size, self.device, transform=transform, **self.loader)


@dataclass
class Parts:
    """What a training step is made of, each decided once from the config: the data and how it
    is served (loader settings, the per-batch input transform), the model, the loss for the data's
    task, the optimizer, the precision, the CUDA-graph plan and the memory estimate. `build_run`
    makes a run of them; the dry run and the finders (nettrain/engine/tune.py) use them as they are."""

    device: torch.device
    data: DataSplits
    loader: dict[str, Any]  # in_memory, num_workers, and this rank's place (rank, world_size)
    transform: Any  # uint8 images -> normalised floats, per batch (preprocessing.Normalize), or None
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: Any  # nettrain.engine.precision.Precision
    graph: Any  # the trainer.cuda_graph plan (nettrain.config.graph_plan.Plan)
    memory: Any  # the training-memory estimate at batch_size (nettrain.insight.memory.MemoryEstimate)
    frozen: list[torch.nn.Parameter]  # model.freeze's parameters (requires_grad off), for model.unfreeze_at_epoch
    class_weights: ClassWeights | None = None  # the training split's class counts and the weights in use

    def training_batches(self, batch_size: int, generator: torch.Generator) -> Batches:
        """Shuffled training batches of `batch_size`, transformed as the model takes them; drawn
        with replacement by class weight under data.sampler=balanced."""
        sampler = self.class_weights.sampler if self.class_weights is not None else None
        return Batches(
            self.data.train,
            batch_size,
            self.device,
            shuffle=True,
            generator=generator,
            drop_unshareable=True,
            transform=self.transform,
            sample_weights=sample_weights(self.data.train.y, sampler) if sampler is not None else None,
            **self.loader,
        )

    def fresh_copy(self, cfg: DictConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """A copy of the model with its own optimizer, built as `optimizer` was: for a trial step
        that must leave the parts as built (the batch-size finder)."""
        model = copy.deepcopy(self.model)
        return model, build_optimizer(cfg, model, self.device, capturable=self.graph.capture)


def build_parts(cfg: DictConfig, device: torch.device) -> Parts:
    """The data, model, loss, optimizer and precision of a run, on `device`, with fresh state:
    the model checked against the data, the loss against the data's task (data.task=regression:
    mean squared error), the memory estimated (before any torch.compile)."""
    data, loader = build_data(cfg)
    ctx = launch.context()  # rank 0 of 1 unless under torchrun/SLURM
    loader.update(rank=ctx.rank, world_size=ctx.world_size)  # each rank's share of every batch
    model = distributed.sync_batchnorm(build_model(cfg, data, device), cfg.model.get("sync_bn", False), device)
    if use_channels_last(cfg.trainer.channels_last, device, model):
        model = model.to(memory_format=torch.channels_last)
        for split in (data.train, data.val, data.test):
            split.x = split.x.contiguous(memory_format=torch.channels_last)
    frozen = finetune.freeze(model, list(cfg.model.get("freeze") or []))  # before the optimizer and the estimate
    transform = input_transform(data.meta, data.train.x, device)  # uint8 images: normalised per batch
    graph = graph_plan(cfg, device, len(data.train), eager_only=_eager_only(cfg, transform is not None))
    class_weights = build_class_weights(cfg, data)
    loss_fn = build_loss(cfg, data.task, class_weights.loss if class_weights is not None else None)
    check_loss_fits(loss_fn, cfg.loss._target_, data.task, data.num_classes, data.train.y[:2])
    loss_fn = loss_fn.to(device)  # its class weights, if any, beside the model's outputs
    optimizer = build_optimizer(cfg, model, device, capturable=graph.capture)
    precision = Precision(cfg.trainer.precision, device)
    memory = memory_estimate(cfg, model, optimizer, loss_fn, data, loader, precision, transform)
    return Parts(
        device, data, loader, transform, model, loss_fn, optimizer, precision, graph, memory, frozen, class_weights
    )


def build_run(cfg: DictConfig, device: torch.device) -> Run:
    """Everything the loop needs, from the config: the parts (build_parts), compiled when asked,
    with the schedule, early stopping, the gradient monitor and the batches, in fresh state."""
    parts = build_parts(cfg, device)
    data, model, optimizer, graph = parts.data, parts.model, parts.optimizer, parts.graph
    mode = capture.compile_mode(cfg.trainer.compile)
    if mode is not None:  # in place: state_dict keys and checkpoints stay the same
        model.compile(mode=None if mode == "default" else mode)
    order = torch.Generator().manual_seed(cfg.seed)  # the data order has its own generator
    train_batches = parts.training_batches(cfg.batch_size, order)
    steps = cfg.trainer.accumulate_steps  # the schedule counts optimizer steps
    eval_batch_size = max(cfg.batch_size, cuda_graph.EVAL_BATCH_SIZE) if graph.capture else cfg.batch_size
    state = TrainState(
        model=model,
        loss_fn=parts.loss_fn,
        optimizer=optimizer,
        schedule=build_schedule(cfg, optimizer, optimizer_steps(len(train_batches), steps)),
        early_stopping=build_early_stopping(cfg),
        grad_monitor=build_grad_monitor(cfg, model),
        precision=parts.precision,
        data_generator=order,
        ddp=distributed.wrap(model, device),
        extras={"preprocessing": PreprocessingRecord(data.meta)},  # saved in every checkpoint
    )
    val_batches = Batches(
        data.val, eval_batch_size, device, transform=input_transform(data.meta, data.val.x, device), **parts.loader
    )
    state.extras["model_io"] = ModelInputs(list(data.input_shape), data.num_classes)
    if parts.class_weights is not None:  # nettrain-eval weighs the loss as training did
        state.extras["class_weights"] = parts.class_weights
    if steps > 1:
        state.extras["accumulation"] = Accumulation(model, steps, len(data.train), cfg.batch_size)
    if cfg.trainer.val_every_n_steps:  # the rows of the validations inside an epoch, for metrics.csv
        state.extras["step_validations"] = StepValidations()
    if cfg.trainer.ema_decay:  # last: the average starts from the model as it will train
        state.extras["ema"] = EMA(model, cfg.trainer.ema_decay)
    at_epoch = cfg.model.get("unfreeze_at_epoch")
    unfreeze = finetune.Unfreeze(state, parts.frozen, at_epoch, list(cfg.model.freeze)) if at_epoch else None
    return Run(
        device,
        data,
        parts.loader,
        cfg.batch_size,
        state,
        cuda_graph.IndexBatches(train_batches) if graph.capture else train_batches,
        val_batches,
        build_augment(cfg, data, order),
        graph,
        eval_batch_size,
        memory=parts.memory,
        unfreeze=unfreeze,
    )


def _eager_only(cfg: DictConfig, per_batch_transform: bool) -> list[str]:
    """Settings whose work runs outside a captured CUDA-graph step, each with its reason."""
    reasons = []
    augmented = cfg.data.get("augment", "none") not in (None, "none") or image_augment_settings(
        cfg.get("augment") or {}
    )
    if per_batch_transform or augmented or cfg.data.get("mix", None):
        reasons.append(
            "the data option transforms each batch (uint8 images normalised per batch, or augmentation): "
            "the graph gathers its batch from the device tensors as they are"
        )
    if cfg.trainer.accumulate_steps > 1:
        reasons.append("trainer.accumulate_steps > 1: the optimizer steps once per group, not once per replay")
    if cfg.trainer.ema_decay:
        reasons.append("trainer.ema_decay: the EMA update runs outside the captured step")
    if cfg.model.get("unfreeze_at_epoch"):
        reasons.append("model.unfreeze_at_epoch: the parameters the step trains change at that epoch")
    return reasons


def build_diagnosis(cfg: DictConfig, state: TrainState, hooks: bool = True):
    """The per-epoch gradient diagnosis, sampling the steps the gradient monitor samples; its
    probe's partial sums are checkpointed (TrainState.extras['diagnosis']). hooks=False (the CUDA
    graph step, which replays without Python hooks): no update ratios or dead units, the verdict
    reads the gradient means and norms alone. A compiled model (trainer.compile) gets no dead
    units: its forward hooks come and go with the sampled steps, and each change would recompile
    the model's graph."""
    gm, monitor = cfg.grad_monitor, state.grad_monitor
    probe = TrainingDiagnostics(
        state.model,
        state.optimizer,
        in_forward=monitor.sampling_next,
        after_backward=monitor.sampled_last,
        enabled=gm.enabled and hooks,
        activations=capture.compile_mode(cfg.trainer.compile) is None,
    )
    thresholds = Thresholds(
        spread=gm.ratio,
        vanishing_below=gm.vanishing_below,
        exploding_above=gm.exploding_above,
        update_ratio_above=gm.update_ratio_above,
        norm_growth=gm.norm_growth,
        dead_fraction=gm.dead_fraction,
    )
    if probe.active:
        monitor.on_count.append(probe.follow_sampling)  # hooks only around the sampled steps
    diagnosis = Diagnostician(probe, weight_names(state.model), thresholds)
    state.extras["diagnosis"] = diagnosis
    return diagnosis


def build_loggers(cfg: DictConfig, state: TrainState, rank: int | None = None):
    """The experiment loggers of `cfg.loggers`; their run ids are checkpointed (extras['loggers']).
    In a multirun, the sweep dir and job number name the runs."""
    sweep_dir = job = None
    if in_multirun():
        hc = HydraConfig.get()
        sweep_dir, job = str(hc.sweep.dir), str(hc.job.num)
    settings = plain(cfg.logger)
    group = loggers.build_loggers(cfg.loggers, **settings, sweep_dir=sweep_dir, job_name=job, rank=rank)
    state.extras["loggers"] = group
    return group


def memory_estimate(
    cfg: DictConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    data: DataSplits,
    loader: dict[str, Any],
    precision: Any,
    transform: Any = None,
):
    """The training-memory estimate (nettrain/insight/memory.py) for this model, optimizer, data and batch
    (`transform`: what turns stored inputs into the model's, e.g. uint8 images normalised per batch)."""
    device = next(model.parameters()).device
    held = data_bytes([data.train, data.val, data.test], device, loader["in_memory"], cfg.batch_size)
    sample = data.train.x[:4].to(device)
    return estimate(
        model,
        optimizer,
        loss_fn,
        transform(sample) if transform is not None else sample,
        data.train.y[:4],
        min(cfg.batch_size, len(data.train)),
        data_bytes=held,
        restore_best=cfg.early_stopping.restore_best,
        autocast=precision.autocast,
    )
