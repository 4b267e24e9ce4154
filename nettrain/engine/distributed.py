"""Several processes, one training: torch.distributed under torchrun or SLURM.

How the processes were started and what they settle before Hydra starts (one run dir, the
refusal of `-m`) is nettrain/run/launch.py; this module joins the process group and runs the
collectives. The rules every rank follows, so that N processes compute what one would:
- the global batch: every rank draws the same permutation from the run's generator and takes
  its contiguous share of each global batch (nettrain.data.share_of); a rank's loss is weighted
  by its share of the batch (nettrain.data.loss_weight), so the averaged gradient is the global
  batch's mean;
- shared results: validation and test are sharded and their sums all-reduced
  (:func:`all_reduce_sum`); a stop request on any rank stops every rank at the same step
  (:class:`SharedStop`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from nettrain.errors import ConfigError
from nettrain.run import launch
from nettrain.run.launch import TIMEOUT, Context, DistEnv, detect, prefix_warnings, store

BACKENDS = ("auto", "gloo", "nccl")

_control_group: Any = None  # a gloo group for the small CPU messages (stop flags) under nccl
_owns_group = False
_device: Any = None  # this rank's device while in the group


# -- the device and the backend ---------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda if available, else mps, else cpu; an explicit device must exist."""
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
            raise ConfigError(
                [
                    f"device={name!r}: only {torch.cuda.device_count()} CUDA device(s), "
                    f"allowed: cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
                ]
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([f"device={name!r}: MPS is not available here; allowed: auto, cpu"])
    return device


def device_name(setting: str, env: DistEnv, cuda_available: bool) -> str:
    """The device of this rank: cuda:LOCAL_RANK for auto/cuda when CUDA is there, else cpu.

    An explicit cuda:N (or mps) is refused: every rank would pick the same device."""
    if setting == "cpu" or (setting == "auto" and not cuda_available):
        return "cpu"
    if setting in ("auto", "cuda"):
        if not cuda_available:
            raise ConfigError([f"device={setting!r}: CUDA is not available here; allowed: auto, cpu"])
        return f"cuda:{env.local_rank}"
    why = (
        f"device={setting!r}: under {env.launcher} each process uses the GPU of its local rank "
        f"(cuda:LOCAL_RANK, here cuda:{env.local_rank}), so one fixed device cannot be given; "
        "allowed: auto, cuda, cpu (choose the GPUs with CUDA_VISIBLE_DEVICES)"
    )
    raise ConfigError([why])


def backend_for(setting: str, device_type: str) -> str:
    """`distributed.backend`: auto -> nccl on CUDA, gloo on CPU; nccl needs CUDA."""
    if setting == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if setting == "nccl" and device_type != "cuda":
        raise ConfigError(
            [f"distributed.backend='nccl': needs device=cuda (this run is on {device_type}); allowed: auto, gloo"]
        )
    return setting


def sync_batchnorm(model, enabled: bool, device):
    """`model.sync_bn`: BatchNorm -> SyncBatchNorm in a process group (a no-op in one process)."""
    if not (enabled and launch.context().distributed):
        return model
    if device.type != "cuda":
        why = f"model.sync_bn=True: torch's SyncBatchNorm runs on CUDA only (this run is on {device}); allowed on CPU: false"
        raise ConfigError([why])
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model, device):
    """The DistributedDataParallel wrapper of `model` in a process group (None in one process)."""
    if not launch.context().distributed:
        return None
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


# -- the process group ------------------------------------------------------------------------


def init(env: DistEnv, backend: str, device) -> Context:
    """Join the process group (once per process) and return this rank's context."""
    global _control_group, _owns_group
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend,
            store=store(env),
            rank=env.rank,
            world_size=env.world_size,
            timeout=TIMEOUT,
            **kwargs,
        )
        _owns_group = True
        _control_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    launch.set_context(Context(env.rank, env.world_size, env.local_rank, dist.get_backend(), env.launcher))
    if env.rank != 0:
        prefix_warnings(env.rank)
    return launch.context()


@contextlib.contextmanager
def group(cfg) -> Iterator[Any]:
    """Around one run: under torchrun/SLURM, join the process group (unless this process already
    has, as nettrain-verify-resume does for its three runs) and yield this rank's device; leave
    the group afterwards. Yields None in a single process."""
    env = detect()
    if env is None:
        yield None
        return
    if launch.context().distributed:
        yield _device
        return
    device = join(cfg, env)
    try:
        yield device
    except BaseException:
        shutdown(wait=False)
        raise
    shutdown()


def join(cfg, env: DistEnv | None = None):
    """Join the process group for the run config `cfg` (device, distributed.backend); return the device."""
    global _device
    env = env or detect()
    assert env is not None
    _device = resolve_device(device_name(cfg.device, env, torch.cuda.is_available()))
    init(env, backend_for(cfg.distributed.backend, _device.type), _device)
    return _device


def shutdown(wait: bool = True) -> None:
    """Leave the process group this module joined (a no-op otherwise); `wait`: after every rank
    got here (rank 0 may still be writing), so no rank's exit cuts another short."""
    global _control_group, _owns_group
    if _owns_group and dist.is_initialized():
        if wait:
            dist.barrier(group=_control_group)
        dist.destroy_process_group()
    launch.set_context(None)
    _control_group, _owns_group = None, False


def all_reduce_sum(*tensors):
    """Sum each tensor over the ranks, in place (a no-op in one process); returns them."""
    if launch.context().distributed:
        for t in tensors:
            dist.all_reduce(t)
    return tensors


def broadcast_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, before evaluating or saving."""
    if launch.context().distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank (any picklable value made by this program, never user input)."""
    if not launch.context().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]


def agree(flag: int) -> int:
    """The largest of every rank's `flag` (a CPU all-reduce over the control group)."""
    if not launch.context().distributed:
        return flag
    t = torch.tensor([flag], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return int(t.item())


def shared_stop(stop, every: int):
    """In a process group: `stop` as a SharedStop checking every `every` steps (a new one when
    None); outside one: None, and the caller keeps its own."""
    if not launch.context().distributed:
        return None
    stop = stop or SharedStop()
    if not isinstance(stop, SharedStop):
        raise TypeError("under torchrun/SLURM the stop request must be a distributed.SharedStop")
    stop.every = every
    return stop


def introduce(reporter, train_batches, batch_size: int) -> None:
    """Say how the processes share the work; warn when samples are left out of each epoch."""
    if not launch.context().distributed:
        return
    reporter.note(
        f"distributed: {launch.context().world_size} processes ({launch.context().launcher}, {launch.context().backend}); each takes "
        f"its share of every global batch of {batch_size}"
    )
    if train_batches.dropped and launch.context().is_main:
        reporter.warn(
            f"each epoch leaves out the last {train_batches.dropped} sample(s) of its order: fewer than the "
            f"{launch.context().world_size} processes (batch_size={batch_size}), so not every process would get one"
        )


class SharedStop:
    """A stop request that every rank decides alike.

    A signal handler calls `request(signum)` on whichever ranks it reaches; the request takes
    effect only at the next check point, every `every` steps, where the ranks all-reduce it
    (one small CPU message, no GPU sync), so all ranks stop after the same step and rank 0 writes
    one checkpoint. `after_steps` (verify-resume, tests) is the same number on every rank."""

    def __init__(self, after_steps: int | None = None, every: int = 1):
        self.signum: int | None = None  # the decision, the same on every rank
        self.pending: int | None = None  # a signal this rank received, not yet shared
        self.after_steps, self.every = after_steps, every
        self.steps = 0
        self.clock = time.monotonic  # what trainer.max_time is measured by (the ranks agree on it)

    def request(self, signum: int = 0) -> None:
        self.pending = signum

    def tick(self) -> bool:
        """Call once per step on every rank; True (on every rank) when the loop should stop now."""
        self.steps += 1
        if self.after_steps is not None and self.steps >= self.after_steps:
            self.signum = self.pending or 0
        elif self.steps % self.every == 0:
            shared = agree(0 if self.pending is None else self.pending + 1)
            if shared:
                self.signum = shared - 1
        return self.signum is not None
