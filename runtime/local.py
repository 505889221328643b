"""All ranks in one process, as threads, on the CPU (`trt-distri run --device cpu`).

Each thread is a rank with its own host memory and sessions; they exchange through runtime.comm.LocalComm, which
implements the communicator interface that NCCL implements on GPUs. A rank that fails aborts the group, so the
others stop at their next exchange with RankFailedError instead of waiting. `LocalRanks` keeps every rank's
executor (sessions, buffers) for many generations; `run_local` is one generation.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from trt_distri.engines.backend import DEFAULT_BACKEND
from trt_distri.manifest import Manifest
from trt_distri.runtime.comm import LocalComm, LocalGroup, RankFailedError
from trt_distri.runtime.executor import RankExecutor, RunOptions
from trt_distri.runtime.generation import GenerationInputs, Topology, rank_inputs
from trt_distri.runtime.host import HostDevice
from trt_distri.runtime.layout import RankLayout
from trt_distri.runtime.sessions import session_opener


class LocalRanks:
    """Every rank of the work directory as a thread of this process, on the CPU (a runtime.generation.Ranks)."""

    aux_device = None

    def __init__(self, manifest: Manifest, backend: str = DEFAULT_BACKEND, timeout_s: float = 600.0) -> None:
        self.manifest, self.topo, self.timeout_s = manifest, Topology.from_manifest(manifest), timeout_s
        self.group = LocalGroup(self.topo.world, timeout_s)
        self.executors: list[RankExecutor] = on_every_rank(
            self.topo.world, lambda w: self._build(backend, w), self.group)

    def _build(self, backend: str, world_rank: int) -> RankExecutor:
        group, rank = self.topo.place(world_rank)
        device = HostDevice()
        comm = LocalComm(self.group, world_rank, self.topo.devices, device)
        opts = RunOptions(group=group, split=self.topo.groups == 2)
        return RankExecutor(self.manifest, RankLayout.from_manifest(self.manifest, rank),
                            session_opener(self.manifest, backend, None, device), device, comm, opts)

    def run(self, inputs: GenerationInputs, options: RunOptions) -> np.ndarray:
        """The final latents (1, C, H, W) of one generation; `times` then holds each rank's step summary."""
        if self.group.failure is not None or self.group.barrier.broken:
            self._regroup()

        def rank_main(world_rank: int) -> np.ndarray:
            ex = self.executors[world_rank]
            ex.opt = replace(options, group=ex.opt.group, split=ex.opt.split, guidance_scale=inputs.guidance_scale)
            latents, cond = rank_inputs(inputs, self.manifest, world_rank)
            return ex.generate(latents, cond, inputs.schedule)

        return on_every_rank(self.topo.world, rank_main, self.group)[0]

    def set_adapters(self, adapters) -> None:
        """Apply exactly these (adapter, scale) pairs on every rank ([]: the base weights)."""
        on_every_rank(self.topo.world, lambda w: self.executors[w].set_adapters(adapters), self.group)

    @property
    def times(self) -> list[dict]:
        return [ex.times.summary() for ex in self.executors]

    def _regroup(self) -> None:
        """A new barrier after a failed generation; the executors keep their sessions."""
        self.group = LocalGroup(self.topo.world, self.timeout_s)
        for ex in self.executors:
            ex.comm.shared = self.group

    def close(self) -> None:
        """Release every rank's sessions and buffers (idempotent)."""
        executors, self.executors = self.executors, []
        for ex in executors:
            ex.close()
            ex.dev.close()


def run_local(workdir: str | Path, inputs: GenerationInputs, options: RunOptions, backend: str = DEFAULT_BACKEND,
              timeout_s: float = 600.0, adapters=()) -> tuple[np.ndarray, list[dict]]:
    """Generate once on the CPU (with LoRA `adapters`: (adapter, scale) pairs); returns the final latents
    (1, C, H, W) and each rank's step-time summary."""
    ranks = LocalRanks(Manifest.load(workdir), backend, timeout_s)
    try:
        if adapters:
            ranks.set_adapters(adapters)
        return ranks.run(inputs, options), ranks.times
    finally:
        ranks.close()


def on_every_rank(world: int, fn: Callable[[int], object], group: LocalGroup) -> list:
    """fn(world_rank) on one thread per rank; the error that started a failure (not the ones it caused) is raised.
    Ctrl-C in the calling thread aborts the group and waits for every rank to stop before it propagates."""
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
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:  # Ctrl-C: stop the ranks at their next step, and leave only once they have stopped
        group.abort("interrupted")  # (a rank thread left inside ONNX Runtime at exit aborts the whole process)
        for t in threads:
            t.join()
        raise
    if errors:
        causes = {w: e for w, e in errors.items() if not isinstance(e, RankFailedError)} or errors
        raise causes[min(causes)]
    return [results[w] for w in range(world)]
