"""Worker targets for the launcher tests (importable by spawned processes)."""
from __future__ import annotations

import os
import signal
import time


def echo(spec):
    return (lambda request: (spec.world_rank, request)), spec.world_rank * 10


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


class Counter:
    """A pool server: counts the requests it served; close() leaves a file behind to prove it ran."""

    def __init__(self, spec):
        self.spec, self.served = spec, 0

    def __call__(self, request):
        if request == "fail" and self.spec.world_rank == 1:
            raise ValueError("device lost (simulated)")
        if request == "hang" and self.spec.world_rank != 1:
            time.sleep(60)  # a peer blocked in a collective whose partner died
        if request == "hang":
            os.kill(os.getpid(), signal.SIGKILL)
        self.served += 1
        return (self.spec.world_rank, request, self.served, os.getpid())

    def close(self):
        (self.spec.payload["dir"] / f"closed{self.spec.world_rank}").write_text(str(self.served))


def counting_server(spec):
    return Counter(spec), {"pid": os.getpid(), "rank": spec.world_rank}



def logs_a_warning(spec):
    import logging

    logging.getLogger("trt_distri.runtime.worker").warning("loaded")
    return (lambda request: None), None
