"""`nettrain-train`: compose the config with Hydra, build the pieces, run the loop.

`main` is the thin Hydra entry point; `train(cfg, output_dir)` does the work and returns the
run's summary, so tests and scripts can call it directly with a config from Hydra's compose API.

torch is imported inside `train`, not at module level, so `nettrain-train --help` and config
errors answer without paying for `import torch`.

Re-run a finished run (Hydra's way):   nettrain-train --config-dir RUN_DIR/.hydra --config-name config
Resume an interrupted one:             nettrain-train resume=RUN_DIR
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from nettrain.config import MONITORED, ConfigError, flatten, matches, register_schema, validate

log = logging.getLogger("nettrain")

# Keys that may change when a run is resumed: they do not change what the run computes so far.
SAFE_ON_RESUME = ("epochs", "resume", "device", "threads", "console.", "checkpoint.", "early_stopping.enabled",
                  "early_stopping.patience", "early_stopping.min_delta")
FINISHED = ("completed", "early_stopped")


def resolve_device(name: str):
    """`auto` -> cuda if available, else mps, else cpu; an explicit device must exist."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError([f"device={name!r}: CUDA is not available here; allowed: auto, cpu"])
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError([f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s), "
                               f"allowed: cuda:0 .. cuda:{torch.cuda.device_count() - 1}"])
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([f"device={name!r}: MPS is not available here; allowed: auto, cpu"])
    return device


def _instantiate(node: Any, group: str, *call_args, **kwargs):
    """hydra.utils.instantiate, then call the partial with call_args if any; a failure becomes a
    config error that names the group and the target."""
    from hydra.utils import instantiate

    with _building(group, node.get("_target_")):
        built = instantiate(node, **kwargs)
        return built(*call_args) if call_args else built


@contextlib.contextmanager
def _building(group: str, target: str | None):
    from hydra.errors import InstantiationException

    try:
        yield
    except (InstantiationException, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        cause = exc.__cause__ if isinstance(exc, InstantiationException) and exc.__cause__ else exc
        raise ConfigError([f"{group}: could not build {target}: {cause}"]) from exc


FUSED_OPTIMIZERS = ("torch.optim.Adam", "torch.optim.AdamW", "torch.optim.SGD")


def fused_kwargs(target: str, device, setting: str = "auto") -> dict[str, bool]:
    """`fused=True` for torch optimizers with fused kernels: on CUDA under `auto`, always under
    `on`; nothing (torch's default) otherwise, so CPU runs keep their exact arithmetic."""
    if target in FUSED_OPTIMIZERS and (setting == "on" or (setting == "auto" and device.type == "cuda")):
        return {"fused": True}
    return {}


def _has_conv(model) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def build_data_and_model(cfg: DictConfig, device):
    """The data splits, the loader settings (in_memory, num_workers) and the model on `device`."""
    data_node = OmegaConf.to_container(cfg.data, resolve=True)
    loader = {"in_memory": data_node.pop("in_memory", True), "num_workers": data_node.pop("num_workers", 0)}
    data = _instantiate(data_node, "data")
    model = _instantiate(cfg.model, "model", input_shape=list(data.input_shape),
                         num_classes=data.num_classes).to(device)
    return data, loader, model


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def run_dir_of(resume: str) -> Path:
    """A run dir, or a checkpoint file inside RUN_DIR/checkpoints/ -> the run dir."""
    path = Path(resume).expanduser().resolve()
    return path.parent.parent if path.is_file() else path


def config_changes(old: dict, new: dict, safe: tuple[str, ...] = SAFE_ON_RESUME) -> list[str]:
    """'key: old -> new' for every resolved setting that differs, except the safe ones."""
    a, b = flatten(old), flatten(new)
    changed = []
    for key in sorted(set(a) | set(b)):
        if matches(key, safe):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            changed.append(f"{key}: {a.get(key, '<unset>')!r} -> {b.get(key, '<unset>')!r}")
    return changed


@contextlib.contextmanager
def stop_on_signals(stop):
    """SIGINT/SIGTERM ask the loop to finish its step, save and leave; a second one waits for the save."""
    def handler(signum, frame):
        if stop.signum is not None:
            os.write(2, b"\nstill stopping: writing the checkpoint, please wait\n")
            return
        stop.request(signum)
        os.write(2, f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint\n".encode())

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _hydra_output_subdir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except ValueError:  # not running under Hydra
        return None
    return Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None


def _rerun_source() -> Path | None:
    """The --config-dir a re-run composed its primary config from, if any."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except ValueError:
        return None
    for source in sources:
        if source.provider == "command-line" and source.schema == "file":
            return Path(source.path)
    return None


def train(cfg: DictConfig, output_dir: str | Path | None = None, stop=None) -> dict[str, Any]:
    """Train the configured model; write metrics, checkpoints, plots and summary; return the summary.

    With `cfg.resume` set, continue that run in its own folder from its newest valid checkpoint.
    `stop` (a loop.StopRequest) lets a caller interrupt the run; SIGINT/SIGTERM do the same.
    """
    validate(cfg)
    started = time.perf_counter()
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    output_dir = Path(output_dir)
    if cfg.resume and run_dir_of(cfg.resume) != output_dir.resolve():
        raise ConfigError([f"resume={cfg.resume!r}: resume continues a run in its own folder; use "
                           f"`nettrain-train resume=RUN_DIR` (not combined with --multirun or hydra.run.dir)"])
    summary_path = output_dir / "summary.json"
    resume_from = Path(cfg.resume).expanduser() if cfg.resume else None
    if not cfg.resume and _in_multirun():  # a re-launched sweep: skip, resume or re-run this config
        from nettrain.sweep import claim, config_hash

        previous = claim(output_dir, config_hash(OmegaConf.to_container(cfg, resolve=True)), launch_id())
        status = (previous or {}).get("status")
        if status in FINISHED:
            print(f"{output_dir}: this config already finished ({status}); skipped")
            return {**previous, "already_finished": True}
        if status == "interrupted" and any((output_dir / "checkpoints").glob("*.pt")):
            resume_from = output_dir
    if cfg.resume and summary_path.is_file():
        previous = json.loads(summary_path.read_text())
        if previous.get("status") in FINISHED and (previous["stopped_early"] or previous["epochs_run"] >= cfg.epochs):
            how = ("it stopped early: early_stopping.patience ran out" if previous["stopped_early"] else
                   f"it ran all {previous['epochs_run']} epochs; give a larger epochs=N to train longer")
            print(f"{output_dir} already finished ({previous['status']} after {previous['epochs_run']} "
                  f"epochs); nothing to do: {how}.")
            return {**previous, "already_finished": True}

    from nettrain.loop import StopRequest

    stop = stop or StopRequest()
    try:
        with stop_on_signals(stop):  # from here on, SIGINT/SIGTERM stop the run cleanly
            return _train(cfg, output_dir, started, stop, resume_from)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:  # record the failure for sweeps and summaries, then let it propagate
        first_line = (str(exc).strip().splitlines() or [""])[0]
        write_failure(output_dir, cfg, f"{type(exc).__name__}: {first_line}", time.perf_counter() - started)
        raise


def write_failure(output_dir: Path, cfg: DictConfig, error: str, wall_time_s: float = 0.0) -> None:
    """summary.json for a run that failed: its status, the error's first line, its config hash."""
    from nettrain.files import write_json
    from nettrain.sweep import config_hash

    write_json(output_dir / "summary.json", {
        "status": "failed", "error": error, "wall_time_s": round(wall_time_s, 3),
        "config_hash": config_hash(OmegaConf.to_container(cfg, resolve=True)), "launch": launch_id()})


def launch_id() -> str | None:
    """Which multirun launch this process belongs to (set by the sweep callback), if any."""
    return os.environ.get("NETTRAIN_LAUNCH")


def _train(cfg: DictConfig, output_dir: Path, started: float, stop, resume_from: Path | None) -> dict[str, Any]:
    import torch

    from nettrain import checkpoint as ckpt
    from nettrain import data as data_lib
    from nettrain.early_stopping import EarlyStopping
    from nettrain.files import write_json
    from nettrain.grad_monitor import GradientMonitor
    from nettrain.loop import evaluate, fit
    from nettrain.metrics import MetricsWriter
    from nettrain.memory import estimate_training_memory
    from nettrain.models import param_count
    from nettrain.precision import Precision
    from nettrain.report import Reporter, save_plots
    from nettrain.reproducibility import provenance, provenance_differences, seed_everything
    from nettrain.schedulers import build_schedule
    from nettrain.sweep import config_hash

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, cfg.deterministic)
    reporter = Reporter(**cfg.console)
    plain_config = OmegaConf.to_container(cfg, resolve=True)

    # -- resume: the newest valid checkpoint, and only safe changes to the config ---------------
    state = None
    if resume_from is not None:
        try:
            if resume_from.is_file():
                resume_path, state = resume_from, ckpt.load_checkpoint(resume_from)
            else:
                resume_path, state = ckpt.newest_valid(output_dir / "checkpoints", report=reporter.warn)
        except ckpt.CheckpointError as exc:
            raise ConfigError([f"resume={str(resume_from)!r}: {exc}; allowed: a run dir with a valid "
                               "checkpoints/last.pt, previous.pt or best.pt, or one such file"]) from None
        changes = config_changes(state["config"], plain_config)
        if changes:
            raise ConfigError([f"resume={str(resume_from)!r}: these settings differ from the run being resumed "
                               f"and would change it: {'; '.join(changes)}. Allowed to change on resume: "
                               + ", ".join(s.rstrip(".") + ("*" if s.endswith(".") else "") for s in SAFE_ON_RESUME)])
        reporter.note(f"resuming {output_dir} from {resume_path.name}: epoch {state['epoch']} done, "
                      f"step {state['progress']['step_in_epoch']} of the next")

    # -- build: data, model, loss, optimizer, schedule ------------------------------------------
    data, loader, model = build_data_and_model(cfg, device)
    in_memory, num_workers = loader["in_memory"], loader["num_workers"]
    tr = cfg.trainer
    if tr.channels_last == "on" or (tr.channels_last == "auto" and device.type == "cuda" and _has_conv(model)):
        model = model.to(memory_format=torch.channels_last)
        for split in (data.train, data.val, data.test):
            split.x = split.x.contiguous(memory_format=torch.channels_last)
    loss_fn = _instantiate(cfg.loss, "loss")
    optimizer = _instantiate(cfg.optimizer, "optimizer", model.parameters(), _partial_=True,
                             **fused_kwargs(cfg.optimizer._target_, device, tr.fused_optimizer))
    precision = Precision(tr.precision, device)
    if tr.compile:
        model.compile()  # in place: state_dict keys and checkpoints stay the same
    order = torch.Generator().manual_seed(cfg.seed)  # the data order has its own generator
    train_batches = data_lib.Batches(data.train, cfg.batch_size, device, shuffle=True, generator=order,
                                     in_memory=in_memory, num_workers=num_workers)
    val_batches = data_lib.Batches(data.val, cfg.batch_size, device, in_memory=in_memory,
                                   num_workers=num_workers)
    with _building("scheduler", cfg.scheduler._target_):
        schedule = build_schedule(optimizer, OmegaConf.to_container(cfg.scheduler, resolve=True),
                                  steps_per_epoch=len(train_batches), epochs=cfg.epochs)
    es = cfg.early_stopping
    early_stopping = EarlyStopping(monitor=es.monitor, mode=MONITORED[es.monitor], patience=es.patience,
                                   min_delta=es.min_delta, enabled=es.enabled)
    gm = cfg.grad_monitor
    grad_monitor = GradientMonitor(model.named_parameters(), enabled=gm.enabled,
                                   vanishing_below=gm.vanishing_below,
                                   exploding_above=gm.exploding_above, ratio=gm.ratio,
                                   skip_nonfinite=tr.precision == "fp16", every_n_steps=gm.every_n_steps)
    if state is None:
        _set_aside_old_results(output_dir, reporter)
    checkpointer = ckpt.Checkpointer(output_dir / "checkpoints", plain_config, enabled=cfg.checkpoint.enabled)
    start = None
    if state is not None:
        start = ckpt.restore(state, model=model, optimizer=optimizer, schedule=schedule,
                             early_stopping=early_stopping, grad_monitor=grad_monitor, precision=precision,
                             data_generator=order, device=device)
    metrics = MetricsWriter(output_dir / "metrics.csv", rows=start.history if start else None)

    # -- provenance: where this run came from, and what differs from the run it repeats ----------
    record = provenance(device, data.fingerprint())
    record_dir = _hydra_output_subdir() or output_dir
    write_json(record_dir / "provenance.json", record)
    origin = (output_dir / ".hydra") if resume_from is not None else _rerun_source()
    if origin is not None and (origin / "provenance.json").is_file() and origin != record_dir:
        for line in provenance_differences(json.loads((origin / "provenance.json").read_text()), record):
            reporter.warn(f"differs from the original run: {line}")

    n_params = param_count(model)
    memory_estimate_mb = estimate_training_memory(model, optimizer, data.input_shape, cfg.batch_size) / 2**20
    reporter.start(OmegaConf.to_yaml(cfg), model, n_params, str(device), output_dir)
    reporter.note(f"training memory, rule of thumb: ~{memory_estimate_mb:.1f} MiB "
                  "(weights, gradients, optimizer state, one batch of activations; 4 bytes each)")
    reporter.note(f"data: {data.name}, train {len(data.train)} / val {len(data.val)} / "
                  f"test {len(data.test)}, input {list(data.input_shape)}, {data.num_classes} classes")

    # -- train, then test the best weights -------------------------------------------------------
    result = fit(model=model, loss_fn=loss_fn, optimizer=optimizer, schedule=schedule,
                 train_batches=train_batches, val_batches=val_batches, epochs=cfg.epochs,
                 grad_monitor=grad_monitor, early_stopping=early_stopping, checkpointer=checkpointer,
                 metrics=metrics, reporter=reporter, l1=cfg.regularization.l1,
                 grad_clip=cfg.regularization.grad_clip, restore_best=es.restore_best,
                 start=start, stop=stop, precision=precision)
    summary: dict[str, Any] = {
        "status": "interrupted" if result.interrupted else
        "early_stopped" if result.stopped_early else "completed",
        "best_epoch": result.best_epoch,
        "best_val_loss": None, "best_val_acc": None, "test_loss": None, "test_acc": None,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "monitor": es.monitor,
    }
    best_row = next((r for r in metrics.rows if r["epoch"] == result.best_epoch), None)
    if best_row is not None:
        summary.update(best_val_loss=best_row["val_loss"], best_val_acc=best_row["val_acc"])
    if not result.interrupted:
        test_batches = data_lib.Batches(data.test, cfg.batch_size, device, in_memory=in_memory,
                                        num_workers=num_workers)
        summary["test_loss"], summary["test_acc"] = evaluate(model, loss_fn, test_batches)
    summary.update({
        "wall_time_s": round(time.perf_counter() - started, 3),
        "device": str(device),
        "device_name": record["device_name"],
        "param_count": n_params,
        "samples_per_s": (sum(r["samples_per_s"] for r in metrics.rows) / len(metrics.rows)
                          if metrics.rows else None),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "memory_estimate_mb": round(memory_estimate_mb, 2),
        "cuda_peak_memory_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 2)
                                if device.type == "cuda" else None),
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "precision": tr.precision,
        "torch_threads": torch.get_num_threads(),
        "data_fingerprint": record["data_fingerprint"],
        "config_hash": config_hash(plain_config),
        "launch": launch_id(),
    })
    if result.interrupted:
        summary["signal"] = stop.signum
    save_plots(metrics.rows, output_dir / "plots")
    write_json(output_dir / "summary.json", summary)
    reporter.summary(summary)
    if result.interrupted and cfg.checkpoint.enabled:
        reporter.note(f"interrupted after {stop.steps} steps this session; a checkpoint is saved. "
                      f"Resume with:\n  nettrain-train resume={output_dir.resolve()}")
    elif result.interrupted:
        reporter.note(f"interrupted after {stop.steps} steps; checkpoint.enabled=false, so it cannot be resumed")
    return summary


def _set_aside_old_results(output_dir: Path, reporter) -> None:
    """A fresh run in a folder that holds an earlier run's results (a failed sweep job run again,
    a reused hydra.run.dir) moves them to previous-<time>/ first: nothing is lost, and resume can
    never pick up the other run's checkpoints."""
    old = [name for name in ("checkpoints", "metrics.csv", "plots", "summary.json") if (output_dir / name).exists()]
    if not old:
        return
    aside = output_dir / f"previous-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}"
    aside.mkdir(parents=True)
    for name in old:
        os.replace(output_dir / name, aside / name)
    reporter.note(f"an earlier run's results were in {output_dir}; moved to {aside.name}/")


def make_rerunnable(config_yaml: Path) -> None:
    """Turn Hydra's saved config.yaml into a primary config of its own: the schema in its defaults
    list, and nettrain's output and logging settings, so that
    `nettrain-train --config-dir RUN_DIR/.hydra --config-name config` re-runs it faithfully."""
    from importlib.resources import files

    from nettrain.files import write_text

    saved = OmegaConf.load(config_yaml)
    if "defaults" in saved:
        return
    primary = OmegaConf.create(files("nettrain.conf").joinpath("train.yaml").read_text())
    rerun = OmegaConf.create({"defaults": ["nettrain_schema", "_self_"]})
    rerun = OmegaConf.merge(rerun, saved, {"hydra": primary.hydra})
    write_text(config_yaml, "# The composed config of this run. Re-run it with:\n"
                            f"#   nettrain-train --config-dir {config_yaml.parent} --config-name config\n"
                            + OmegaConf.to_yaml(rerun))


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="pkg://nettrain.conf", config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    subdir = _hydra_output_subdir()
    if subdir is not None and (subdir / "config.yaml").is_file():
        make_rerunnable(subdir / "config.yaml")
    try:
        summary = train(cfg)
    except ConfigError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"Error: {exc}", file=sys.stderr)
        if _in_multirun():  # one bad job must not take the sweep down; the summary records it
            from hydra.core.hydra_config import HydraConfig

            write_failure(Path(HydraConfig.get().runtime.output_dir), cfg, f"ConfigError: {exc.problems[0]}")
            return None  # not NaN: the Optuna sweeper fails on NaN; None marks the trial failed
        sys.exit(2)
    except Exception as exc:  # noqa: BLE001
        if not _in_multirun():
            raise
        print(f"Error: job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if summary.get("status") == "interrupted":
        sys.exit(128 + (summary.get("signal") or signal.SIGINT))
    return summary["best_val_loss"]  # the objective a hyperparameter sweeper minimises


def _resume_argv(argv: list[str]) -> list[str]:
    """`nettrain-train resume=RUN_DIR [overrides]` -> compose that run's saved config, in its folder.

    This is Hydra's re-run (`--config-dir RUN_DIR/.hydra --config-name config`) with the run dir
    pinned to RUN_DIR; the resumed session's own Hydra files go to RUN_DIR/.hydra/resume-<time>/."""
    args = argv[1:]
    resume = [a for a in args if a.startswith("resume=")]
    if not resume or "-m" in args or "--multirun" in args:
        return argv
    value = resume[-1].split("=", 1)[1]
    run_dir = run_dir_of(value)
    saved = run_dir / ".hydra" / "config.yaml"
    if not value or not saved.is_file():
        print(f"Error: resume={value!r}: not a nettrain run folder or checkpoint (no {saved}); "
              "allowed: a run dir such as outputs/2026-01-01/12-00-00-000000, or a checkpoint in its "
              "checkpoints/ folder", file=sys.stderr)
        sys.exit(2)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    return [argv[0], "--config-dir", str(saved.parent), "--config-name", "config", *args,
            f"hydra.run.dir='{run_dir}'", f"hydra.output_subdir=.hydra/resume-{stamp}"]


def main() -> None:
    register_schema()
    sys.argv = _resume_argv(sys.argv)
    _hydra_main()
    from nettrain.callbacks import sweep_exit_code

    if sweep_exit_code():  # a multirun with a failed or incomplete job; the sweep summary says which
        sys.exit(1)


if __name__ == "__main__":
    main()
