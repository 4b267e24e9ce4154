"""Reproducibility: seeding, RNG state capture for exact resume, and the provenance record.

- `seed_everything` seeds Python, NumPy and torch (every CUDA device too).
- `process_settings` applies a run's process-wide torch settings (CPU threads; with
  `deterministic=true`, torch.use_deterministic_algorithms and what cuDNN and cuBLAS need) and
  restores the previous ones when the run ends, so a sequential sweep never leaks them into the
  next job.
- `capture_rng` / `restore_rng` carry every RNG state through a checkpoint as plain data, so a
  resumed run continues exactly where the interrupted one stopped.
- `provenance` describes where a run came from (versions, git commit, device, data fingerprint,
  command line); `provenance_differences` says what changed when a run is re-run or resumed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import random
import shlex
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nettrain
from nettrain.files import write_json
from nettrain.run.folder import RunWriter, hydra_output_subdir, rerun_source

CUBLAS_WORKSPACE = ":4096:8"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CPU generator and every CUDA device's


@contextlib.contextmanager
def process_settings(threads: int | None = None, deterministic: bool = False) -> Iterator[None]:
    """Set torch's process-wide settings for one run; restore the previous ones afterwards."""
    before = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    try:
        if threads:
            torch.set_num_threads(threads)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        yield
    finally:
        n_threads, algorithms, warn_only, benchmark, cudnn_deterministic, workspace = before
        if torch.get_num_threads() != n_threads:
            torch.set_num_threads(n_threads)
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, cudnn_deterministic
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = workspace


def capture_rng(data_generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state, as tensors and plain data (loadable with weights_only=True)."""
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)  # legacy=True: (kind, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = numpy_state
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "data": data_generator.get_state(),
    }


def restore_rng(state: dict[str, Any], data_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    data_generator.set_state(state["data"])


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# what a repository's own files cannot make git run here: hooks (post-index-change on an index
# write), the fsmonitor, and, with --no-optional-locks, no index write at all
GIT = ["git", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "--no-optional-locks"]


def _git(cwd: Path) -> dict[str, Any] | None:
    def run(*args: str) -> str:
        return subprocess.run(
            [*GIT, *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit, root = run("rev-parse", "HEAD", "--show-toplevel").split("\n")  # a path may hold other line breaks
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return {"root": root, "commit": commit, "dirty": _dirty(run)}


@functools.cache
def _source_git() -> dict[str, Any] | None:
    """_git for nettrain's own source (None for an installed wheel), read once per process: the
    code a process runs is the code it imported, and a sweep or notebook then starts its runs
    without three more git commands each. (Code reloaded into a running process, as notebook
    autoreload does, is recorded as the process first found it.)"""
    return _git(Path(nettrain.__file__).resolve().parent)


def _dirty(run: Any) -> bool | None:
    """Whether tracked files differ from HEAD, or None when that would run a command the
    repository's own files name: the working directory may be a folder someone sent, and `git
    status` runs filter drivers its config (or worktree config) defines; hooks and the fsmonitor
    are off for every call (GIT). Filters of the user's own global or system config are fine."""
    try:
        scopes = run("config", "--show-scope", "--includes", "--get-regexp", r"^filter\.")
    except subprocess.CalledProcessError:
        scopes = ""  # exit 1: no filter driver anywhere
    except (OSError, subprocess.SubprocessError):
        return None
    if any(line.split("\t", 1)[0] not in ("global", "system") for line in scopes.splitlines()):
        return None  # the repository defines filter drivers: status would run them
    try:
        return bool(run("status", "--porcelain", "--untracked-files=no", "--ignore-submodules=all"))
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: torch.device, data_fingerprint: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Where this run came from: versions, code, device, data and command."""
    source_git = _source_git()
    return {
        "nettrain": nettrain.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),  # read from metadata: torchvision is not imported
        "hydra": _version("hydra-core"),
        "omegaconf": _version("omegaconf"),
        "numpy": np.__version__,
        "git": _git(Path.cwd()),
        "nettrain_git": dict(source_git) if source_git else None,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "data_fingerprint": data_fingerprint,
        "command": shlex.join(argv if argv is not None else sys.argv),
        "cwd": str(Path.cwd()),
    }


# what may differ between two runs of the same config without changing what they compute
_INCIDENTAL = {"command", "cwd"}


def provenance_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable lines for every provenance field that differs (command and cwd ignored)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in _INCIDENTAL or old.get(key) == new.get(key):
            continue
        lines.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return lines


def write_provenance(device, data_fingerprint: str, writer: RunWriter, resumed: bool, report) -> dict[str, Any]:
    """Write provenance.json through `writer` (a run_dir.RunWriter: on rank 0 only), and there
    print what differs from the run this one repeats or resumes; return the record (every rank)."""
    record = provenance(device, data_fingerprint)
    writer.run(_record_provenance, record, writer.folder, resumed, report)
    return record


def _record_provenance(record: dict[str, Any], output_dir: Path, resumed: bool, report) -> None:
    record_dir = hydra_output_subdir() or output_dir
    write_json(record_dir / "provenance.json", record)
    origin = (output_dir / ".hydra") if resumed else rerun_source()
    if origin is not None and (origin / "provenance.json").is_file() and origin != record_dir:
        for line in provenance_differences(json.loads((origin / "provenance.json").read_text()), record):
            report(f"differs from the original run: {line}")
