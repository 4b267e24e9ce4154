"""The run config's typed schema and its up-front validation.

The groups model/optimizer/scheduler/data are `_target_` YAML files in conf/; everything else
is a plain setting with its type, default and meaning here. Hydra checks the types when it
composes the config (``lr=abc`` fails naming ``lr``); :func:`validate` then checks ranges,
choices and cross-field rules and reports every problem in one message before anything is built.

The comment beside each field is its meaning, shown by ``nettrain-train --help`` and in
docs/reference/settings.md (nettrain/config/help.py reads it). A comment ending in
``[resume: may change]`` marks a setting that a resumed run may set differently, because it does
not change what the run computed so far; on a field holding a section it marks the whole section.
Every other difference from the run being resumed is refused (nettrain/run/resume.py).

This module imports neither torch nor torchvision, so ``nettrain-train --help`` stays fast.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard, cast

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from nettrain.config.graph_plan import COMPILE_MODES, SETTINGS, plan
from nettrain.errors import ConfigError

# Names the components accept; nettrain/models/ maps each to its torch module.
ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "leaky_relu", "silu")
NORMS = ("none", "batchnorm", "layernorm")
INITS = ("default", "kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform")
TORCHVISION_DATASETS = ("MNIST", "FashionMNIST", "KMNIST")
# metrics=[...]: the names each data.task computes (nettrain/engine/metrics.py); `topK_acc` takes
# any K >= 1. The loop's own sums give loss and acc (classification), r2 and mae (regression).
AVERAGES = ("macro", "micro", "weighted")
TASK_METRICS = {
    "classification": (
        "acc",
        "topK_acc",
        *(f"{name}_{average}" for name in ("f1", "precision", "recall") for average in AVERAGES),
        "auroc",
        "average_precision",
    ),
    "regression": ("mae", "rmse", "r2"),
    # acc: the share of right 0/1 label decisions (logit > 0); the scores threshold each label's sigmoid at 0.5
    "multilabel": (
        "acc",
        *(f"{name}_{average}" for name in ("f1", "precision", "recall") for average in AVERAGES),
        "auroc",
        "average_precision",
    ),
}
BUILT_IN_METRICS = {
    "classification": ("loss", "acc"),
    "regression": ("loss", "r2", "mae"),
    "multilabel": ("loss", "acc"),
}  # always reported
TASKS = ("classification", "regression", "multilabel")  # data.task
# the loss each task takes, and the torch losses that do (nettrain/engine/build.py probes any other)
FITTING_LOSSES = {
    "classification": (
        "N x C logits and class labels",
        ("torch.nn.CrossEntropyLoss", "torch.nn.NLLLoss", "torch.nn.MultiMarginLoss"),
    ),
    "regression": (
        "N x 1 outputs and real-valued targets",
        ("torch.nn.MSELoss", "torch.nn.L1Loss", "torch.nn.SmoothL1Loss", "torch.nn.HuberLoss"),
    ),
    "multilabel": (
        "N x L logits and one 0/1 target per label",
        ("torch.nn.BCEWithLogitsLoss", "torch.nn.MultiLabelSoftMarginLoss"),
    ),
}
LOSS_OPTIONS = {"torch.nn.CrossEntropyLoss": "cross_entropy", "torch.nn.BCEWithLogitsLoss": "bce_with_logits"}
LOWER_IS_BETTER = ("loss", "mae", "rmse")
TOP_K = re.compile(r"^top([1-9][0-9]*)_acc$")
AUGMENTS = ("none", "flip", "crop", "flip_crop")  # data.augment (nettrain/data/augment.py)
MIXES = ("none", "mixup", "cutmix")  # data.mix
SOFT_TARGET_LOSSES = ("torch.nn.CrossEntropyLoss",)  # losses that take class probabilities as targets
SAMPLERS = ("shuffle", "balanced")  # data.sampler (nettrain/engine/balance.py)
POLICIES = ("none", "randaugment", "trivialaugment")  # augment.policy (nettrain/data/augment.py)
# data options whose inputs are no images: augment=... (torchvision's image transforms) is refused for them
NOT_IMAGES = {
    "nettrain.data.tabular.csv": "data=csv gives a table",
    "nettrain.data.synthetic": "data=synthetic gives random tensors",
}
# keys of the group options (conf/<group>/*.yaml) added since runs were saved, each with the value
# that does what those runs did: resuming a run saved without one is no change while it keeps it
ADDED_OPTION_KEYS = {
    "data.sampler": "shuffle",
    "loss.class_weights": None,  # conf/loss/cross_entropy.yaml
    "data.task": "classification",  # conf/data/image_folder.yaml
    "data.labels_file": None,
}
MAX_SEED = 2**32 - 1  # NumPy's seed range
MAX_BATCH_SIZE = 2**16  # larger is no sensible batch for these datasets (and a typo more often than not)
# samples a data option splits into train/val/(test), for the empty-split check before loading
DATA_SIZES = {"nettrain.data.mnist_sample": 5000, "nettrain.data.torchvision_dataset": 60000}
DURATION = re.compile(r"^(?:(\d+):)?(\d+):([0-5]?\d):([0-5]?\d)$")  # trainer.max_time: [DD:]HH:MM:SS
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# loggers: name -> (module that must import, the extra that installs it); nettrain/insight/loggers.py
LOGGER_PACKAGES = {
    "csv": None,
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


@dataclass
class RegularizationConfig:
    """Every regularization option (conf/regularization/) sets these keys, so they combine."""

    l1: float = 0.0  # weight of l1 * sum|w| added to the loss (weight matrices and conv kernels)
    weight_decay: float = 0.0  # L2, through the optimizer's weight_decay
    dropout: float = 0.0  # dropout probability inside the model
    grad_clip: float | None = None  # max global gradient norm; null = no clipping


@dataclass
class EarlyStoppingConfig:
    """Stop when the monitored metric has not improved for `patience` validations (one per epoch by default)."""

    enabled: bool = True  # stop early; false: run all `epochs` [resume: may change]
    monitor: str = "val_loss"  # val_loss | val_acc | regression: val_r2, val_mae | val_NAME of any NAME in `metrics`; its direction (min or max) is the metric's
    patience: int = 3  # validations without improvement before stopping (the tutorial's 3): epochs, unless trainer.val_every_n_steps validates inside them too [resume: may change]
    min_delta: float = 0.0  # an improvement must beat the best by more than this [resume: may change]
    restore_best: bool = True  # load the best epoch's weights when training ends


@dataclass
class GradMonitorConfig:
    """Per-layer gradient statistics in metrics.csv and a per-epoch diagnosis (nettrain/insight/diagnosis.py)."""

    enabled: bool = True  # record per-layer gradient statistics and diagnose them each epoch
    vanishing_below: float = 1e-7  # vanishing: a weight layer's mean |grad| below this [resume: may change]
    exploding_above: float = 1e2  # exploding: a weight layer's mean |grad| above this [resume: may change]
    ratio: float = (
        1e3  # vanishing: a weight layer's mean |grad| this many times below the largest layer's [resume: may change]
    )
    update_ratio_above: float = (
        0.1  # exploding: a step moves a weight tensor by more than this fraction of it [resume: may change]
    )
    norm_growth: float = 10.0  # exploding: the gradient norm grew this many times in one epoch [resume: may change]
    dead_fraction: float = (
        0.5  # dead units: this fraction of a layer's units never fired in the epoch [resume: may change]
    )
    # A sampled step reads the gradients and weights a few times more: up to a quarter of a step
    # (a small MLP on a CPU), so sampling 1 step in 50 costs about 0.5% of the training time.
    every_n_steps: int = 50  # sample every n-th step, the epoch's first included (1 = every step)


@dataclass
class TensorBoardLoggerConfig:
    """loggers=[...,tensorboard]: event files in RUN_DIR/tensorboard/."""

    histograms: bool = True  # weight and gradient histograms once per epoch


@dataclass
class MlflowLoggerConfig:
    """loggers=[...,mlflow]: one MLflow run per training run."""

    uri: str | None = None  # tracking URI; None = MLflow's default: ./mlflow.db, or $MLFLOW_TRACKING_URI
    experiment: str = "nettrain"  # MLflow experiment name


@dataclass
class WandbLoggerConfig:
    """loggers=[...,wandb]: one W&B run per training run."""

    project: str = "nettrain"  # W&B project
    mode: str = "auto"  # auto (online with an API key, else offline) | online | offline


@dataclass
class LoggerConfig:
    """Each experiment tracker's settings (the trackers are chosen by `loggers`)."""

    tensorboard: TensorBoardLoggerConfig = field(default_factory=TensorBoardLoggerConfig)
    mlflow: MlflowLoggerConfig = field(default_factory=MlflowLoggerConfig)
    wandb: WandbLoggerConfig = field(default_factory=WandbLoggerConfig)


@dataclass
class LrFindConfig:
    """find=lr: the LR range test's sweep."""

    start_lr: float = 1e-7  # find=lr: the sweep's first lr
    end_lr: float = 10.0  # find=lr: its last lr (the sweep stops earlier when the loss diverges)
    steps: int = 200  # find=lr: steps of the sweep, the lr growing exponentially
    smoothing: float = 0.9  # find=lr: exponential smoothing of the loss (0 = none)
    diverge: float = 4.0  # find=lr: stop when the smoothed loss exceeds this many times its minimum


@dataclass
class ProfilerConfig:
    """profile=true: how many steps to measure (nettrain/engine/profiling.py)."""

    warmup: int = 3  # profile=true: steps run first and not measured (allocations, lazy initialisation, autotuning)
    steps: int = 10  # profile=true: steps measured under torch.profiler, after the warmup


@dataclass
class AugmentConfig:
    """Image augmentation with torchvision.transforms.v2, per sample on the training device, drawn
    from the data generator (nettrain/data/augment.py); group conf/augment/: none | standard."""

    resized_crop: float | None = (
        None  # RandomResizedCrop: a crop of this share of the area up to all of it (aspect 3/4 to 4/3), resized back to the image's size; null = off
    )
    flip: bool = False  # RandomHorizontalFlip (p = 0.5); data.augment=flip does the same per batch: use one of them
    color_jitter: float | None = (
        None  # ColorJitter: brightness, contrast and saturation each by a factor in [1 - this, 1 + this]; null = off
    )
    policy: str = "none"  # none | randaugment (RandAugment: 2 operations at magnitude 9) | trivialaugment (TrivialAugmentWide: one at a random magnitude)
    erasing: float = 0.0  # RandomErasing: probability that a rectangle of each image is set to the mean (0 = off)


@dataclass
class CheckpointConfig:
    """Checkpoints to resume from and to evaluate."""

    enabled: bool = True  # checkpoints/last.pt every epoch and checkpoints/best.pt on improvement
    every_n_steps: int | None = (
        None  # also save last.pt after every N optimizer steps inside an epoch (resumes exactly); null = at epoch ends only
    )


@dataclass
class TrainerConfig:
    """Speed settings, and training by steps and time."""

    precision: str = "32"  # 32 | bf16 (autocast) | fp16 (autocast + GradScaler)
    compile: Any = False  # torch.compile the model: false | true (= default) | default | reduce-overhead | max-autotune
    cuda_graph: str = "auto"  # the whole training step as one CUDA graph: auto (CUDA runs that can) | on | off
    channels_last: str = "auto"  # auto (on for conv models on CUDA) | on | off
    fused_optimizer: str = "auto"  # auto (fused kernels on CUDA where the optimizer has them) | on | off
    accumulate_steps: int = 1  # gradient accumulation: batches per optimizer step (effective batch: batch_size x this)
    ema_decay: float | None = None  # EMA of the weights (e.g. 0.999) for validation, best.pt and test; None = off
    max_steps: int | None = (
        None  # stop after this many optimizer steps in all (a checkpoint that resumes); null = no limit [resume: may change]
    )
    max_time: str | None = (
        None  # stop once training has run this long, HH:MM:SS or DD:HH:MM:SS (or seconds), resumed sessions included; null = no limit [resume: may change]
    )
    val_every_n_steps: int | None = (
        None  # also validate after every N optimizer steps inside an epoch (metrics.csv gets a step column; early stopping counts each validation); null = at epoch ends only
    )


@dataclass
class ConsoleConfig:
    """What the console shows."""

    progress: str = "auto"  # per-step progress bar: auto (only on a terminal) | on | off
    show_config: bool = True  # print the composed config at the start
    show_model: bool = True  # print the model and its parameter count at the start


@dataclass
class DistributedConfig:
    """Training under torchrun or SLURM (one process per GPU): the backend and the shared stop check."""

    backend: str = "auto"  # under torchrun/SLURM: auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    stop_check_every: int = 10  # steps between the processes' check for a stop signal (one CPU message)


@dataclass
class TrainConfig:
    """The run config: conf/train.yaml's defaults list composes the groups into it."""

    lr: float = MISSING  # learning rate; every optimizer option reads it (${lr})
    batch_size: int = MISSING  # samples per training step
    epochs: int = MISSING  # upper bound; early stopping usually ends a run sooner [resume: may change]
    seed: int = MISSING  # seeds Python, NumPy and torch; the data order has its own generator seeded with it
    device: str = MISSING  # auto (CUDA, else MPS, else CPU) | cpu | cuda | cuda:N | mps [resume: may change]
    threads: int | None = None  # torch CPU threads; null = what torch picks (the cores it sees) [resume: may change]
    deterministic: bool = False  # torch.use_deterministic_algorithms(True), cudnn deterministic
    resume: str | None = (
        None  # a run dir or checkpoint file to continue (nettrain-train resume=RUN_DIR) [resume: may change]
    )
    plots: bool = True  # plots/*.png at the end of a run, lr_find.png for find=lr (matplotlib: about 3 s); false: none [resume: may change]
    model: Any = MISSING  # group: conf/model/
    optimizer: Any = MISSING  # group: conf/optimizer/
    scheduler: Any = MISSING  # group: conf/scheduler/
    data: Any = MISSING  # group: conf/data/
    loss: Any = MISSING  # group: conf/loss/ (any `_target_` loss module): cross_entropy | bce_with_logits (data.task=multilabel) | mse
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # group: conf/augment/ (none | standard)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    grad_monitor: GradMonitorConfig = field(default_factory=GradMonitorConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # [resume: may change]
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)  # [resume: may change]
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # _target_s to build from a file nettrain reads (a checkpoint's or resumed run's config) beyond
    # its own list; honoured from the command line only
    trust_targets: list[str] = field(
        default_factory=list
    )  # extra _target_s a file may name: [mypkg.MyModel] [resume: may change]
    loggers: list[str] = field(
        default_factory=lambda: ["csv"]
    )  # csv | tensorboard | mlflow | wandb [resume: may change]
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # each tracker's settings [resume: may change]
    dry_run: bool = False  # build, show the model and memory estimate, one forward + backward; no training
    find: str | None = None  # lr (LR range test) | batch_size (largest that fits): run it instead of training
    lr_find: LrFindConfig = field(default_factory=LrFindConfig)  # [resume: may change]
    profile: bool = False  # time a few training steps phase by phase (profile/trace.json, profile/summary.json, advice on the console); no training
    profiler: ProfilerConfig = field(default_factory=ProfilerConfig)  # [resume: may change]
    callbacks: list[Any] = field(
        default_factory=list
    )  # your own code in the loop: [{_target_: mymodule.MyCallback, ...}], each a class with any of on_fit_start, on_epoch_start, on_step_end, on_validation_end, on_checkpoint, on_fit_end [resume: may change]
    callbacks_every_n_steps: int = 50  # on_step_end runs every n-th step of the run (a callback's own every_n_steps wins; 1 = every step) [resume: may change]
    metrics: list[str] = field(
        default_factory=list
    )  # more metrics for validation (val_NAME) and test (test_NAME), e.g. [f1_macro,auroc]: classification: acc, topK_acc (top5_acc), f1|precision|recall_macro|micro|weighted, auroc, average_precision; regression: mae, rmse, r2; multilabel: acc, f1|precision|recall_macro|micro|weighted, auroc, average_precision


def schema_config() -> DictConfig:
    """TrainConfig as an OmegaConf config (every key typed, with its default): a fresh copy each
    call, of one made once per process (OmegaConf.structured takes ~35 ms, a copy ~7 ms)."""
    return copy.deepcopy(_schema_config())


@functools.cache
def _schema_config() -> DictConfig:
    return OmegaConf.structured(TrainConfig)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested plain config as {'dotted.key': value} (lists stay values)."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def matches(key: str, patterns: tuple[str, ...]) -> bool:
    """`key` is one of `patterns`, or lies under a pattern that ends in '.' (a whole section)."""
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def plain(node: Any) -> dict[str, Any]:
    """A config (or one of its sections) as plain dicts and lists, interpolations resolved: what
    checkpoints, config hashes and the builders take."""
    container = OmegaConf.to_container(node, resolve=True)
    if not isinstance(container, dict):
        raise TypeError(f"expected a config section, got {type(container).__name__}")
    return cast(dict[str, Any], container)


def _fmt(value: Any, limit: int = 60) -> str:
    """A value as echoed in a message, shortened when long."""
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _empty_splits(get) -> list[str]:
    """A val or test fraction so small that its split would hold no sample."""
    size = get("data.num_samples") or DATA_SIZES.get(get("data._target_"))
    found = []
    for key, name in (("data.val_fraction", "validation"), ("data.test_fraction", "test")):
        fraction = get(key)
        if isinstance(size, int) and isinstance(fraction, (int, float)) and 0 < fraction < 1:
            if math.floor(size * fraction) < 1:
                found.append(
                    f"{key}={fraction:g}: leaves the {name} split empty ({size} samples x {fraction:g} < 1); "
                    f"allowed: at least {1 / size:.2g}"
                )
    return found


def validate(cfg: Any) -> None:
    """Check ranges, choices and cross-field rules; raise one ConfigError listing every problem."""
    found = problems(cfg)
    if found:
        raise ConfigError(found)


def is_finite_number(v: Any) -> TypeGuard[int | float]:
    """A real int or float (not a bool), neither NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_data_options(c: Checks) -> None:
    """The keys of the image, table and augmentation data options (conf/data/)."""

    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    c.choice("data.augment", AUGMENTS)
    c.choice("data.mix", MIXES)
    c.need("data.mix_alpha", lambda v: is_finite_number(v) and v > 0, "must be a number > 0")
    c.need("data.crop_padding", positive_int, "must be an integer >= 1 (pixels)")
    c.choice("data.on_bad_file", ("fail", "skip"))
    c.choice("data.task", TASKS)
    c.choice("data.categorical", ("onehot", "embed"))
    c.choice("data.impute", ("none", "mean"))
    c.need("data.channels", lambda v: v in (1, 3), "must be null (the images' own), 1 (grayscale) or 3 (RGB)")
    c.need(
        "data.image_size",
        lambda v: positive_int(v) or (len(v) == 2 and all(positive_int(d) for d in v)),
        "must be null (the images' own), an integer N >= 1 or [H, W]",
    )
    loss = c.get("loss._target_")
    if c.get("data.task") == "multilabel":
        return  # mix: _check_multilabel
    if c.get("data.mix") in ("mixup", "cutmix") and loss not in SOFT_TARGET_LOSSES:
        c.problem(
            f"data.mix={_fmt(c.get('data.mix'))}: gives soft targets (class probabilities), which loss._target_="
            f"{_fmt(loss)} does not take; allowed: {', '.join(SOFT_TARGET_LOSSES)}, or data.mix=none"
        )


def metric_mode(monitor: str) -> str:
    """The direction of a reported metric (`val_f1_macro`, `best_val_loss`, `test_rmse`, `mae`):
    min for a loss or an error, max for every other."""
    name = monitor.removeprefix("best_").removeprefix("val_").removeprefix("test_")
    return "min" if name in LOWER_IS_BETTER else "max"


def known_metric(name: Any, task: str) -> bool:
    """`name` is one of `task`'s metrics (TASK_METRICS, topK_acc with K a number)."""
    if not isinstance(name, str):
        return False
    return name in TASK_METRICS.get(task, ()) or (task == "classification" and bool(TOP_K.match(name)))


def computed_metrics(names: Iterable[str], task: str) -> list[str]:
    """The names of `names` that the loop's own sums do not give: what torchmetrics computes."""
    return [name for name in dict.fromkeys(names) if name not in BUILT_IN_METRICS.get(task, ())]


def _check_metrics(c: Checks) -> None:
    """`metrics` against data.task, and early_stopping.monitor against what the run reports."""
    task = c.get("data.task") or "classification"
    if task not in TASK_METRICS:  # data.task's own check names it
        return
    names = c.get("metrics") or []
    unknown = [name for name in names if not known_metric(name, task)]
    if unknown:
        c.problem(
            f"metrics={_fmt(list(names), 120)}: {', '.join(map(_fmt, unknown))} not computed for "
            f"data.task={task!r}; allowed: {', '.join(TASK_METRICS.get(task, ()))} (K a number, e.g. top5_acc)"
        )
    monitor = c.get("early_stopping.monitor")
    reported = [f"val_{name}" for name in dict.fromkeys([*BUILT_IN_METRICS.get(task, ()), *names])]
    if monitor is not None and monitor not in reported:
        computable = isinstance(monitor, str) and known_metric(monitor.removeprefix("val_"), task)
        hint = f" (add it: metrics=[{monitor.removeprefix('val_')}])" if computable else ""
        c.problem(
            f"early_stopping.monitor={_fmt(monitor)}: not reported for data.task={task!r}{hint}; "
            f"allowed: {', '.join(reported)}, or val_NAME with NAME in metrics"
        )


_UNSEEN, _WALK = object(), object()  # Checks' markers: a section not read yet; one read node by node


def _without_missing(value: Any) -> Any:
    """A resolved section with the keys whose value is `???` left out (also in mappings inside lists)."""
    if isinstance(value, dict):
        return {key: _without_missing(item) for key, item in value.items() if item != MISSING}
    if isinstance(value, list):
        return [_without_missing(item) for item in value]
    return value


class Checks:
    """Collects 'key=value: what is allowed' problems of one config; `problems` runs every section."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.found: list[str] = []
        self._sections: dict[str, Any] = {}  # top-level key -> its resolved plain value, or _WALK

    def get(self, path: str) -> Any:
        """The value at the dotted `path`, interpolations resolved; None when it is not set (absent, or `???`).
        Sections are resolved to plain dicts and lists once (a walk through OmegaConf's nodes costs
        about 0.2 ms a key, an interpolation's parse included); a section that does not resolve as a
        whole (an interpolation that fails) and Hydra's own section are walked node by node. A key
        left `???` reads as absent, as OmegaConf's `in` has it, also inside a section read whole."""
        top, _, rest = path.partition(".")
        section = self._sections.get(top, _UNSEEN)
        if section is _UNSEEN:
            section = self._sections[top] = self._resolve(top)
        if section is _WALK:
            return self._walk(path)
        node = section
        for part in rest.split(".") if rest else ():
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def _resolve(self, top: str) -> Any:
        if not isinstance(self.cfg, DictConfig) or top == "hydra":  # hydra: its resolvers need a running job
            return _WALK
        if top not in self.cfg:
            return None
        try:
            value = self.cfg[top]
            if isinstance(value, (DictConfig, ListConfig)):
                return _without_missing(OmegaConf.to_container(value, resolve=True))
            return value
        except Exception:  # noqa: BLE001 - the walk raises it again for the key that reads it, as it did
            return _WALK

    def _walk(self, path: str) -> Any:
        node = self.cfg
        for part in path.split("."):
            if node is None or part not in node:
                return None
            node = node[part]
        return node

    def need(self, path: str, ok, allowed: str) -> None:
        """`ok(value)` must hold for the value at `path` (when it is set)."""
        value = self.get(path)
        if value is None:
            return
        try:
            good = ok(value)
        except TypeError:
            good = False
        if not good:
            self.found.append(f"{path}={_fmt(value)}: {allowed}")

    def choice(self, path: str, options) -> None:
        self.need(path, lambda v: v in options, "allowed: " + ", ".join(options))

    def problem(self, message: str) -> None:
        self.found.append(message)


def problems(cfg: Any) -> list[str]:
    """Every invalid setting of `cfg`, as 'key=value: what is allowed' lines (empty when valid)."""
    checks = Checks(cfg)
    for section in (
        _check_missing,
        _check_top_level,
        _check_model,
        _check_optimization,
        _check_data,
        _check_data_options,
        _check_monitors,
        _check_graph,
        _check_tools,
        _check_imbalance,
        _check_multilabel,
        _check_profile,
        _check_augment,
    ):
        section(checks)
    return checks.found


# What a key left `???` (Hydra's MISSING) by its option needs, for the message that asks for it.
NEEDED = {
    "data.path": "FILE (the CSV or Parquet file)",
    "data.target": "COLUMN (the label column; the value column for regression)",
    "data.root": "DIR (the folder holding train/, and val/ and test/ if any)",
}


def missing_keys(node: Any, prefix: str = "") -> list[str]:
    """The dotted keys of `node` whose value is `???` (MISSING), the hydra section aside."""
    if isinstance(node, DictConfig):
        keys = [str(k) for k in node.keys() if not (prefix == "" and k == "hydra")]
        found = [f"{prefix}{k}" for k in keys if OmegaConf.is_missing(node, k)]
        for key in keys:
            if f"{prefix}{key}" not in found and isinstance(node._get_node(key), DictConfig):
                found += missing_keys(node[key], f"{prefix}{key}.")
        return found
    if isinstance(node, dict):
        found = [f"{prefix}{k}" for k, v in node.items() if v == MISSING]
        for key, value in node.items():
            found += missing_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else []
        return found
    return []


def _check_missing(c: Checks) -> None:
    """Keys the chosen options leave `???`: one line per group, naming each key and what it takes."""
    by_group: dict[str, list[str]] = {}
    for key in missing_keys(c.cfg):
        by_group.setdefault(key.split(".")[0] if "." in key else "", []).append(key)
    for group, keys in by_group.items():
        choice = c.get(f"hydra.runtime.choices.{group}") if group else None
        where = f" by {group}={choice}" if isinstance(choice, str) else ""
        values = " ".join(f"{k}={NEEDED.get(k, 'VALUE')}" for k in keys)
        c.problem(
            f"{', '.join(keys)}: required{where} and not set (???); "
            f"give {'it' if len(keys) == 1 else 'them'} on the command line: {values}"
        )


def _check_top_level(c: Checks) -> None:
    finite = is_finite_number
    c.need("lr", lambda v: finite(v) and v > 0, "must be a number > 0")
    c.need("batch_size", lambda v: 1 <= v <= MAX_BATCH_SIZE, f"must be an integer in 1..{MAX_BATCH_SIZE}")
    c.need("epochs", lambda v: v >= 1, "must be an integer >= 1")
    c.need("seed", lambda v: 0 <= v <= MAX_SEED, f"must be an integer in 0..{MAX_SEED}")
    c.need("loss.label_smoothing", lambda v: is_finite_number(v) and 0 <= v < 1, "must be in [0, 1)")
    c.need("threads", lambda v: v >= 1, "must be null (torch's choice) or an integer >= 1")
    c.need("device", lambda v: bool(DEVICE_PATTERN.match(v)), "allowed: auto, cpu, cuda, cuda:N, mps")
    c.choice("console.progress", ("auto", "on", "off"))
    c.choice("trainer.precision", ("32", "bf16", "fp16"))
    c.choice("trainer.channels_last", ("auto", "on", "off"))
    c.choice("trainer.fused_optimizer", ("auto", "on", "off"))
    c.choice("distributed.backend", ("auto", "gloo", "nccl"))
    c.need("distributed.stop_check_every", lambda v: v >= 1, "must be an integer >= 1 (1 = every step)")
    c.need("trainer.accumulate_steps", lambda v: v >= 1, "must be an integer >= 1 (1 = no accumulation)")
    c.need(
        "trainer.ema_decay", lambda v: finite(v) and 0 < v < 1, "must be null (off) or a number in (0, 1), e.g. 0.999"
    )
    _check_steps(c)


def duration_seconds(value: Any) -> float | None:
    """trainer.max_time in seconds: "HH:MM:SS", "DD:HH:MM:SS" or a number of seconds; None when
    it is none of these (or not above 0)."""
    text = str(value).strip()
    if (match := DURATION.match(text)) is not None:
        days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
        total = float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    else:
        try:
            total = float(text)
        except ValueError:
            return None
    return total if math.isfinite(total) and total > 0 else None


def _check_steps(c: Checks) -> None:
    """trainer.max_steps, trainer.max_time, trainer.val_every_n_steps and checkpoint.every_n_steps
    (nettrain/engine/steps.py)."""
    for key in ("trainer.max_steps", "trainer.val_every_n_steps", "checkpoint.every_n_steps"):
        c.need(
            key, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "must be null or an integer >= 1"
        )
    c.need(
        "trainer.max_time",
        lambda v: duration_seconds(v) is not None,
        "must be null, HH:MM:SS or DD:HH:MM:SS (e.g. 00:30:00), or a number of seconds > 0",
    )


def _check_model(c: Checks) -> None:
    c.choice("model.activation", ACTIVATIONS)
    c.choice("model.norm", NORMS)
    c.choice("model.init", INITS)
    c.need("model.sync_bn", lambda v: isinstance(v, bool), "allowed: true, false")
    conv = "channels" in (c.get("model") or {})
    if c.get("model.hidden") is not None and not conv:
        c.need(
            "model.hidden",
            lambda v: all(isinstance(h, int) and h >= 1 for h in v),
            "must be a list of layer widths, each an integer >= 1 (e.g. [256] or [512,256])",
        )
    c.need(
        "model.channels",
        lambda v: len(v) >= 1 and all(isinstance(ch, int) and ch >= 1 for ch in v),
        "must be a non-empty list of channel counts, each an integer >= 1",
    )
    if conv:
        c.need("model.hidden", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    _check_fine_tuning(c)


def _prefix(v: Any) -> bool:
    """A parameter-name prefix: a non-empty string (fc1, layer4.1, features.)."""
    return isinstance(v, str) and v.strip(".") != "" and v.strip() == v


def _check_fine_tuning(c: Checks) -> None:
    """model.freeze, model.unfreeze_at_epoch, model.pretrained, optimizer.param_groups and
    optimizer.decay_norm_and_bias (nettrain/engine/finetune.py). Whether each prefix names a
    parameter is known once the model is built."""
    c.need(
        "model.freeze",
        lambda v: not isinstance(v, (str, dict)) and all(_prefix(p) for p in v),
        "must be a list of parameter-name prefixes, e.g. [fc1] or [layer1,layer2]",
    )
    c.need(
        "model.unfreeze_at_epoch",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
        "must be null (frozen for the whole run) or an epoch >= 2 (the frozen parameters train from it on)",
    )
    if c.get("model.unfreeze_at_epoch") is not None and not c.get("model.freeze"):
        c.problem(
            f"model.unfreeze_at_epoch={_fmt(c.get('model.unfreeze_at_epoch'))}: there is nothing to unfreeze; "
            "give model.freeze=[prefixes] too, or leave it null"
        )
    c.need("model.pretrained", lambda v: isinstance(v, bool), "allowed: true, false")
    c.need(
        "optimizer.param_groups",
        lambda v: (
            isinstance(v, (dict, DictConfig))
            and all(_prefix(k) and is_finite_number(lr) and lr > 0 for k, lr in v.items())
        ),
        "must be a mapping of parameter-name prefix to learning rate > 0, e.g. {layer4: 1e-4} or {}",
    )
    c.need("optimizer.decay_norm_and_bias", lambda v: isinstance(v, bool), "allowed: true, false")


def _check_optimization(c: Checks) -> None:
    """Regularization, the optimizer and the scheduler."""
    finite = is_finite_number
    c.need("regularization.l1", lambda v: finite(v) and v >= 0, "must be a number >= 0")
    c.need("regularization.weight_decay", lambda v: finite(v) and v >= 0, "must be a number >= 0")
    c.need("regularization.dropout", lambda v: 0 <= v < 1, "must be a probability in [0, 1)")
    c.need("regularization.grad_clip", lambda v: finite(v) and v > 0, "must be null (off) or a number > 0")
    c.need("optimizer.momentum", lambda v: v >= 0, "must be a number >= 0")
    if c.get("optimizer.nesterov") and not (c.get("optimizer.momentum") or 0) > 0:
        c.problem(
            f"optimizer.nesterov=True: needs optimizer.momentum > 0 "
            f"(got optimizer.momentum={c.get('optimizer.momentum')})"
        )
    c.choice("scheduler.interval", ("epoch", "step"))
    c.need("scheduler.step_size", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    c.need("scheduler.T_max", lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1")
    if (
        c.get("scheduler._target_") == "torch.optim.lr_scheduler.ReduceLROnPlateau"
        and c.get("scheduler.interval") == "step"
    ):
        c.problem("scheduler.interval='step': ReduceLROnPlateau steps on the validation loss; allowed: epoch")
    c.need("scheduler.warmup_ratio", lambda v: 0 <= v < 1, "must be a fraction in [0, 1); 0 = no warmup")
    if c.get("scheduler") is not None and "warmup_ratio" not in c.get("scheduler"):
        c.problem(
            "scheduler.warmup_ratio is missing: every scheduler option needs "
            "warmup_ratio and interval (see conf/scheduler/none.yaml)"
        )


def _check_data(c: Checks) -> None:
    c.need("data.val_fraction", lambda v: 0 < v < 1, "must be a fraction in (0, 1)")
    c.need("data.test_fraction", lambda v: 0 < v < 1, "must be a fraction in (0, 1)")
    vf, tf = c.get("data.val_fraction"), c.get("data.test_fraction")
    if is_finite_number(vf) and is_finite_number(tf) and vf + tf >= 1:
        c.problem(f"data.val_fraction + data.test_fraction = {vf + tf:g}: must be < 1 to leave training data")
    c.found.extend(_empty_splits(c.get))
    c.need("data.num_workers", lambda v: v >= 0, "must be an integer >= 0")
    c.need("data.num_samples", lambda v: v >= 10, "must be an integer >= 10")
    c.need("data.num_classes", lambda v: v >= 2, "must be an integer >= 2")
    c.need(
        "data.input_shape",
        lambda v: len(v) == 3 and all(isinstance(d, int) and d >= 1 for d in v),
        "must be [C, H, W], three integers >= 1",
    )
    if c.get("data._target_") == "nettrain.data.torchvision_dataset":
        c.choice("data.name", TORCHVISION_DATASETS)


def _check_monitors(c: Checks) -> None:
    """The metrics, early stopping and the gradient monitor."""
    finite = is_finite_number
    _check_metrics(c)
    c.need("early_stopping.patience", lambda v: v >= 1, "must be an integer >= 1")
    c.need("early_stopping.min_delta", lambda v: finite(v) and v >= 0, "must be a number >= 0")
    c.need("grad_monitor.every_n_steps", lambda v: v >= 1, "must be an integer >= 1 (1 = every step)")
    for key in ("vanishing_below", "exploding_above", "ratio", "update_ratio_above", "norm_growth", "dead_fraction"):
        c.need(f"grad_monitor.{key}", lambda v: finite(v) and v > 0, "must be a number > 0")
    c.need("grad_monitor.dead_fraction", lambda v: v <= 1, "must be a fraction in (0, 1]")


def _check_graph(c: Checks) -> None:
    """trainer.compile's value, trainer.cuda_graph's, and `cuda_graph=on` with a setting that
    cannot be captured (judged from the config; a device chosen by `auto` is judged at build)."""
    compile_value = c.get("trainer.compile")
    c.need(
        "trainer.compile",
        lambda v: isinstance(v, bool) or v in COMPILE_MODES,
        "allowed: false, true, " + ", ".join(COMPILE_MODES),
    )
    c.choice("trainer.cuda_graph", SETTINGS)
    if c.get("trainer.cuda_graph") != "on" or not (isinstance(compile_value, bool) or compile_value in COMPILE_MODES):
        return
    device = c.get("device")
    for problem in plan(
        "on",
        device=device if isinstance(device, str) and DEVICE_PATTERN.match(device) else "auto",
        precision=str(c.get("trainer.precision")),
        in_memory=c.get("data.in_memory") is not False,
        optimizer=c.get("optimizer._target_"),
        optimizer_options=dict(c.get("optimizer") or {}),
        fused_optimizer=str(c.get("trainer.fused_optimizer")),
        compile=compile_value,
    ).refusal():
        c.problem(problem)


def logger_problems(names: Iterable[str]) -> list[str]:
    """Config problems with `loggers`: unknown names, or a logger whose package is missing."""
    found = []
    names = list(names)
    for name in names:
        if name not in LOGGER_PACKAGES:
            found.append(f"loggers={names}: unknown logger {name!r}; allowed: {', '.join(LOGGER_PACKAGES)}")
            continue
        package = LOGGER_PACKAGES[name]
        if package and importlib.util.find_spec(package[0]) is None:
            found.append(
                f"loggers={names}: {name} needs the {package[0]} package; install it with "
                f'pip install "nettrain[{package[1]}]"'
            )
    return found


def _check_callbacks(c: Checks) -> None:
    """callbacks: a list of `_target_` mappings (what each one builds is checked when it is built);
    callbacks_every_n_steps: an interval."""
    c.need("callbacks_every_n_steps", lambda v: v >= 1, "must be an integer >= 1 (1 = every step)")
    nodes = c.get("callbacks")
    if nodes is None:
        return
    for i, node in enumerate(nodes):
        target = node.get("_target_") if isinstance(node, (dict, DictConfig)) else None
        if not isinstance(target, str) or not target:
            c.problem(
                f"callbacks[{i}]={_fmt(node)}: each callback is a mapping with a _target_, "
                "e.g. callbacks='[{_target_: mycallbacks.PrintLoss, every: 10}]'"
            )


def _check_tools(c: Checks) -> None:
    """The loggers (unknown, or their package missing), the callbacks, dry_run and the finders."""
    _check_callbacks(c)
    c.choice("logger.wandb.mode", ("auto", "online", "offline"))
    c.found += logger_problems(c.get("loggers") or [])
    c.choice("find", ("lr", "batch_size"))
    if c.get("find") is not None and c.get("dry_run"):
        c.problem(f"dry_run=True and find={c.get('find')!r}: choose one")
    c.need("lr_find.start_lr", lambda v: v > 0, "must be a number > 0")
    start, end = c.get("lr_find.start_lr"), c.get("lr_find.end_lr")
    if is_finite_number(start) and is_finite_number(end) and not end > start:
        c.problem(f"lr_find.end_lr={end}: must be above lr_find.start_lr={start}")
    c.need("lr_find.steps", lambda v: v >= 10, "must be an integer >= 10")
    c.need("lr_find.smoothing", lambda v: 0 <= v < 1, "must be in [0, 1)")
    c.need("lr_find.diverge", lambda v: v > 1, "must be a number > 1")


def _check_imbalance(c: Checks) -> None:
    """loss.class_weights and data.sampler (nettrain/engine/balance.py): classification only; a
    list of weights must be finite numbers > 0 (its length is checked against the data's classes
    when the data is built); torch's own `loss.weight` takes a tensor, which a setting cannot give."""
    weights, sampler = c.get("loss.class_weights"), c.get("data.sampler")
    c.need(
        "loss.class_weights",
        lambda v: (
            v == "balanced"
            or (not isinstance(v, str) and len(v) >= 1 and all(is_finite_number(w) and w > 0 for w in v))
        ),
        "allowed: null, balanced, or [w0, w1, ...]: one weight per class, each a finite number > 0",
    )
    c.choice("data.sampler", SAMPLERS)
    if c.get("data.task") == "multilabel":
        return  # _check_multilabel
    if weights is not None and c.get("loss.reduction") not in (None, "mean"):
        c.problem(
            f"loss.reduction={_fmt(c.get('loss.reduction'))}: loss.class_weights averages the weighted loss over "
            "the samples; allowed with it: mean"
        )
    if c.get("data.task") == "regression":
        for key, value in (("loss.class_weights", weights), ("data.sampler", sampler)):
            if value is not None and value != "shuffle":
                c.problem(f"{key}={_fmt(value)}: weighs classes, and data.task='regression' has none")
    torch_weight, target = c.get("loss.weight"), c.get("loss._target_")
    if str(target).startswith("torch.nn.") and isinstance(torch_weight, Iterable) and not isinstance(torch_weight, str):
        c.problem(
            f"loss.weight={_fmt(torch_weight)}: torch takes the class weights as a tensor; "
            f"give them as loss.class_weights={_fmt(torch_weight)} (or loss.class_weights=balanced)"
        )


def _check_multilabel(c: Checks) -> None:
    """data.task and the loss, both ways (a cross-entropy loss would take 0/1 label rows as class
    probabilities and train the wrong model silently), and, for multilabel data, the settings that
    apply to single-label classes only: class weights, the balanced sampler, label smoothing, mixup."""
    task, loss = c.get("data.task") or "classification", c.get("loss._target_")
    if task not in FITTING_LOSSES or not isinstance(loss, str):
        return
    takes, fitting = FITTING_LOSSES[task]
    other = [t for t, (_, losses) in FITTING_LOSSES.items() if t != task and loss in losses and loss not in fitting]
    wrong_loss = bool(other) and not (task == "regression" and loss == "torch.nn.CrossEntropyLoss")  # becomes MSE
    if wrong_loss:
        allowed = ", ".join(f"{name} (loss={LOSS_OPTIONS[name]})" if name in LOSS_OPTIONS else name for name in fitting)
        c.problem(f"loss={loss}: does not fit {task} data, whose loss takes {takes}; allowed: {allowed}")
    if task != "multilabel":
        if c.get("data.labels_file") is not None:
            c.problem(
                f"data.labels_file={_fmt(c.get('data.labels_file'))}: gives several 0/1 labels per image, "
                f"for data.task=multilabel; data.task={task!r} allowed: null (labels from the class folders)"
            )
        target = c.get("data.target")
        if not isinstance(target, str) and isinstance(target, Iterable) and c.get("data.path") is not None:
            c.problem(
                f"data.target={_fmt(list(target))}: several target columns are for data.task=multilabel; "
                f"data.task={task!r} allowed: one column"
            )
        return
    single = "applies to single-label classes; data.task='multilabel' allowed"
    loss_keys = () if wrong_loss else (("loss.class_weights", None), ("loss.label_smoothing", 0))  # the loss's own
    for key, off in (*loss_keys, ("data.sampler", "shuffle")):
        value = c.get(key)
        if value is not None and value != off:
            shown = "null" if off is None else _fmt(off)
            c.problem(f"{key}={_fmt(value)}: {single}: {shown}")
    if c.get("data.mix") not in (None, "none"):
        c.problem(f"data.mix={_fmt(c.get('data.mix'))}: mixes one-hot class targets; {single}: 'none'")
    if c.get("data._target_") == "nettrain.data.image_folder.image_folder" and c.get("data.labels_file") is None:
        c.problem(
            "data.labels_file=None: data.task=multilabel reads each image's labels from a labels file; "
            "allowed: a CSV path (a `file` column, then one 0/1 column per label), relative to data.root or absolute"
        )
    target = c.get("data.target")
    if isinstance(target, str) and target != MISSING:
        c.problem(
            f"data.target={_fmt(target)}: data.task=multilabel takes a list of 0/1 label columns; "
            "allowed: [COLUMN, COLUMN, ...], e.g. 'data.target=[a,b,c]'"
        )


def _check_profile(c: Checks) -> None:
    """profile=true and its steps: a mode of its own, like dry_run and the finders."""

    def count(least: int):
        return lambda v: isinstance(v, int) and not isinstance(v, bool) and least <= v <= 10_000

    c.need("profiler.warmup", count(1), "must be an integer in 1..10000 (the first steps pay one-off costs)")
    c.need("profiler.steps", count(1), "must be an integer in 1..10000")
    if not c.get("profile"):
        return
    for other, value in (("dry_run", c.get("dry_run")), ("find", c.get("find")), ("resume", c.get("resume"))):
        if value:
            c.problem(f"profile=True and {other}={_fmt(value)}: choose one (profile=true profiles a fresh run)")


def _check_augment(c: Checks) -> None:
    """augment.* (torchvision's image transforms): ranges, and image data only."""
    c.need(
        "augment.resized_crop",
        lambda v: is_finite_number(v) and 0 < v <= 1,
        "must be null (off) or the smallest share of the area kept, in (0, 1]",
    )
    c.need("augment.flip", lambda v: isinstance(v, bool), "allowed: true, false")
    c.need("augment.color_jitter", lambda v: is_finite_number(v) and 0 < v < 1, "must be null (off) or in (0, 1)")
    c.choice("augment.policy", POLICIES)
    c.need("augment.erasing", lambda v: is_finite_number(v) and 0 <= v <= 1, "must be a probability in [0, 1]")
    active = image_augment_settings(c.get("augment") or {})
    if not active:
        return
    kind = NOT_IMAGES.get(c.get("data._target_"))
    if kind is not None:
        shown = ", ".join(f"augment.{key}={_fmt(value)}" for key, value in active.items())
        c.problem(f"{shown}: image transforms, and {kind}; allowed for image data only: augment=none")
    if active.get("flip") and c.get("data.augment") in ("flip", "flip_crop"):
        c.problem(
            f"augment.flip=True and data.augment={_fmt(c.get('data.augment'))}: both flip the images; "
            "choose one (data.augment=crop keeps the crop)"
        )


def image_augment_settings(node: Any) -> dict[str, Any]:
    """The augment.* settings that are on (a section of the config, or a plain dict)."""
    defaults = AugmentConfig()
    return {
        key: node[key]
        for key in ("resized_crop", "flip", "color_jitter", "policy", "erasing")
        if key in node and node[key] != getattr(defaults, key)
    }
