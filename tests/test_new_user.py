"""What a new user runs into first, through the commands themselves: a data option's required keys,
a typo's suggestion, a flag instead of key=value, a comma list without brackets, a failed download,
a resumed finished run with another lr, the regression summary, piped predictions and a run whose
validation gets worse from its first epoch."""

from __future__ import annotations

import pytest

from conftest import QUIET, cli

TINY = [*QUIET, "data=synthetic", "data.num_samples=300", "model.hidden=[16]"]


def clean_failure(proc, *needles: str) -> str:
    """Exit 2, one `Error:` line holding every needle, no traceback; returns stderr."""
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("Error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    return proc.stderr


# -- a data option's required keys (???) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "missing"),
    [(["data.path=houses.csv"], "data.target"), ([], "data.path, data.target")],
    ids=["no target", "no path nor target"],
)
def test_csv_without_its_required_keys_names_them_and_leaves_no_folder(tmp_path, given, missing):
    proc = cli(*QUIET, "data=csv", *given, cwd=tmp_path)
    err = clean_failure(proc, f"{missing}: required by data=csv and not set (???)", "data.target=COLUMN")
    assert ("data.path=FILE" in err) == ("data.path" in missing)
    assert "MissingMandatoryValue" not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, failed or empty
