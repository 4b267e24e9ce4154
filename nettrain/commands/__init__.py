"""The console scripts (`nettrain-train`, `-eval`, `-predict`, `-export`, `-summarize`,
`-verify-resume`): arguments in, one exit status out. Importing them does not import torch; the
work is imported at the command boundary."""

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def reader_may_stop_early() -> Iterator[None]:
    """Printing to a pipe whose reader has stopped (`nettrain-predict RUN DIR | head`) ends the
    command's output quietly instead of with a BrokenPipeError traceback (rich's console does the
    same for its own output). Use it only where the files are already written. Python's own exit flush would fail again on the closed pipe, so
    stdout is pointed at the null device (the recipe of Python's `signal` documentation)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
