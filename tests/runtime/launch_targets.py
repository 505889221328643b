"""Worker targets for the launcher tests (importable by spawned processes)."""
from __future__ import annotations

import os
import signal
import time


def echo(spec):
    return spec.world_rank * 10


def one_raises(spec):
    if spec.world_rank == 1:
        raise ValueError("device lost (simulated)")
    time.sleep(60)


def one_is_killed(spec):
    if spec.world_rank == 0:
        time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def writes_pid_and_sleeps(spec):
    (spec.payload["dir"] / f"rank{spec.world_rank}.pid").write_text(str(os.getpid()))
    time.sleep(120)
