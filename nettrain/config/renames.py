"""Old names of nettrain's `_target_`s, for configs saved before a module moved.

Runs, checkpoints and export sidecars keep the `_target_` names of the nettrain that wrote them.
`RENAMED` is the one map from each old name to today's; every reader of a saved config goes through
it: `upgrade` for a config read from a checkpoint or sidecar, `renamed_overrides` for a run
folder's `.hydra/config.yaml` that Hydra composes (resume and re-run), and `trust.why_allowed`.
"""

from __future__ import annotations

from typing import Any

RENAMED = {
    # before the Hydra callback had its own module
    "nettrain.callbacks.SweepSummaryCallback": "nettrain.commands.sweep_callback.SweepSummaryCallback",
    # the flat layout (up to 2026-12-06), before the subpackages
    "nettrain.sweep_callback.SweepSummaryCallback": "nettrain.commands.sweep_callback.SweepSummaryCallback",
    "nettrain.resnet.ResNet": "nettrain.models.ResNet",
    "nettrain.torchvision_models.torchvision_model": "nettrain.models.torchvision_model",
}


def renamed(target: Any) -> Any:
    """Today's name of `target` (itself when it was never renamed, or is not a string)."""
    return RENAMED.get(target, target) if isinstance(target, str) else target


def renamed_keys(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, today's name) for each `_target_` in a plain nested config that has an old name."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_" and renamed(value) != value:
                found.append((where, renamed(value)))
            else:
                found += renamed_keys(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += renamed_keys(value, f"{path}[{i}]")
    return found


def upgrade(node: Any) -> Any:
    """A copy of a plain nested config with every old `_target_` name replaced by today's."""
    if isinstance(node, dict):
        return {key: renamed(value) if key == "_target_" else upgrade(value) for key, value in node.items()}
    if isinstance(node, list):
        return [upgrade(value) for value in node]
    return node


def renamed_overrides(saved: dict) -> list[str]:
    """Command-line overrides that give a saved config's old `_target_`s today's names, for Hydra to
    compose a run folder's config.yaml (its hydra.callbacks too, which Hydra builds before the run).
    Keys inside a list are left out: no shipped target sits in one."""
    return [f"{key}={name}" for key, name in renamed_keys(saved) if "[" not in key]
