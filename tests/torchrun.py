"""Run a command under torchrun in a subprocess: N local processes with gloo, on a free port.

`python -m torch.distributed.run` of this interpreter, so the processes import this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun(
    *command: str,
    cwd: Path,
    nproc: int = 2,
    env_extra: dict | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N --no-python COMMAND...`; a bare script name in
    tests/ or a console script of this venv (nettrain-train, nettrain-verify-resume) as COMMAND."""
    exe = Path(sys.executable).with_name(command[0])
    program = [str(exe)] if exe.exists() else [sys.executable, str(Path(__file__).with_name(command[0]))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None) if not (env_extra and "HYDRA_FULL_ERROR" in env_extra) else None
    if command[0] == "nettrain-train":  # matplotlib is most of a small run's time
        command = (*command, "plots=false")
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--no-python",
        *program,
        *command[1:],
    ]
    return subprocess.run(args, check=False, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


ENTRIES = {
    "nettrain-train": "nettrain.commands.train:main",
    "nettrain-verify-resume": "nettrain.commands.verify_resume:cli",
    "ddp_signal.py": "ddp_signal:main",
    "distributed_checks.py": "distributed_checks:main",
}


def workers(
    *command: str,
    cwd: Path,
    nproc: int = 2,
    env_extra: dict | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """What `torchrun(*command)` runs, without the agent: the N workers as fresh processes with
    torchrun's variables (tests/fresh.py), started in milliseconds instead of seconds. The tests
    of torchrun itself (the run dir shared through its store, printing once) use `torchrun`."""
    import fresh

    return fresh.torchrun(ENTRIES[command[0]], *command, cwd=cwd, nproc=nproc, env_extra=env_extra, timeout=timeout)
