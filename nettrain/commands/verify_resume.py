"""`nettrain-verify-resume [overrides]`: prove that interrupting and resuming changes nothing.

Trains the configured run twice in a fresh folder, `outputs/verify-resume/<date>/<time>/`:
`straight/` without a break, and `resumed/` stopped in the middle (by the same stop request
that SIGINT/SIGTERM use), then resumed from its checkpoint. It then compares the per-epoch
metrics (all but the timing columns), every tensor of the final checkpoint (model, optimizer,
scheduler) and the test result, and prints "identical" or exactly what differs and by how much.
Exit status: 0 identical, 1 different, 2 bad config.

Use it on your own model: nettrain-verify-resume --config-dir myconf model=mine epochs=2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.errors import HydraException

from nettrain.commands.train import train
from nettrain.config.store import register_schema
from nettrain.errors import BadInput, RunFolderError
from nettrain.files import timestamp, write_json
from nettrain.run import launch
from nettrain.run.folder import refuse_symlinks


def verify_resume(
    overrides: list[str],
    workdir: Path,
    config_dir: str | None = None,
    stop_after: int | None = None,
    quiet: bool = True,
) -> tuple[list[str], dict[str, Any]]:
    """Run straight and interrupted+resumed in `workdir`; return (differences, facts)."""
    from nettrain.engine import resume_check  # torch: once the arguments are read

    register_schema()
    base = ["console.show_config=false", "console.show_model=false", "console.progress=off"]
    if config_dir:  # the user's own options, searched as `--config-dir` does
        base.append(f"hydra.searchpath=[file://{Path(config_dir).resolve()}]")

    def config(*extra: str):
        with initialize_config_module("nettrain.conf", version_base="1.3"):
            return compose("train", overrides=[*base, *overrides, *extra])

    facts = resume_check.straight_and_resumed(config, train, workdir, stop_after, quiet)
    return resume_check.compare_runs(workdir / "straight", workdir / "resumed"), facts


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; allowed: an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: allowed: an integer >= 1 (steps before the interruption)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nettrain-verify-resume", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, as for nettrain-train (key=value, group=option)"
    )
    parser.add_argument("--config-dir", help="a folder of your own config options, as for nettrain-train")
    parser.add_argument("--stop-after", type=_positive, help="interrupt after this many steps (default: half the run)")
    parser.add_argument("--out", help="output folder (default outputs/verify-resume/<date>/<time>)")
    args = parser.parse_intermixed_args(argv)
    env = launch.detect_or_exit()
    default = Path("outputs/verify-resume") / timestamp(sep="/")
    workdir = Path(args.out or launch.rank_zeros(env, "verify_dir", str(default)))  # one folder for all ranks

    try:  # an existing --out folder: its runs are written in it, none through a link
        refuse_symlinks(workdir)
    except RunFolderError as exc:
        print(f"Error: --out={str(args.out or workdir)!r}: {exc}", file=sys.stderr)
        return 2
    overrides = args.overrides or []
    if not any(o.startswith("epochs=") for o in overrides):
        overrides = ["epochs=2", *overrides]  # a few steps are enough; the user can ask for more
    try:
        differences, facts = verify_resume(overrides, workdir, args.config_dir, args.stop_after)
    except BadInput as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except HydraException as exc:  # composition errors (unknown option, wrong type) name the key
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    if env is not None and env.rank != 0:  # rank 0 compares, writes and reports
        return 0
    write_json(workdir / "verify.json", {**facts, "identical": not differences, "differences": differences})
    if not facts["resumed"]:
        print(
            f"NOT VERIFIED: the run ended after {facts['total_steps']} steps, before the interruption at step "
            f"{facts['stopped_after']}; allowed: --stop-after below {facts['total_steps']}"
        )
        return 1
    how = f"interrupted after step {facts['stopped_after']} of {facts['total_steps']} and resumed"
    if differences:
        print(f"DIFFERENT: straight vs {how}; {len(differences)} difference(s):")
        for line in differences:
            print(f"  {line}")
        print(f"runs kept in {workdir}")
        return 1
    print(f"identical: straight vs {how} (metrics, model, optimizer, scheduler, test result); runs in {workdir}")
    return 0


def cli() -> None:
    sys.exit(main())
