"""The run's folder: one writer at a time, no foreign files, no leftovers from a crash, what Hydra
records there, and an earlier run's results set aside.

Each run writes only inside its own folder (Hydra's `hydra.run.dir`, or a sweep job's folder).

- :class:`RunLock` takes an exclusive lock on RUN_DIR/.nettrain.lock for as long as a run (fresh,
  resumed, or a sweep job) writes the folder; a second process is refused with a message naming
  the holder's pid and host. The lock is the operating system's (fcntl.flock on Unix,
  msvcrt.locking on Windows), so it goes away with the process, also after kill -9; where
  neither exists, an O_EXCL lock file whose holder is checked for being alive.
- :func:`unsafe_run_dir` refuses `hydra.run.dir=` (empty), `/`, the home folder, and a folder that
  holds files nettrain did not write, before anything in it is moved.
- :func:`remove_stale_temps` deletes the temporary files a save leaves when it is killed halfway.
- :func:`set_aside_old_results` moves an earlier run's results out of the way of a fresh run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from nettrain.files import timestamp

try:  # Unix
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
try:  # Windows
    import msvcrt
except ImportError:  # Unix
    msvcrt = None  # type: ignore[assignment]

LOCK_NAME = ".nettrain.lock"
# What nettrain (and Hydra for it) writes in a run folder; any other name means the folder is not
# a nettrain run folder, and a fresh run there is refused rather than moving things around.
RUN_FILES = (
    ".hydra",
    LOCK_NAME,
    "*.log",  # Hydra's job log (train.log)
    "checkpoints",
    "metrics.csv",
    "plots",
    "summary.json",
    "eval",
    "predict*",
    "export*",
    "tensorboard",
    "logs",
    "provenance.json",
    "claimed.json",
    "previous-*",
    ".*.tmp",
    ".submitit",
)
# atomic_write's temporary names: .NAME.<random>.tmp, and .NAME.link.tmp for hard links
TEMP_PATTERN = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")


class RunFolderError(RuntimeError):
    """A run folder that cannot or must not be written; the message says which and why."""


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that left no details"


def _try_lock(handle: IO[Any], blocking: bool) -> bool:
    """Lock the open file exclusively; False when another process holds it (non-blocking)."""
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            return False
    if msvcrt is not None:  # pragma: no cover - Windows
        handle.seek(0)
        while True:
            try:
                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.05)
    raise OSError("no file locking on this system")  # the caller falls back to an O_EXCL lock file


def _unlock(handle: IO[Any]) -> None:
    if fcntl is not None:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    elif msvcrt is not None:  # pragma: no cover - Windows
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """A blocking exclusive lock on `path` (created if missing), portable; for short sections.
    Without OS locks: an O_EXCL file beside it, waited for (a minute at most, then taken over)."""
    if fcntl is None and msvcrt is None:
        excl = Path(str(path) + ".excl")
        deadline = time.monotonic() + 60
        while True:
            try:
                os.close(os.open(excl, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                break
            except FileExistsError:
                if time.monotonic() > deadline:  # its holder died: take it over
                    excl.unlink(missing_ok=True)
                time.sleep(0.05)
        try:
            yield
        finally:
            excl.unlink(missing_ok=True)
        return
    with open(path, "a+") as handle:
        _try_lock(handle, blocking=True)
        try:
            yield
        finally:
            _unlock(handle)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class RunLock:
    """An exclusive lock on a run folder: `with RunLock(run_dir):` or acquire()/release()."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._handle: IO[Any] | None = None
        self._exclusive_file = False

    def _holder_text(self) -> str:
        return json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")},
            allow_nan=False,
        )

    def _busy(self, text: str) -> RunFolderError:
        return RunFolderError(
            f"{self.run_dir} is being written by another nettrain process ({_describe_holder(text)}); "
            "two runs must not share one folder. Wait for it to finish, stop it, or use another "
            "folder (hydra.run.dir=...)"
        )

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            locked = _try_lock(handle, blocking=False)
        except OSError:
            handle.close()
            return self._acquire_exclusive_file()
        if not locked:
            handle.seek(0)
            text = handle.read()
            handle.close()
            raise self._busy(text)
        handle.seek(0)
        handle.truncate()
        handle.write(self._holder_text() + "\n")
        handle.flush()
        self._handle = handle
        return self

    def _acquire_exclusive_file(self) -> RunLock:
        """Fallback where the system has no file locks: create the lock file with O_EXCL; a lock
        file left by a dead process on this host is taken over."""
        for _ in range(2):
            try:
                fd = os.open(self.path.with_suffix(".excl"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                text = self.path.with_suffix(".excl").read_text(errors="replace")
                try:
                    info = json.loads(text)
                    stale = info["host"] == socket.gethostname() and not _alive(int(info["pid"]))
                except (ValueError, KeyError, TypeError):
                    stale = False
                if not stale:
                    raise self._busy(text) from None
                self.path.with_suffix(".excl").unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._holder_text() + "\n")
            self._exclusive_file = True
            return self
        raise self._busy("")

    def release(self) -> None:
        if self._handle is not None:
            _unlock(self._handle)
            self._handle.close()
            self._handle = None
        if self._exclusive_file:
            self.path.with_suffix(".excl").unlink(missing_ok=True)
            self._exclusive_file = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _is_run_file(name: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def unsafe_run_dir(value: str | Path | None, must_be_ours: bool = True) -> str | None:
    """Why `value` must not be a run folder (None when it may): empty, the file system's root,
    the home folder, or (when `must_be_ours`) an existing folder with files nettrain did not write."""
    if value is None or str(value).strip() == "":
        return "hydra.run.dir is empty; a run needs a folder of its own (e.g. outputs/my-run)"
    path = Path(os.path.expanduser(str(value))).resolve()
    if path == Path(path.anchor) or path == Path.home().resolve():
        return f"hydra.run.dir={str(value)!r} is {path}; a run needs a folder of its own (e.g. outputs/my-run)"
    if must_be_ours and path.is_dir():
        foreign = sorted(p.name for p in path.iterdir() if not _is_run_file(p.name))
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            return (
                f"hydra.run.dir={str(value)!r} holds files nettrain did not write ({shown}); "
                "nettrain moves an earlier run's results aside there, so it only uses an empty "
                "folder or a nettrain run folder. Pick another folder"
            )
    return None


HYDRA_RECORD = {"config.yaml", "hydra.yaml", "overrides.yaml", "provenance.json"}


def remove_if_unused(run_dir: str | Path) -> bool:
    """Delete a run folder that holds nothing but this command's Hydra record and log (a config
    rejected after Hydra made the folder); True when it was removed. Anything else keeps it."""
    import shutil

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    names = {p.name for p in run_dir.iterdir()}
    hydra = run_dir / ".hydra"
    if not names <= {".hydra", LOCK_NAME, "train.log"}:
        return False
    if hydra.is_dir() and not {p.name for p in hydra.iterdir()} <= HYDRA_RECORD:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = run_dir.parent  # outputs/<date>/ made for this run alone
    with contextlib.suppress(OSError):
        parent.rmdir()
    return True


def remove_stale_temps(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files a killed save left in the run folder and its checkpoints/,
    plots/ and eval/ folders; returns them. Call it while holding the run's lock."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "plots", run_dir / "eval"):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if path.is_file() and TEMP_PATTERN.match(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def hydra_output_subdir() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import MissingMandatoryValue

        hc = HydraConfig.get()
        output_dir = hc.runtime.output_dir
    except (ValueError, MissingMandatoryValue):  # not running under Hydra (a composed config has no runtime)
        return None
    return Path(output_dir) / hc.output_subdir if hc.output_subdir else None


def rerun_source() -> Path | None:
    """The --config-dir a re-run composed its primary config from, if any."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf.errors import MissingMandatoryValue

        sources = HydraConfig.get().runtime.config_sources
    except (ValueError, MissingMandatoryValue):
        return None
    for source in sources:
        if source.provider == "command-line" and source.schema == "file":
            return Path(source.path)
    return None


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def set_aside_old_results(output_dir: Path, reporter) -> None:
    """A fresh run in a folder that holds an earlier run's results (a failed sweep job run again,
    a reused hydra.run.dir) moves them to previous-<time>/ first: nothing is lost, and resume can
    never pick up the other run's checkpoints."""
    old = [name for name in ("checkpoints", "metrics.csv", "plots", "summary.json") if (output_dir / name).exists()]
    if not old:
        return
    aside = output_dir / f"previous-{timestamp()}"
    aside.mkdir(parents=True)
    for name in old:
        os.replace(output_dir / name, aside / name)
    reporter.note(f"an earlier run's results were in {output_dir}; moved to {aside.name}/")
