"""`ddp_signal.py RANK STEP OVERRIDES...`: nettrain-train's own main(), with SIGTERM delivered
in-process to rank RANK alone just before its step STEP. Run under torchrun by tests/test_ddp.py."""

from __future__ import annotations

import os
import signal
import sys

from nettrain.engine import distributed
from nettrain.run import launch


def main() -> None:
    rank, step = int(sys.argv[1]), int(sys.argv[2])
    tick = distributed.SharedStop.tick

    def tick_with_signal(self) -> bool:
        if launch.context().rank == rank and self.steps + 1 == step:
            os.kill(os.getpid(), signal.SIGTERM)  # handled at once, in this thread
        return tick(self)

    distributed.SharedStop.tick = tick_with_signal  # type: ignore[method-assign]
    sys.argv = ["nettrain-train", *sys.argv[3:]]
    from nettrain.commands.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
