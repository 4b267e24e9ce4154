"""The run's folder: one writer at a time, no foreign files, no leftovers from a crash, what Hydra
records there, and an earlier run's results set aside.

Each run writes only inside its own folder (Hydra's `hydra.run.dir`, or a sweep job's folder).

- :class:`RunLock` takes an exclusive lock on RUN_DIR/.nettrain.lock for as long as a run (fresh,
  resumed, or a sweep job) writes the folder; a second process is refused with a message naming
  the holder's pid and host. The lock is the operating system's (fcntl.flock on Unix,
  msvcrt.locking on Windows), so it goes away with the process, also after kill -9; where
  neither exists, an O_EXCL lock file whose holder is checked for being alive.
- :func:`unsafe_run_dir` refuses `hydra.run.dir=` (empty), `/`, the home folder, and a folder that
  holds files nettrain did not write or a symlink, before anything in it is moved.
- :func:`refuse_symlinks` refuses a run folder that holds a symlink (or a pipe, socket or device):
  nettrain follows no link inside a run folder, so a received run cannot send a write (the lock,
  the log, eval/, checkpoints/, ...) or a read anywhere else. The commands call it before they
  read or write anything in a run folder; the lock and the log file are also opened with
  O_NOFOLLOW, so a link made after the check is not followed either.
- :func:`remove_stale_temps` deletes the temporary files a save leaves when it is killed halfway.
- :func:`set_aside_old_results` moves an earlier run's results out of the way of a fresh run.
- :class:`RunWriter` is the folder's one writer in a training run: every file the run leaves there
  is written through it, and on the ranks other than 0 of a distributed run each of its writes
  does nothing, so no write needs a rank check of its own and a new one cannot forget it. (Hydra's
  own files, .hydra/ and train.log, are rank 0's by the overrides the other ranks run with.)
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf.errors import MissingMandatoryValue

from nettrain.errors import RunFolderError, RunFolderLinkError
from nettrain.files import timestamp, write_json
from nettrain.run import launch

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


# Where open() can refuse to follow a symlink at the last component (not on Windows)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# Folders in a run folder that belong to another program, which makes links there itself and
# replaces them (never writes through them); nettrain reads nothing inside. The folder itself
# must still not be a link. W&B: wandb/latest-run, wandb/debug.log, .../logs/debug-core.log.
OTHERS_FOLDERS = ("wandb",)
_SHOWN_LINKS = 10
_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def _not_followed(root: Path) -> list[str]:
    """Every entry under `root` nettrain must not open: 'REL -> TARGET' for a symlink, 'REL (a named
    pipe)' for a special file, 'REL/ (cannot be listed: ...)' for a folder that hides its entries.
    Walked without following any link."""
    found: list[str] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as exc:
            if folder != root:  # the run folder itself: the command reports it as missing or unreadable
                found.append(f"{folder.relative_to(root).as_posix()}/ (cannot be listed: {exc.strerror})")
            continue
        for entry in entries:
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:  # gone meanwhile
                continue
            if stat.S_ISLNK(mode):
                try:
                    points_to = os.readlink(path)
                except OSError:
                    points_to = "?"
                found.append(f"{rel}{'/' if path.is_dir() else ''} -> {points_to}")
            elif stat.S_ISDIR(mode):
                if not (folder == root and entry.name in OTHERS_FOLDERS):
                    pending.append(path)
            elif not stat.S_ISREG(mode):
                found.append(f"{rel} ({_KINDS.get(stat.S_IFMT(mode), 'not a regular file')})")
    return sorted(found)


def refuse_symlinks(run_dir: str | Path) -> Path:
    """Raise RunFolderLinkError (a RunFolderError) naming every symlink inside `run_dir`, at any
    depth, file or folder, with where each points, and every named pipe, socket or device (and a
    folder that cannot be listed); else return the run folder, resolved.

    The path given may itself be, or pass through, a link (the user chose it): only what is inside
    the folder counts. A folder that does not exist holds nothing; wandb/'s own links are W&B's."""
    root = Path(run_dir).expanduser().resolve()
    if not root.is_dir():
        return root
    found = _not_followed(root)
    if not found:
        return root
    shown = "; ".join(found[:_SHOWN_LINKS]) + (
        f"; and {len(found) - _SHOWN_LINKS} more" if len(found) > _SHOWN_LINKS else ""
    )
    links_only = all(" -> " in line for line in found)
    raise RunFolderLinkError(
        f"the run folder {root} holds {'symlinks' if links_only else 'entries nettrain does not open'}: "
        f"{shown}. nettrain follows no symlink inside a run folder (a link would send its reads and "
        "writes elsewhere): a run folder holds no symlinks"
        + ("" if links_only else ", pipes, sockets or devices, and every folder in it can be listed")
        + "; replace each link by the file or folder itself, or remove it",
        root,
        found,
    )


def _is_link(path: Path) -> str | None:
    """Where `path` points when it is a symlink, else None."""
    try:
        return os.readlink(path) if path.is_symlink() else None
    except OSError:
        return "?"


def refuse_target_symlinks(target: str | Path, results: str | None) -> None:
    """Before nettrain-eval, -predict or -export reads `target` (a run folder, or a checkpoint file)
    and writes into its `results` folder (eval, predict, export; None when --out says where): raise
    RunFolderError for a symlink they would follow.

    A run folder (the target, or RUN for RUN/checkpoints/FILE) must hold no symlink at all
    (:func:`refuse_symlinks`). A checkpoint outside a run folder must be the file itself, not a
    link, and the results folder beside it must not be a link. A target that does not exist, or a
    folder without checkpoints/, is left to the command to report."""
    path = Path(target).expanduser()
    if path.is_dir():
        if os.path.lexists(path / "checkpoints"):  # else not a run folder: the command says so
            refuse_symlinks(path)
        return
    if not os.path.lexists(path):
        return
    path = Path(os.path.abspath(path))  # not resolved: a link at the end must stay visible
    if path.parent.name == "checkpoints":  # RUN/checkpoints/FILE: the whole run folder
        refuse_symlinks(path.parent.parent)
        return
    points_to = _is_link(path)
    if points_to is not None:
        raise RunFolderError(
            f"{path} is a symlink (-> {points_to}); nettrain reads a checkpoint outside a run folder only "
            f"as the file itself, never through a link: give the file's own path ({path.resolve()})"
        )
    folder = path.parent / results if results else None
    if folder is not None and (points_to := _is_link(folder)) is not None:
        raise RunFolderError(
            f"{folder} is a symlink (-> {points_to}); the results for {path.name} go into that folder, and "
            f"nettrain writes through no symlink: remove the link or make {results}/ a folder"
            + (", or give --out" if results != "eval" else "")
        )


def _open_log_no_follow(name: str, encoding: str | None, errors: str | None) -> io.TextIOWrapper:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | O_NOFOLLOW, 0o666)
    return open(fd, "a", encoding=encoding, errors=errors)  # noqa: SIM115 - the handler's stream


def no_follow_log_files(run_dir: str | Path) -> None:
    """Reopen the log files that logging handlers (Hydra's train.log) hold in `run_dir` with
    O_NOFOLLOW, now and on any later reopen, so no log line goes through a link made after the
    folder was checked. A log file that is a link: its handler is closed and removed (nothing
    is written through it) and RunFolderError raised."""
    inside = (Path(os.path.abspath(run_dir)), Path(run_dir).resolve())
    loggers = [logging.getLogger()] + [
        log for log in logging.Logger.manager.loggerDict.values() if isinstance(log, logging.Logger)
    ]
    for log in loggers:
        for handler in list(log.handlers):
            if not isinstance(handler, logging.FileHandler) or getattr(handler, "_nettrain_no_follow", False):
                continue
            folder = os.path.dirname(handler.baseFilename)
            if not any(Path(f).is_relative_to(root) for f in (folder, os.path.realpath(folder)) for root in inside):
                continue
            try:
                _reopen_no_follow(handler)
            except OSError:
                name = handler.baseFilename
                if not Path(name).is_symlink():
                    raise
                for each in loggers:
                    each.removeHandler(handler)
                handler.close()
                raise RunFolderError(
                    f"{name} is a symlink (-> {os.readlink(name)}); nettrain follows no symlink inside a "
                    "run folder, and writes no log line through it: remove the link"
                ) from None


def _reopen_no_follow(handler: logging.FileHandler) -> None:
    def reopen() -> io.TextIOWrapper:
        return _open_log_no_follow(handler.baseFilename, handler.encoding, handler.errors)

    handler.acquire()
    try:
        old = handler.stream
        handler.stream = None if old is None else reopen()  # delay=True: opened by the first line
        handler.mode = "a"
        setattr(handler, "_open", reopen)  # noqa: B010 - FileHandler.emit reopens with self._open()
        setattr(handler, "_nettrain_no_follow", True)  # noqa: B010
        if old is not None:
            old.close()
    finally:
        handler.release()


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
        refuse_symlinks(self.run_dir)  # every write of the run goes into this folder, none through a link
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:  # not through a link made after the check: O_NOFOLLOW
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | O_NOFOLLOW, 0o666)
        except OSError:
            if not self.path.is_symlink():
                raise
            raise RunFolderError(
                f"{self.path} is a symlink (-> {os.readlink(self.path)}); nettrain follows no symlink "
                "inside a run folder: remove the link"
            ) from None
        handle = os.fdopen(fd, "a+")  # held until release()
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
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in RUN_FILES)


def unsafe_run_dir(value: str | Path | None, must_be_ours: bool = True) -> str | None:
    """Why `value` must not be a run folder (None when it may): empty, the file system's root,
    the home folder, an existing folder holding a symlink, or (when `must_be_ours`) an existing
    folder with files nettrain did not write."""
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
    if path.is_dir():  # before Hydra writes .hydra/ and train.log there
        try:
            refuse_symlinks(path)
        except RunFolderError as exc:
            return f"hydra.run.dir={str(value)!r}: {exc}"
    return None


HYDRA_RECORD = {"config.yaml", "hydra.yaml", "overrides.yaml", "provenance.json"}


def remove_if_unused(run_dir: str | Path) -> bool:
    """Delete a run folder that holds nothing but this command's Hydra record and log (a config
    rejected after Hydra made the folder); True when it was removed. Anything else keeps it."""
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
        hc = HydraConfig.get()
        output_dir = hc.runtime.output_dir
    except (ValueError, MissingMandatoryValue):  # not running under Hydra (a composed config has no runtime)
        return None
    return Path(output_dir) / hc.output_subdir if hc.output_subdir else None


def rerun_source() -> Path | None:
    """The --config-dir a re-run composed its primary config from, if any."""
    try:
        sources = HydraConfig.get().runtime.config_sources
    except (ValueError, MissingMandatoryValue):
        return None
    for source in sources:
        if source.provider == "command-line" and source.schema == "file":
            return Path(source.path)
    return None


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def set_aside_old_results(output_dir: Path, reporter) -> None:
    """A fresh run in a folder that holds an earlier run's results (a failed sweep job run again,
    a reused hydra.run.dir) moves them to previous-<time>/ first: nothing is lost, and resume can
    never pick up the other run's checkpoints."""
    old = [
        name for name in ("checkpoints", "eval", "metrics.csv", "plots", "summary.json") if (output_dir / name).exists()
    ]
    if not old:
        return
    aside = output_dir / f"previous-{timestamp()}"
    aside.mkdir(parents=True)
    for name in old:
        os.replace(output_dir / name, aside / name)
    reporter.note(f"an earlier run's results were in {output_dir}; moved to {aside.name}/")


T = TypeVar("T")


class RunWriter:
    """Writes in `folder`, on rank 0 only (`enabled=None`: whether this process is rank 0, or alone)."""

    def __init__(self, folder: str | Path, enabled: bool | None = None):
        self.folder = Path(folder)
        self.enabled = launch.context().is_main if enabled is None else enabled

    def run(self, write: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """`write(*args, **kwargs)`'s result on rank 0; None, and nothing done, on the other ranks."""
        return write(*args, **kwargs) if self.enabled else None

    def path(self, name: str | Path) -> Path:
        """`name` in the folder (an absolute path stays as it is)."""
        return self.folder / name

    def json(self, name: str | Path, data: Any) -> None:
        """Strict JSON, written atomically (nettrain/files.py)."""
        self.run(write_json, self.path(name), data)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Around the run: rank 0 holds the folder's lock (one writer per folder, across processes
        too) and removes the temporary files a save killed halfway left."""
        if not self.enabled:
            yield
            return
        with RunLock(self.folder):
            remove_stale_temps(self.folder)
            yield
