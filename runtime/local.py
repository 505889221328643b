"""All ranks in one process, as threads, on the CPU (`trt-distri run --device cpu`).

Each thread is a rank with its own host memory and sessions; they exchange through runtime.comm.LocalComm, which
implements the communicator interface that NCCL implements on GPUs. A rank that fails aborts the group, so the
others stop at their next exchange with RankFailedError instead of waiting.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from trt_distri.runtime.comm import LocalComm, LocalGroup, RankFailedError
from trt_distri.runtime.executor import RankExecutor, RunOptions
from trt_distri.runtime.generation import GenerationInputs, Topology, rank_inputs
from trt_distri.runtime.host import HostDevice
from trt_distri.runtime.layout import RankLayout
from trt_distri.runtime.sessions import session_opener

log = logging.getLogger(__name__)


def run_local(workdir: str | Path, inputs: GenerationInputs, options: RunOptions, backend: str = "ort",
              timeout_s: float = 600.0) -> tuple[np.ndarray, list[dict]]:
    """Generate on the CPU; returns the final latents (1, C, H, W) and each rank's step-time summary."""
    workdir = Path(workdir)
    data = json.loads((workdir / "manifest.json").read_text())
    topo = Topology.from_manifest(data)
    group = LocalGroup(topo.world, timeout_s)
    results: dict[int, tuple[np.ndarray, dict]] = {}
    errors: dict[int, BaseException] = {}

    def rank_main(world_rank: int) -> None:
        try:
            results[world_rank] = _rank(workdir, data, inputs, options, backend, group, world_rank, topo)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller below
            errors[world_rank] = exc
            group.abort(f"rank {world_rank}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=rank_main, args=(w,), name=f"rank{w}", daemon=True)
               for w in range(topo.world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _raise_first(errors)
    return results[0][0], [results[w][1] for w in sorted(results)]


def _rank(workdir: Path, data: dict, inputs: GenerationInputs, options: RunOptions, backend: str,
          group: LocalGroup, world_rank: int, topo: Topology) -> tuple[np.ndarray, dict]:
    guidance_group, rank = topo.place(world_rank)
    device = HostDevice()
    comm = LocalComm(group, world_rank, topo.devices, device)
    opts = replace(options, group=guidance_group, split=topo.groups == 2, guidance_scale=inputs.guidance_scale)
    layout = RankLayout.from_manifest(data, rank)
    executor = RankExecutor(data, layout, session_opener(workdir, backend, None, device), device, comm, opts)
    latents, cond = rank_inputs(inputs, data, world_rank)
    return executor.generate(latents, cond, inputs.schedule), executor.times.summary()


def _raise_first(errors: dict[int, BaseException]) -> None:
    """Re-raise the error that started it (not the RankFailedError of the ranks it stopped)."""
    if not errors:
        return
    causes = {w: e for w, e in errors.items() if not isinstance(e, RankFailedError)} or errors
    first = min(causes)
    raise causes[first]
