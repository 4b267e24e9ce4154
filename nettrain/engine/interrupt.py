"""Stopping a run cleanly: a stop request the loop checks after every step, set by SIGINT/SIGTERM.

Ctrl+C (SIGINT) or SIGTERM (what a cluster scheduler sends before pre-empting a job) asks the
loop to finish its step, save a checkpoint and leave; a second signal while the checkpoint is
written only prints "still stopping". Tests and nettrain-verify-resume use the same request
(`StopRequest(after_steps=N)`), so every interruption takes the same path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator

from nettrain.run.launch import preemption_signal


class StopRequest:
    """Asks the loop to stop after the current step (set by a signal handler, or a test)."""

    def __init__(self, after_steps: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.signum: int | None = None
        self.after_steps = after_steps  # stop on its own after this many steps (verify-resume)
        self.steps = 0
        self.clock = clock  # what trainer.max_time is measured by (a test gives its own)

    def request(self, signum: int = 0) -> None:
        self.signum = signum

    def tick(self) -> bool:
        """Call once per step; True when the loop should stop now."""
        self.steps += 1
        if self.after_steps is not None and self.steps >= self.after_steps:
            self.request()
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """SIGINT/SIGTERM ask the loop to finish its step, save and leave; a second one waits for the save."""

    def handler(signum, frame):
        if stop.signum is not None or getattr(stop, "pending", None) is not None:
            os.write(2, b"\nstill stopping: writing the checkpoint, please wait\n")
            return
        stop.request(signum)
        os.write(2, f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint\n".encode())

    previous = {}
    try:  # under submitit also its pre-emption signal: first the checkpoint, then its requeue
        for sig in (signal.SIGINT, signal.SIGTERM, *filter(None, [preemption_signal()])):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
