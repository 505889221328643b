"""Where a `trt_distri.api.Generator`'s ranks run: threads of this process (CPU) or GPU processes.

`LocalRanks` (runtime.local) keeps each rank's executor (sessions, buffers) for every generation, one thread per
rank; `GpuRanks` keeps one process per GPU loaded for every generation (runtime.gpu.GpuRankPool), or is one rank
of an external launch (which loads per generation).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.generation import GenerationInputs, Topology


class GpuRanks:
    """One loaded process per GPU, kept for every generation (rank None), or this process as one rank of a
    launch. A generation that fails stops the processes; the next one loads them again."""

    def __init__(self, workdir: Path, data: dict, backend: str, rank: int | None, gpu: int | None,
                 rendezvous: str | Path | None, cuda_graph: bool | None = None) -> None:
        from trt_distri.api import InvalidArgumentError

        self.workdir, self.data, self.backend, self.rank = workdir, data, backend, rank
        self.topo = Topology.from_manifest(data)
        self.generations, self.gpu, self.cuda_graph, self.pool = 0, 0, cuda_graph, None
        if rank is None:
            self.pool = self._load()
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
        from trt_distri.runtime.gpu import run_launched_rank

        if self.rank is None:
            if self.pool is None or not self.pool.open:
                self.pool = self._load()
            return self.pool.generate(inputs, options)[0]
        directory = self.rendezvous / f"generation-{self.generations}"  # every rank counts the same generations
        self.generations += 1
        directory.mkdir(parents=True, exist_ok=True)
        return run_launched_rank(self.workdir, inputs, options, directory, self.backend, world_rank=self.rank,
                                 gpu=self.gpu)[0]

    def _load(self):
        from trt_distri.runtime.gpu import GpuRankPool

        return GpuRankPool(self.workdir, list(range(self.topo.world)), self.backend, self.cuda_graph)

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()


def _local_rank(rank: int) -> int:
    """This node's GPU index for a rank: the launcher's local rank when it set one, else the rank."""
    import os

    for var in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return rank
