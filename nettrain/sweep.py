"""Resumable sweeps: a multirun launched again into the same sweep dir picks up where it was.

Each run records a fingerprint of its config (`config_hash` in summary.json). When a sweep job
starts, it looks for a run of the same config anywhere in the sweep dir (so a job is matched by
its config, not by its number) and then:
- finished (completed or early-stopped): skips training and reports the saved summary;
- interrupted: resumes it from its newest valid checkpoint;
- failed, or never started: trains from scratch.
Results found in another job's folder (the values of a sweep were reordered or extended) are
moved into this job's folder first, and results of a different config that sit in this job's
folder are moved aside to `<n>.displaced-<hash>` until their own job claims them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# settings that do not change what a run computes
INCIDENTAL = ("resume", "threads", "console.", "checkpoint.")
RESULTS = ("summary.json", "metrics.csv", "checkpoints", "plots", "eval")


def config_hash(plain_config: dict[str, Any]) -> str:
    """A fingerprint of everything in the config that changes what the run computes."""

    def keep(prefix: str, node: Any) -> Any:
        if isinstance(node, dict):
            return {k: keep(f"{prefix}{k}.", v) for k, v in node.items()
                    if not any(f"{prefix}{k}" == s or (s.endswith(".") and f"{prefix}{k}.".startswith(s))
                               for s in INCIDENTAL)}
        return node

    text = json.dumps(keep("", plain_config), sort_keys=True, default=str)
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


def claim(job_dir: Path, key: str) -> dict[str, Any] | None:
    """Bring this config's earlier results (if any) into `job_dir`; return their summary."""
    sweep_dir = job_dir.parent
    own = _summary(job_dir)
    if own is not None and own.get("config_hash") != key:  # another config's results: move them aside
        _move_results(job_dir, sweep_dir / f"{job_dir.name}.displaced-{own.get('config_hash', 'unknown')}")
        own = None
    if own is not None:
        return own
    for other in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p != job_dir):
        summary = _summary(other)
        if summary is not None and summary.get("config_hash") == key:
            _move_results(other, job_dir)
            if ".displaced-" in other.name and not any(other.iterdir()):
                other.rmdir()
            return summary
    return None
