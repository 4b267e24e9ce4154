"""Fresh processes without the cost of their imports: a command's own function in a child forked
from a server process that has imported torch, Hydra and nettrain once, and never trained.

A subprocess that starts `python` spends 4-5 s of CPU on imports (torch, torch._dynamo on the
optimizer's first use, Hydra) before it runs a step; that was most of this suite's time. A child
of the server starts in milliseconds and is still a process of its own: its own signals, exit
code, file descriptors, RSS, and torch's process-wide state as a fresh interpreter has it.

`command()` runs one command; `torchrun()` runs N of them with the variables torchrun sets for
its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, ...), which is all nettrain
reads of it (`nettrain.run.launch.detect`). The real torchrun agent is still run by the tests
that are about it (tests/torchrun.py).
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# what the server imports once: every child has it for free
PRELOAD = [
    "torch",
    "torch._dynamo",
    "torch.distributed",
    "hydra",
    "nettrain.commands.train",
    "nettrain.commands.verify_resume",
    "nettrain.engine.resume_check",
]

_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(entry: str, argv: list[str], cwd: str, env: dict, out: str, err: str, setup: str | None) -> None:
    """In the child: the command's streams to files, its working directory, environment and argv;
    then its function. SystemExit and uncaught exceptions become the exit code as in
    `python -m` (multiprocessing's bootstrap prints the traceback)."""
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - the process's own streams
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    if "OMP_NUM_THREADS" in env:  # read by torch at import, which the server did before this
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    sys.argv = argv
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    if setup:
        exec(setup, {"__name__": "__setup__"})
    module, function = entry.split(":")
    getattr(importlib.import_module(module), function)()


def _environ(env_extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(env_extra or {})
    return env


def _start(entry, argv, cwd, env, setup, folder: Path, name: str):
    out, err = folder / f"{name}.out", folder / f"{name}.err"
    process = _server().Process(target=_child, args=(entry, argv, str(cwd), env, str(out), str(err), setup))
    process.start()
    return process, out, err


def _wait(processes, timeout: float, first_failure_grace: float | None = None) -> None:
    """Wait for all; past the timeout, kill them. With a grace, a failed process has the others
    stopped (SIGTERM) after the grace, as torchrun's agent does."""
    deadline = time.monotonic() + timeout
    stop_at, stopped = float("inf"), False
    while any(p.exitcode is None for p in processes):  # exitcode polls the child
        now = time.monotonic()
        if now > deadline:
            for p in processes:
                p.kill()
            break
        if first_failure_grace is not None and stop_at == float("inf") and any(p.exitcode for p in processes):
            stop_at = now + first_failure_grace
        if now > stop_at and not stopped:
            for p in processes:
                if p.exitcode is None:
                    p.terminate()
            stopped = True
        time.sleep(0.02)
    for p in processes:
        p.join()


def command(
    entry: str,
    prog: str,
    *args: str,
    cwd: Path,
    env_extra: dict | None = None,
    setup: str | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    """`PROG ARGS` as a process of its own: ENTRY is `module:function`, SETUP optional code run
    first in the child (a test's patch)."""
    with tempfile.TemporaryDirectory() as folder:
        process, out, err = _start(entry, [prog, *args], cwd, _environ(env_extra), setup, Path(folder), "p")
        _wait([process], timeout)
        return subprocess.CompletedProcess([prog, *args], process.exitcode, _read(out), _read(err))


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""  # a child that failed before it redirected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    entry: str,
    prog: str,
    *args: str,
    cwd: Path,
    nproc: int = 2,
    env_extra: dict | None = None,
    setup: str | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N PROG ARGS`, its workers as processes of their own
    with torchrun's variables (and its OMP_NUM_THREADS=1). The exit code is 0 when every worker
    exits 0, else 1 (torchrun's); stdout and stderr are the workers' in rank order."""
    port = free_port()
    base = {"OMP_NUM_THREADS": "1", **_environ(env_extra)}
    argv = [prog, *args]
    if prog == "nettrain-train":  # matplotlib is most of a small run's time
        argv.append("plots=false")
    with tempfile.TemporaryDirectory() as folder:
        started = []
        for rank in range(nproc):
            env = {
                **base,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "GROUP_RANK": "0",
                "ROLE_RANK": str(rank),
                "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc),
                "ROLE_WORLD_SIZE": str(nproc),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "TORCHELASTIC_RUN_ID": "none",
                "TORCHELASTIC_RESTART_COUNT": "0",
                "TORCHELASTIC_MAX_RESTARTS": "0",
            }
            started.append(_start(entry, argv, cwd, env, setup, Path(folder), f"rank{rank}"))
        processes = [p for p, _, _ in started]
        _wait(processes, timeout, first_failure_grace=30)
        code = 0 if all(p.exitcode == 0 for p in processes) else 1
        stdout = "".join(_read(out) for _, out, _ in started)
        stderr = "".join(_read(err) for _, _, err in started)
        return subprocess.CompletedProcess([prog, *args], code, stdout, stderr)
