"""Test probes for `nettrain-train` runs: signals that land at a chosen training step (in this
process or in a subprocess), and which modules a command imports.

Signals: no sleeps and no race with the clock. The signal is raised from inside the loop's
once-per-step `StopRequest.tick`, so the real handler (`nettrain.engine.interrupt.stop_on_signals`) gets it
right after step k, however busy the machine is. `signal.raise_signal` delivers it to the calling
(main) thread, and Python runs the handler before `raise_signal` returns.

Signalled runs are fresh processes forked from a server that did the imports (tests/fresh.py);
the import probes need a new interpreter and run `python -c` with the repository first on
PYTHONPATH. Both run the console script's own `main` (the entry point `nettrain-train` calls it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from nettrain.engine.interrupt import StopRequest

REPO = Path(__file__).resolve().parents[1]


class SignalAt(StopRequest):
    """A StopRequest that raises `signals` (in order) in this process when step `at` is done.

    Nothing here stops the loop itself: the handler that `train()` installs does, as for a real
    Ctrl-C or `kill`."""

    def __init__(self, at: int, *signals: int):
        super().__init__()
        self.at, self.signals = at, signals or (signal.SIGTERM,)

    def tick(self) -> bool:
        if self.steps + 1 == self.at:
            for sig in self.signals:
                signal.raise_signal(sig)
        return super().tick()


def python_main(code: str, *args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """`python -c CODE ARGS` in `cwd`, the repository prepended to PYTHONPATH (never replacing it)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# Run first in a fresh process (tests/fresh.py) before `nettrain-train ARGS`: StopRequest.tick
# patched to raise signals once the process's STEP-th training step is done (counted over every
# run in the process, so a sweep's second job can be hit), and optionally more signals when the
# checkpoint that the first asked for is written.
SIGNALLED = """
import json, signal
spec = json.loads(SPEC)
import torch
import nettrain.engine.interrupt
steps = 0
tick = nettrain.engine.interrupt.StopRequest.tick
def tick_and_signal(self):
    global steps
    steps += 1
    if steps == spec["step"]:
        for sig in spec["signals"]:
            signal.raise_signal(sig)
    return tick(self)
nettrain.engine.interrupt.StopRequest.tick = tick_and_signal
save = torch.save
def save_and_signal(*args, **kwargs):
    while steps >= spec["step"] and spec["during_save"]:
        signal.raise_signal(spec["during_save"].pop(0))
    return save(*args, **kwargs)
torch.save = save_and_signal
"""


def cli_signalled(
    *args: str,
    cwd: Path,
    step: int,
    signals: list[int],
    during_save: list[int] | None = None,
) -> subprocess.CompletedProcess:
    """`nettrain-train ARGS` in a process of its own, sent `signals` right after its `step`-th
    training step and `during_save` while it writes the checkpoint after that; plots=false
    unless ARGS set `plots`."""
    import fresh

    spec = {
        "step": step,
        "signals": [int(s) for s in signals],
        "during_save": [int(s) for s in during_save or []],
    }
    setup = f"SPEC = {json.dumps(json.dumps(spec))}\n" + SIGNALLED
    if not any(a.startswith("plots=") for a in args):  # as conftest.cli: matplotlib is most of a small run
        args = (*args, "plots=false")
    return fresh.command("nettrain.commands.train:main", "nettrain-train", *args, cwd=cwd, setup=setup)


# Runs one or more `nettrain-train` commands in turn in one interpreter; after each, its exit code
# and whether torch and torchvision had been imported so far.
IMPORTS = """
import json, sys
from nettrain.commands.train import main
for args in json.loads(sys.argv[1]):
    sys.argv = ["nettrain-train", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    print("MODULES " + json.dumps({"code": code, "torch": "torch" in sys.modules,
                                   "torchvision": "torchvision" in sys.modules,
                                   "torchmetrics": "torchmetrics" in sys.modules}))
"""


def report_modules() -> None:
    """IMPORTS as a console-script function, for a child of the fork server (tests/fresh.py)."""
    exec(IMPORTS, {"__name__": "__probe__"})


def loaded_modules(*commands: list[str], cwd: Path, forked: bool = False) -> tuple[list[dict], str]:
    """Run the commands in turn in one fresh interpreter; after each, its exit code and whether
    torch, torchvision and torchmetrics had been imported (so far); and the stdout. forked=True: in a child of
    the fork server instead, which has torch (never torchvision) imported already: for the
    torchvision question, without the 5 s of a fresh interpreter's imports."""
    if forked:
        import fresh

        proc = fresh.command("probes:report_modules", "probe", json.dumps(commands), cwd=cwd)
    else:
        proc = python_main(IMPORTS, json.dumps(commands), cwd=cwd)
    lines = [json.loads(ln.removeprefix("MODULES ")) for ln in proc.stdout.splitlines() if ln.startswith("MODULES ")]
    assert len(lines) == len(commands), proc.stdout + proc.stderr
    return lines, proc.stdout
