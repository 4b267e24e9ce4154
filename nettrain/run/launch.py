"""How this process was launched: alone, or as one rank of torchrun, SLURM's `srun` or submitit,
and what the ranks settle before Hydra starts.

Started by `torchrun` (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by SLURM's
`srun` / the submitit launcher (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST),
every process runs the same command; without those variables nothing here changes a run.

- :func:`detect` reads the launcher's variables; :func:`context` is this process's place in the
  run (rank 0 of 1 until nettrain/engine/distributed.py joins a process group);
- one run dir: rank 0 lets Hydra resolve it (``${now:...}`` included) and publishes it through
  the rendezvous store; the other ranks wait for it before Hydra starts and run in that folder
  with `hydra.output_subdir=null` (only rank 0 writes `.hydra/` and `train.log`);
- pre-emption under submitit: its signal, and handing over to its requeue after the checkpoint.

Nothing here imports torch at import time: the commands use it before they know whether the
run needs torch. Only the rendezvous store (under torchrun or SLURM) imports torch.distributed.
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


def context() -> Context:
    """This process's place in the run (rank 0 of 1 when not distributed)."""
    return _context


def set_context(value: Context | None = None) -> None:
    """This process's place once it joined a process group; None: alone again (after leaving it)."""
    global _context
    _context = value if value is not None else Context()


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


# -- the rendezvous store ---------------------------------------------------------------------


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
