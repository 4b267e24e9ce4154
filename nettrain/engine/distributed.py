"""Several processes, one training: torch.distributed under torchrun or SLURM.

Started by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by SLURM's
`srun` / the submitit launcher (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST),
every process runs the same command; without those variables nothing here changes a run.

The rules every rank follows, so that N processes compute what one would:
- one run dir: rank 0 lets Hydra resolve it (``${now:...}`` included) and publishes it through
  the rendezvous store; the other ranks wait for it before Hydra starts and run in that folder
  with `hydra.output_subdir=null` (only rank 0 writes `.hydra/` and `train.log`);
- the global batch: every rank draws the same permutation from the run's generator and takes
  its contiguous share of each global batch (:func:`share_of`); a rank's loss is weighted by its
  share of the batch (:func:`loss_weight`), so the averaged gradient is the global batch's mean;
- shared results: validation and test are sharded and their sums all-reduced
  (:func:`all_reduce_sum`); a stop request on any rank stops every rank at the same step
  (:class:`SharedStop`).

This module imports torch only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

BACKENDS = ("auto", "gloo", "nccl")
TIMEOUT = timedelta(minutes=10)  # rendezvous and collectives: a lost rank fails the run, never hangs it
RUN_DIR_KEY = "nettrain/run_dir"


class DistributedSetupError(RuntimeError):
    """The distributed environment is incomplete or contradictory; the message names the variable."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in the group, as its launcher told it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | submitit_local


@dataclass
class Context:
    """The process group of this run (a single process: rank 0 of 1, no backend)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    launcher: str | None = None

    @property
    def distributed(self) -> bool:
        """In a process group (of 1 too, under `torchrun --nproc_per_node=1`)."""
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_context = Context()
_store: Any = None
_control_group: Any = None  # a gloo group for the small CPU messages (stop flags) under nccl
_owns_group = False
_device: Any = None  # this rank's device while in the group


def context() -> Context:
    """This process's place in the run (rank 0 of 1 when not distributed)."""
    return _context


# -- the environment --------------------------------------------------------------------------


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise DistributedSetupError(f"{name}={environ[name]!r}: must be an integer") from None


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compressed host list -> host names: 'node[01-03,07],gpu5' ->
    ['node01', 'node02', 'node03', 'node07', 'gpu5']. Zero padding is kept."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]*)\])?([^,\[]*)", nodelist):
        prefix, ranges, suffix = match.groups()
        if not ranges:
            hosts.append(prefix + suffix)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise DistributedSetupError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read the range {part!r}")
            for number in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{number:0{len(low)}d}{suffix}")
    if not hosts:
        raise DistributedSetupError(f"SLURM_JOB_NODELIST={nodelist!r}: no host names")
    return hosts


def slurm_port(job_id: str | None) -> int:
    """A port derived from the job id, so that jobs sharing a node do not collide."""
    return 15000 + int(job_id) % 20000 if job_id and job_id.isdigit() else 29500


def detect(environ: Mapping[str, str] | None = None) -> DistEnv | None:
    """torchrun's variables, else SLURM's, else submitit's local ones (each with more than one
    task), else None: one process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" in env and "RANK" in env:
        missing = [name for name in ("LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in env]
        if missing:
            raise DistributedSetupError(
                f"RANK and WORLD_SIZE are set but {', '.join(missing)} is not: start the processes with "
                "torchrun (or set all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)"
            )
        world = _int(env, "WORLD_SIZE")  # a group of 1 too: torchrun was asked for it
        return DistEnv(
            _int(env, "RANK"),
            world,
            _int(env, "LOCAL_RANK"),
            env["MASTER_ADDR"],
            _int(env, "MASTER_PORT"),
            "torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        world = _int(env, "SLURM_NTASKS")
        if world <= 1:
            return None
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise DistributedSetupError(
                "SLURM_NTASKS > 1 but SLURM_JOB_NODELIST is not set: cannot find the master host"
            )
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else slurm_port(env.get("SLURM_JOB_ID"))
        return DistEnv(
            _int(env, "SLURM_PROCID"),
            world,
            _int(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            env.get("MASTER_ADDR") or expand_nodelist(nodelist)[0],
            port,
            "slurm",
        )
    if "SUBMITIT_LOCAL_GLOBALID" in env and "SUBMITIT_LOCAL_NTASKS" in env:  # hydra/launcher=submitit_local
        world = _int(env, "SUBMITIT_LOCAL_NTASKS")
        if world <= 1:
            return None
        port = slurm_port(env.get("SUBMITIT_LOCAL_JOB_ID"))
        rank, local = _int(env, "SUBMITIT_LOCAL_GLOBALID"), _int(env, "SUBMITIT_LOCAL_LOCALID")
        return DistEnv(rank, world, local, "127.0.0.1", port, "submitit_local")
    return None


# -- the device and the backend ---------------------------------------------------------------


def device_name(setting: str, env: DistEnv, cuda_available: bool) -> str:
    """The device of this rank: cuda:LOCAL_RANK for auto/cuda when CUDA is there, else cpu.

    An explicit cuda:N (or mps) is refused: every rank would pick the same device."""
    from nettrain.errors import ConfigError

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
    from nettrain.errors import ConfigError

    if setting == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    if setting == "nccl" and device_type != "cuda":
        raise ConfigError(
            [f"distributed.backend='nccl': needs device=cuda (this run is on {device_type}); allowed: auto, gloo"]
        )
    return setting


def sync_batchnorm(model, enabled: bool, device):
    """`model.sync_bn`: BatchNorm -> SyncBatchNorm in a process group (a no-op in one process)."""
    if not (enabled and _context.distributed):
        return model
    if device.type != "cuda":
        from nettrain.errors import ConfigError

        why = f"model.sync_bn=True: torch's SyncBatchNorm runs on CUDA only (this run is on {device}); allowed on CPU: false"
        raise ConfigError([why])
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model, device):
    """The DistributedDataParallel wrapper of `model` in a process group (None in one process)."""
    if not _context.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


# -- the global batch -------------------------------------------------------------------------


def share_of(start: int, stop: int, rank: int, world_size: int) -> tuple[int, int]:
    """This rank's contiguous part of positions start..stop: shares as equal as can be (the first
    `(stop - start) % world_size` ranks get one more), in rank order, covering every position once."""
    size, extra = divmod(stop - start, world_size)
    begin = start + rank * size + min(rank, extra)
    return begin, begin + size + (1 if rank < extra else 0)


def usable_samples(n: int, batch_size: int, world_size: int) -> int:
    """Samples per epoch under `world_size` ranks: a final partial batch smaller than the world
    size would leave a rank without samples, so it is dropped (with a warning by the caller)."""
    tail = n % batch_size
    return n - tail if 0 < tail < world_size else n


def loss_weight(share: int, batch: int, world_size: int) -> float:
    """The factor on a rank's mean loss so that the averaged gradient (DDP divides by the world
    size) is the mean gradient of the global batch: share * world_size / batch."""
    return share * world_size / batch


# -- the process group ------------------------------------------------------------------------


def _export(env: DistEnv) -> None:
    """SLURM's variables as the ones torch.distributed's env:// reads."""
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )


def store(env: DistEnv):
    """The rendezvous key-value store (made once per process; torchrun's own store when there is one)."""
    global _store
    if _store is None:
        import torch.distributed as dist

        _export(env)
        _store, _, _ = next(dist.rendezvous("env://", timeout=TIMEOUT))
    return _store


def init(env: DistEnv, backend: str, device) -> Context:
    """Join the process group (once per process) and return this rank's context."""
    global _context, _control_group, _owns_group
    import torch.distributed as dist

    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        if device.type == "cuda":
            import torch

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
    _context = Context(env.rank, env.world_size, env.local_rank, dist.get_backend(), env.launcher)
    if env.rank != 0:
        prefix_warnings(env.rank)
    return _context


@contextlib.contextmanager
def group(cfg) -> Iterator[Any]:
    """Around one run: under torchrun/SLURM, join the process group (unless this process already
    has, as nettrain-verify-resume does for its three runs) and yield this rank's device; leave
    the group afterwards. Yields None in a single process."""
    env = detect()
    if env is None:
        yield None
        return
    if _context.distributed:
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
    import torch

    from nettrain.engine.build import resolve_device

    env = env or detect()
    assert env is not None
    _device = resolve_device(device_name(cfg.device, env, torch.cuda.is_available()))
    init(env, backend_for(cfg.distributed.backend, _device.type), _device)
    return _device


def shutdown(wait: bool = True) -> None:
    """Leave the process group this module joined (a no-op otherwise); `wait`: after every rank
    got here (rank 0 may still be writing), so no rank's exit cuts another short."""
    global _context, _control_group, _owns_group
    import torch.distributed as dist

    if _owns_group and dist.is_initialized():
        if wait:
            dist.barrier(group=_control_group)
        dist.destroy_process_group()
    _context, _control_group, _owns_group = Context(), None, False


def all_reduce_sum(*tensors):
    """Sum each tensor over the ranks, in place (a no-op in one process); returns them."""
    if _context.distributed:
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t)
    return tensors


def broadcast_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, before evaluating or saving."""
    if _context.distributed:
        import torch.distributed as dist

        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def broadcast_object(value: Any) -> Any:
    """Rank 0's value on every rank (any picklable value made by this program, never user input)."""
    if not _context.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, group=_control_group)
    return box[0]


def agree(flag: int) -> int:
    """The largest of every rank's `flag` (a CPU all-reduce over the control group)."""
    if not _context.distributed:
        return flag
    import torch
    import torch.distributed as dist

    t = torch.tensor([flag], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return int(t.item())


def shared_stop(stop, every: int):
    """In a process group: `stop` as a SharedStop checking every `every` steps (a new one when
    None); outside one: None, and the caller keeps its own."""
    if not _context.distributed:
        return None
    stop = stop or SharedStop()
    if not isinstance(stop, SharedStop):
        raise TypeError("under torchrun/SLURM the stop request must be a distributed.SharedStop")
    stop.every = every
    return stop


def introduce(reporter, train_batches, batch_size: int) -> None:
    """Say how the processes share the work; warn when samples are left out of each epoch."""
    if not _context.distributed:
        return
    reporter.note(
        f"distributed: {_context.world_size} processes ({_context.launcher}, {_context.backend}); each takes "
        f"its share of every global batch of {batch_size}"
    )
    if train_batches.dropped and _context.is_main:
        reporter.warn(
            f"each epoch leaves out the last {train_batches.dropped} sample(s) of its order: fewer than the "
            f"{_context.world_size} processes (batch_size={batch_size}), so not every process would get one"
        )


def rank_prefix() -> str:
    """'[rank N] ' on ranks > 0 (for messages), '' on rank 0 and in one process."""
    rank = _context.rank
    if not _context.distributed:
        try:
            env = detect()
        except DistributedSetupError:
            env = None
        rank = env.rank if env is not None else 0
    return f"[rank {rank}] " if rank else ""


def detect_or_exit() -> DistEnv | None:
    """detect() for the command line: a contradictory environment is an error message and exit 2."""
    try:
        return detect()
    except DistributedSetupError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


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


# -- one run dir ------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def follower_overrides(run_dir: str) -> list[str]:
    """Hydra overrides for ranks > 0: rank 0's run dir, and no `.hydra/` or log file of their own."""
    return [
        f"hydra.run.dir={_quote(run_dir)}",
        "hydra.output_subdir=null",
        "hydra.job_logging.root.handlers=[]",
        "++hydra.job_logging.handlers.file.delay=true",
    ]


MULTIRUN_REFUSED = (
    "Error: --multirun under {launcher}: every process would launch the whole sweep. Run the sweep "
    "without torchrun (one process per job), or with hydra/launcher=slurm, where each job is its own "
    "group of processes (hydra.launcher.nodes, hydra.launcher.gpus_per_node)"
)
_published = False


def refuse_multirun(env: DistEnv | None, argv: list[str]) -> None:
    """`-m` under torchrun or srun: exit 2 on every rank at once, rank 0 saying why. Rank 0 leaves
    last, after every rank has seen its answer, so no early exit cuts its message short."""
    if env is None or not ("-m" in argv[1:] or "--multirun" in argv[1:]):
        return
    key = "nettrain/multirun_refused"
    if env.rank == 0:
        print(MULTIRUN_REFUSED.format(launcher=env.launcher), file=sys.stderr, flush=True)
        store(env).set(key, "1")
        store(env).wait([f"{key}/{rank}" for rank in range(1, env.world_size)], TIMEOUT)
    else:
        store(env).get(key)
        store(env).set(f"{key}/{env.rank}", "1")
    sys.exit(2)


def wait_for_run_dir(env: DistEnv | None) -> str | None:
    """Ranks > 0: rank 0's run dir, once its Hydra has made it; when rank 0 ended before
    training (--help, --cfg, a config error: it printed why), exit quietly with its exit status."""
    if env is None or env.rank == 0:
        return None
    message = json.loads(store(env).get(RUN_DIR_KEY).decode())
    if "exit" in message:
        sys.exit(message["exit"])
    return message["run_dir"]


def follower_argv(argv: list[str], run_dir: str | None) -> list[str]:
    """argv with rank 0's run dir in place of this rank's own (unchanged on rank 0)."""
    if run_dir is None:
        return argv
    ours = ("hydra.run.dir=", "hydra.output_subdir=")
    return [arg for arg in argv if not arg.startswith(ours)] + follower_overrides(run_dir)


def publish_run_dir(run_dir: str) -> None:
    """Rank 0, inside its Hydra job: the run dir exists, the other ranks may start."""
    global _published
    env = detect()
    if env is not None and env.rank == 0 and not _published:
        store(env).set(RUN_DIR_KEY, json.dumps({"run_dir": run_dir}, allow_nan=False))
        _published = True


@contextlib.contextmanager
def leading(env: DistEnv | None) -> Iterator[None]:
    """Around rank 0's command line: if it ends without publishing a run dir, the waiting ranks
    learn its exit status instead of waiting for ever."""
    code: Any = 0
    try:
        yield
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        raise
    except BaseException:
        code = 1
        raise
    finally:
        if env is not None and env.rank == 0 and not _published:
            store(env).set(RUN_DIR_KEY, json.dumps({"exit": code}, allow_nan=False))


def rank_zeros(env: DistEnv | None, key: str, value: str) -> str:
    """Rank 0's `value` on every rank, through the rendezvous store (before any process group)."""
    if env is None:
        return value
    if env.rank == 0:
        store(env).set(f"nettrain/{key}", value)
        return value
    return store(env).get(f"nettrain/{key}").decode()


# -- pre-emption under submitit ---------------------------------------------------------------


def preemption_signal(environ: Mapping[str, str] | None = None) -> int | None:
    """The signal submitit's SLURM jobs get before their time limit or a pre-emption (USR2, or
    SUBMITIT_PREEMPT_SIGNAL); None outside submitit."""
    env = os.environ if environ is None else environ
    if "SUBMITIT_EXECUTOR" not in env:
        return None
    return int(getattr(signal, "SIG" + env.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")))


def hand_over(signum: int) -> None:
    """After the checkpoint is written: the launcher's own handler of the pre-emption signal
    (submitit's requeues the job, whose next start resumes from the checkpoint)."""
    handler = signal.getsignal(signum)
    if callable(handler):
        handler(signum, None)


# -- what other ranks print ------------------------------------------------------------------


def prefix_warnings(rank: int) -> None:
    """Python warnings of this process carry its rank, so the user can tell where they came from."""
    plain = warnings.formatwarning
    if getattr(plain, "_nettrain_rank", None) is not None:
        return

    def formatwarning(message, category, filename, lineno, line=None):
        return f"[rank {rank}] " + plain(message, category, filename, lineno, line)

    formatwarning._nettrain_rank = rank  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning
