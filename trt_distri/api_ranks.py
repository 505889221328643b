"""Where a `trt_distri.api.Generator`'s ranks run: threads of this process (CPU) or GPU processes.

`LocalRanks` is `runtime.local.run_local` made persistent: each rank's executor (sessions, buffers) is built once
and reused by every generation, each generation running one thread per rank. A failed generation breaks the group's
barrier; the next one starts from a new group (the executors keep their sessions).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.runtime.comm import LocalComm, LocalGroup, RankFailedError
from trt_distri.runtime.executor import RankExecutor, RunOptions
from trt_distri.runtime.generation import GenerationInputs, Topology, rank_inputs


class LocalRanks:
    """Every rank of the work directory as a thread of this process, on the CPU."""

    def __init__(self, workdir: Path, data: dict, backend: str, timeout_s: float = 600.0) -> None:
        self.data, self.topo, self.timeout_s = data, Topology.from_manifest(data), timeout_s
        self.group = LocalGroup(self.topo.world, timeout_s)
        self.executors = _on_every_rank(self.topo.world, lambda w: self._build(workdir, backend, w), self.group)

    def _build(self, workdir: Path, backend: str, world_rank: int) -> RankExecutor:
        from trt_distri.runtime.host import HostDevice
        from trt_distri.runtime.layout import RankLayout
        from trt_distri.runtime.sessions import session_opener

        group, rank = self.topo.place(world_rank)
        device = HostDevice()
        comm = LocalComm(self.group, world_rank, self.topo.devices, device)
        opts = RunOptions(group=group, split=self.topo.groups == 2)
        return RankExecutor(self.data, RankLayout.from_manifest(self.data, rank),
                            session_opener(workdir, backend, None, device), device, comm, opts)

    def run(self, inputs: GenerationInputs, options: RunOptions) -> np.ndarray:
        """The final latents (1, C, H, W) of one generation."""
        if self.group.failure is not None or self.group.barrier.broken:
            self._regroup()

        def rank_main(world_rank: int) -> np.ndarray:
            ex = self.executors[world_rank]
            ex.opt.warmup_steps, ex.opt.no_comm = options.warmup_steps, options.no_comm
            ex.opt.guidance_scale = inputs.guidance_scale
            latents, cond = rank_inputs(inputs, self.data, world_rank)
            return ex.generate(latents, cond, inputs.schedule)

        return _on_every_rank(self.topo.world, rank_main, self.group)[0]

    def _regroup(self) -> None:
        self.group = LocalGroup(self.topo.world, self.timeout_s)
        for ex in self.executors:
            ex.comm.shared = self.group

    def close(self) -> None:
        self.executors = []


def _on_every_rank(world: int, fn: Callable[[int], object], group: LocalGroup) -> list:
    """fn(world_rank) on one thread per rank; the first rank's error (not the ones it caused) is raised."""
    results: dict[int, object] = {}
    errors: dict[int, BaseException] = {}

    def main(w: int) -> None:
        try:
            results[w] = fn(w)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors[w] = exc
            group.abort(f"rank {w}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=main, args=(w,), name=f"rank{w}", daemon=True) for w in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        causes = {w: e for w, e in errors.items() if not isinstance(e, RankFailedError)} or errors
        raise causes[min(causes)]
    return [results[w] for w in range(world)]


class GpuRanks:
    """One process per GPU per generation (rank None), or this process as one rank of a launch."""

    def __init__(self, workdir: Path, data: dict, backend: str, rank: int | None, gpu: int | None,
                 rendezvous: str | Path | None) -> None:
        from trt_distri.api import InvalidArgumentError

        self.workdir, self.data, self.backend, self.rank = workdir, data, backend, rank
        self.topo = Topology.from_manifest(data)
        self.generations, self.gpu = 0, 0
        if rank is None:
            return
        if not 0 <= rank < self.topo.world:
            raise InvalidArgumentError(f"invalid rank. Note: expected 0..{self.topo.world - 1} (the work "
                                       f"directory's world), got {rank}")
        if rendezvous is None:
            raise ConfigError("a rank of a multi-process launch needs a rendezvous directory that every rank can "
                              "read. Fix: pass rendezvous (a fresh directory on a shared file system)")
        self.rendezvous, self.gpu = Path(rendezvous), gpu if gpu is not None else _local_rank(rank)

    def run(self, inputs: GenerationInputs, options: RunOptions) -> np.ndarray | None:
        """The final latents; None on ranks other than world rank 0 of a launch."""
        from trt_distri.runtime.gpu import gpu_worker, run_gpus
        from trt_distri.runtime.launch import WorkerSpec, rendezvous_ids
        from trt_distri.runtime.nccl import NcclLibrary

        if self.rank is None:
            return run_gpus(self.workdir, inputs, options, list(range(self.topo.world)), self.backend)[0]
        directory = self.rendezvous / f"generation-{self.generations}"  # every rank counts the same generations
        self.generations += 1
        directory.mkdir(parents=True, exist_ok=True)
        ids = rendezvous_ids(directory, self.rank,
                             lambda: [NcclLibrary().unique_id() for _ in range(self.topo.groups + 1)])
        payload = {"workdir": str(self.workdir), "backend": self.backend, "options": options, "inputs": inputs,
                   "ids": ids}
        return gpu_worker(WorkerSpec(self.rank, self.gpu, payload))["latents"]

    def close(self) -> None:
        return None


def _local_rank(rank: int) -> int:
    """This node's GPU index for a rank: the launcher's local rank when it set one, else the rank."""
    import os

    for var in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return rank
