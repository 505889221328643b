"""One process per GPU: start, supervise, collect; and the same worker under torchrun / srun / mpirun.

`RankPool` starts the processes, keeps them (and what they loaded) for one call or many, and is the safety net:
a worker that raises reports its error and exits; one that dies (killed, a crash in a library) is seen by its exit
code. Either way the others are terminated within `grace_s` (then killed), so a rank blocked in a collective whose
peer is gone never hangs the run. Ctrl-C (and SIGTERM, with `stop_on_sigterm`) stops every worker the same way,
and idle workers leave when their parent is gone.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import time
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trt_distri import log as log_setup
from trt_distri.errors import ConfigError
from trt_distri.runtime.comm import RankFailedError
from trt_distri.runtime.nccl import UNIQUE_ID_BYTES

log = logging.getLogger(__name__)
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0"}  # NVLink multicast off (it can take shared GPUs down)


@dataclass(frozen=True)
class WorkerSpec:
    world_rank: int
    device: int  # CUDA device index on this host
    payload: dict  # what the target needs (picklable)


def stop_on_sigterm() -> None:
    """SIGTERM (a job scheduler's stop, `timeout`, `kill`) ends this process as Ctrl-C does: the KeyboardInterrupt
    unwinds a waiting `RankPool`, which stops the rank processes it started instead of leaving them holding the GPUs.
    Call from the main thread of a program's entry point; elsewhere it does nothing."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


class RankPool:
    """One spawned process per spec that outlives a call. In each, `target(spec)` runs once and returns
    (server, ready): `ready` comes back as `self.ready`, and every `call(request)` returns each server's
    `server(request)` in world-rank order; `server.close()` runs when the pool closes. A failed call (an error,
    a dead worker, the deadline) stops every worker and closes the pool."""

    def __init__(self, target, specs: list[WorkerSpec], timeout_s: float = 3600.0, grace_s: float = 10.0) -> None:
        ctx = mp.get_context("spawn")
        self.specs, self.grace_s = specs, grace_s
        self.results, self.inboxes = ctx.Queue(), [ctx.Queue() for _ in specs]
        logs = _log_settings()
        self.procs = [ctx.Process(target=_serve, args=(target, s, inbox, self.results, os.getpid(), logs),
                                  daemon=True, name=f"trt-distri-rank{s.world_rank}")
                      for s, inbox in zip(specs, self.inboxes)]
        with _main_module_hidden():
            for p in self.procs:
                p.start()
        self.ready = self._collect(timeout_s)

    @property
    def open(self) -> bool:
        return self.procs is not None

    def call(self, request, timeout_s: float = 3600.0) -> list:
        if self.procs is None:
            raise RankFailedError("the rank processes were stopped (closed, or after a failure). Fix: start a new pool")
        for inbox in self.inboxes:
            inbox.put(request)
        return self._collect(timeout_s)

    def _collect(self, timeout_s: float) -> list:
        """One message from every worker, in world-rank order; the first error, death or the deadline (or Ctrl-C)
        stops them all and raises."""
        done: dict[int, object] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(done) < len(self.specs):
                _check_deadline(deadline, timeout_s)
                try:
                    msg = self.results.get(timeout=0.2)
                except queue.Empty:
                    _check_exits(self.procs, done)
                    continue
                if msg[0] == "error":
                    log.debug("rank %d traceback:\n%s", msg[1], msg[3])
                    raise RankFailedError(f"rank {msg[1]} failed: {msg[2]}")
                done[msg[1]] = msg[2]
        except BaseException:
            self._halt(0.0)
            raise
        return [done[s.world_rank] for s in self.specs]

    def close(self) -> None:
        """Let every worker finish and release what it loaded (idempotent)."""
        if self.procs is not None:
            for inbox in self.inboxes:
                inbox.put(None)
            self._halt(self.grace_s)

    def _halt(self, grace_s: float) -> None:
        procs, self.procs = self.procs, None
        end = time.monotonic() + grace_s
        for p in procs or []:
            p.join(max(0.0, end - time.monotonic()))
        _stop(procs or [], self.grace_s)

    def __enter__(self) -> "RankPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _log_settings() -> bool | None:
    """How the parent logs, for its workers: None where it installed no trt-distri handler (a library user's own
    logging setup, which a spawned worker does not inherit), else whether it is verbose."""
    if not any(getattr(h, "_trt_distri", False) for h in logging.getLogger().handlers):
        return None
    return logging.getLogger(log_setup.PACKAGE_LOGGER).isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start spawned workers without the caller's main module. multiprocessing's spawn runs the parent's main
    script again in every child (so that functions defined there can be unpickled), which fails with its
    "bootstrapping phase" error in a script without an `if __name__ == "__main__":` guard, and would run the script's
    work twice. Worker targets are functions of importable modules (this package's, or a test's), so the children
    do not need it: while they start, `__main__` is an empty module, which spawn does not pass on."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


def _serve(target, spec: WorkerSpec, inbox, results, parent: int, verbose: bool | None = None) -> None:
    os.environ.update(SAFE_ENV)
    os.environ["RANK"] = str(spec.world_rank)
    if verbose is not None:  # as the parent logs, with this worker's rank in the prefix
        log_setup.configure(verbose, spec.world_rank)
    try:
        server, ready = target(spec)
        results.put(("ok", spec.world_rank, ready))
        while (request := _next_request(inbox, parent)) is not None:
            results.put(("ok", spec.world_rank, server(request)))
        server.close()  # not after a failure: a peer may be gone mid-collective; the parent stops this process
    except BaseException as exc:  # noqa: BLE001 - every failure is reported to the parent
        detail = traceback.format_exc(limit=4)
        results.put(("error", spec.world_rank, f"{type(exc).__name__}: {exc}", detail))
        raise SystemExit(1) from None


def _next_request(inbox, parent: int):
    """The next request, or None when the pool closes or its process is gone (a worker never outlives it)."""
    while True:
        try:
            return inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return None


def _check_deadline(deadline: float, timeout_s: float) -> None:
    if time.monotonic() > deadline:
        raise RankFailedError(f"the workers did not finish within {timeout_s:.0f} s. Fix: raise --timeout, or look "
                              "for a rank that is stuck (run with -v)")


def _check_exits(procs, done: dict) -> None:
    for rank, p in enumerate(procs):
        if not p.is_alive() and rank not in done:
            raise RankFailedError(f"rank {rank} exited with code {p.exitcode} before finishing (killed, or a crash "
                                  "below Python); the other ranks were stopped")


def _stop(procs, grace_s: float) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join(1.0)


# ---- external launchers ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LauncherEnv:
    world_rank: int
    world_size: int
    local_rank: int


#: (rank, size, local rank) variables of torchrun, srun and Open MPI's mpirun: read here and nowhere else.
_LAUNCHERS = (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
              ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
              ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"))


def launcher_rank(environ=os.environ) -> int | None:
    """This process's world rank when a launcher started it (any launcher's rank variable is set), else None."""
    if not any(rank in environ for rank, _, _ in _LAUNCHERS):
        return None
    return launcher_env(environ).world_rank


def launcher_local_rank(default: int, environ=os.environ) -> int:
    """This node's GPU index for a rank: the launcher's local rank where one is set, else `default`."""
    for _, _, local in _LAUNCHERS:
        if local in environ:
            return int(environ[local])
    return default


def launcher_env(environ=os.environ) -> LauncherEnv:
    """RANK/WORLD_SIZE/LOCAL_RANK (torchrun), SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (srun), or Open MPI's."""
    for rank, size, local in _LAUNCHERS:
        if rank in environ and size in environ:
            return LauncherEnv(int(environ[rank]), int(environ[size]), int(environ.get(local, environ[rank])))
    raise ConfigError("no launcher environment found. Note: expected RANK and WORLD_SIZE (torchrun), SLURM_PROCID "
                      "and SLURM_NTASKS (srun) or OMPI_COMM_WORLD_RANK/SIZE (mpirun). Fix: start the workers with "
                      "one of those, or use `trt-distri run --gpus N` on one machine")


def rendezvous_ids(directory: Path, rank: int, make_ids, timeout_s: float = 300.0) -> list[bytes]:
    """NCCL unique ids through a shared directory: rank 0 writes them (atomically), the others wait for them."""
    path = Path(directory) / "nccl-ids.bin"
    if rank == 0:
        ids = make_ids()
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(b"".join(ids))
        os.replace(tmp, path)
        return ids
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise RankFailedError(f"rank {rank} waited {timeout_s:.0f} s for {path} from rank 0. Fix: give every "
                                  "rank the same --rendezvous directory on a shared file system")
        time.sleep(0.1)
    data = path.read_bytes()
    return [data[i:i + UNIQUE_ID_BYTES] for i in range(0, len(data), UNIQUE_ID_BYTES)]
