"""Resumable sweeps: a multirun launched again into the same sweep dir picks up where it was.

Each run records a fingerprint of its config (`config_hash` in summary.json). When a sweep job
starts, it looks for a run of the same config anywhere in the sweep dir (so a job is matched by
its config, not by its number) and then:
- finished (completed or early-stopped): skips training and reports the saved summary;
- interrupted: resumes it from its newest valid checkpoint;
- failed, or never started: trains from scratch.
Results found in another job's folder (the values of a sweep were reordered or extended) are
moved into this job's folder first, and results of a different config that sit in this job's
folder are moved aside to `.<n>.displaced-<hash>` until their own job claims them; the old
folder keeps its Hydra record and a claimed.json saying where the results went.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from nettrain.config.schema import flatten, matches
from nettrain.files import write_json
from nettrain.run.folder import file_lock

# settings that do not change what a run computes
INCIDENTAL = (
    "resume",
    "threads",
    "console.",
    "checkpoint.",
    "trust_targets",
    "plots",
    "loggers",
    "logger.",
    "lr_find.",
)
RESULTS = ("summary.json", "metrics.csv", "checkpoints", "plots", "eval")
CLAIMED = "claimed.json"  # left in a job folder whose results moved to the job of their config


def config_hash(plain_config: dict[str, Any]) -> str:
    """A fingerprint of everything in the config that changes what the run computes."""

    kept = {k: v for k, v in flatten(plain_config).items() if not matches(k, INCIDENTAL)}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _summary(run: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _move_results(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in RESULTS:
        if (source / name).exists():
            os.replace(source / name, target / name)


@contextlib.contextmanager
def _locked(sweep_dir: Path):
    """One job at a time claims results, also under parallel launchers (joblib, submitit)."""
    with file_lock(sweep_dir / ".claim.lock"):
        yield


def claim(job_dir: Path, key: str, launch: str | None = None) -> dict[str, Any] | None:
    """Bring this config's results from an earlier launch (if any) into `job_dir`; return their
    summary. Results written by the current `launch` are never taken: two jobs of one launch
    with the same config (an Optuna sampler may repeat one) each train."""
    sweep_dir = job_dir.parent
    with _locked(sweep_dir):
        own = _summary(job_dir)
        if own is not None and own.get("config_hash") != key:  # another config's results: move them aside
            _move_results(job_dir, sweep_dir / f".{job_dir.name}.displaced-{own.get('config_hash', 'unknown')}")
            own = None
        if own is not None:
            return own
        for other in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p != job_dir):
            summary = _summary(other)
            if summary is None or summary.get("config_hash") != key or (launch and summary.get("launch") == launch):
                continue
            _move_results(other, job_dir)
            if other.name.startswith("."):  # a displaced folder: gone once empty
                if not any(other.iterdir()):
                    other.rmdir()
            else:  # an earlier launch's job folder: say where its results went
                write_json(other / CLAIMED, {"moved_to": job_dir.name})
            return summary
    return None
