"""`nettrain-eval RUN_DIR_or_CHECKPOINT [--data PATH] [overrides]`: evaluate saved weights on the
test or val split of the run's data, or on any labelled images or table.

The model is rebuilt from the checkpoint (its config and saved preprocessing, nettrain.engine.build.
build_trained); overrides such as `data.root=...`, `device=cuda` or `batch_size=512` apply on
top. Without --data the run's own data is built from its config and one split evaluated. With
--data the checkpoint's saved preprocessing alone reads PATH: a folder of class folders
(<class>/*.png, any subset of the model's classes) for an image model, a table with the feature
columns and the target column for a table model; no train/ folder, no data set. The result is
printed and written to RUN_DIR/eval/<checkpoint>-<split>.json (--data: <checkpoint>-<name>-<hash>.json),
with the run's `metrics=[...]` (or `metrics=[...]` given here); a classifier's per-class report
(precision, recall, F1, support per class, and the confusion matrix) is printed and written beside
it as <...>-report.json, and drawn as <...>-confusion_matrix.png unless plots=false.

    nettrain-eval outputs/2026-01-01/12-00-00-000000                # best.pt on the test split
    nettrain-eval outputs/.../checkpoints/last.pt --split val
    nettrain-eval outputs/2026-01-01/12-00-00-000000 --data new_photos/   # new_photos/<class>/*.jpg
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table

from nettrain.config import trust as trust_lib
from nettrain.errors import BadInput
from nettrain.insight.class_report import report_lines, report_unit
from nettrain.run.resume import run_dir_of
from nettrain.run.summary import RunStatus, read_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nettrain-eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a run dir (uses checkpoints/best.pt) or a checkpoint file")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.root=... device=cuda")
    parser.add_argument("--split", choices=("test", "val"), default=None, help="of the run's own data (default: test)")
    parser.add_argument(
        "--data",
        default=None,
        help="evaluate on this labelled data instead, read with the checkpoint's saved preprocessing: "
        "a folder of class folders (<class>/*.png) for an image model, a table with the target column for a table model",
    )
    trust_lib.add_trust_flag(parser)
    args = parser.parse_intermixed_args(argv)
    if args.data is not None and args.split is not None:
        print(
            f"Error: --split {args.split} and --data {args.data}: --split picks a split of the run's own data, "
            "--data evaluates all of PATH; give one",
            file=sys.stderr,
        )
        return 2

    from nettrain.engine import evaluation  # torch: once the arguments are read

    try:
        result = evaluation.evaluate_checkpoint(
            args.target, args.split or "test", args.overrides, args.trust, args.data
        )
    except (BadInput, OmegaConfBaseException) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2

    title = f"nettrain-eval: {result['data']}" if "data" in result else f"nettrain-eval: {result['split']} split"
    table = Table(title=title, show_header=False)
    for key, value in result.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console = Console()
    console.print(table)
    if "report" in result:  # a classifier's per-class report, written beside the result
        report = json.loads(Path(result["report"]).read_text(encoding="utf-8"))
        console.print(f"per {report_unit(report)} ({result['report']}):", markup=False, highlight=False)
        for line in report_lines(report):
            console.print("  " + line, markup=False, highlight=False)
    return diverged_exit(args.target)


def diverged_exit(target: str) -> int:
    """0, or 3 when the evaluated run diverged: its checkpoints hold its last finite state, which
    is what was evaluated, but the run failed, and eval says so as training did (exit 3)."""
    summary = read_summary(run_dir_of(target) / "summary.json")
    if summary.get("status") != RunStatus.DIVERGED:
        return 0
    print(
        f"Error: {summary.get('error', 'the run diverged')}. The figures above are of that last finite "
        "checkpoint, not of a finished run",
        file=sys.stderr,
    )
    return 3


def cli() -> None:
    sys.exit(main())
