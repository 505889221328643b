"""The GPU path: one process per GPU (runtime.launch), CUDA memory and streams (runtime.cuda), NCCL (runtime.nccl)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trt_distri.runtime.cuda import CudaDevice
from trt_distri.runtime.executor import RankExecutor, RunOptions
from trt_distri.runtime.generation import GenerationInputs, Topology, rank_inputs
from trt_distri.runtime.launch import WorkerSpec, supervise
from trt_distri.runtime.layout import RankLayout
from trt_distri.runtime.nccl import NcclComm, NcclLibrary
from trt_distri.runtime.sessions import session_opener


@dataclass(frozen=True)
class Variant:
    """One way to run the loaded sessions: benchmarks compare variants within one load (and one warm GPU)."""

    label: str
    no_comm: bool = False  # skip the exchange (the paper's "No Comm." diagnostic)
    warmup_steps: int | None = None  # None: the run's own; a number >= steps - 1 makes every step synchronous
    repeats: int | None = None  # None: run_gpus' repeats


def gpu_worker(spec: WorkerSpec) -> dict:
    """One rank: load sessions on its GPU, join the communicators, generate `repeats` times."""
    p = spec.payload
    data = json.loads((Path(p["workdir"]) / "manifest.json").read_text())
    topo = Topology.from_manifest(data)
    group, rank = topo.place(spec.world_rank)
    device = CudaDevice(spec.device)
    start = time.perf_counter()
    comm = NcclComm(NcclLibrary(), device, p["ids"][group], rank, topo.devices, p["ids"][-1], spec.world_rank,
                    topo.world)
    opt: RunOptions = p["options"]
    opts = RunOptions(opt.warmup_steps, opt.no_comm, group, topo.groups == 2, p["inputs"].guidance_scale)
    executor = RankExecutor(data, RankLayout.from_manifest(data, rank),
                            session_opener(Path(p["workdir"]), p["backend"], spec.device,
                                           cuda_graph=p.get("cuda_graph", False)), device, comm, opts)
    load_s = time.perf_counter() - start
    latents, cond = rank_inputs(p["inputs"], data, spec.world_rank)
    runs, outputs = [], {}
    for v in p.get("variants") or [Variant("run", opt.no_comm)]:
        executor.opt.no_comm = v.no_comm
        executor.opt.warmup_steps = opt.warmup_steps if v.warmup_steps is None else v.warmup_steps
        for _ in range(p.get("repeats", 1) if v.repeats is None else v.repeats):
            t0 = time.perf_counter()
            out = executor.generate(latents, cond, p["inputs"].schedule)
            runs.append({"variant": v.label, "wall_s": round(time.perf_counter() - t0, 3), **executor.times.summary()})
        outputs[v.label] = out
    comm.close()
    first = spec.world_rank == 0
    return {"latents": out if first else None, "variant_latents": outputs if first else None,
            "load_s": round(load_s, 2), "runs": runs, "device_bytes_used": device.peak_memory(), "gpu": spec.device}


def run_gpus(workdir: str | Path, inputs: GenerationInputs, options: RunOptions, gpus: list[int],
             backend: str = "ort", repeats: int = 1, timeout_s: float = 3600.0,
             variants: list[Variant] | None = None, cuda_graph: bool = False) -> tuple[np.ndarray, list[dict]]:
    """Generate with one process per GPU in `gpus` (world rank i on gpus[i]); returns the last run's latents and
    the rank reports (rank 0's holds every variant's latents under `variant_latents`). `cuda_graph`: UNet segments
    replay captured CUDA graphs (experimental, ONNX Runtime backend)."""
    data = json.loads((Path(workdir) / "manifest.json").read_text())
    topo = Topology.from_manifest(data)
    if len(gpus) != topo.world:
        from trt_distri.errors import ConfigError

        raise ConfigError(f"the work directory is exported for {topo.world} GPUs ({topo.groups} guidance group(s) of "
                          f"{topo.devices}). Note: expected {topo.world} GPUs, got {len(gpus)}. Fix: pass --gpus "
                          f"{topo.world}, or export again with --gpus {len(gpus)}")
    lib = NcclLibrary()
    ids = [lib.unique_id() for _ in range(topo.groups)] + [lib.unique_id()]
    options = replace(options, on_step=None)  # a host callback does not cross into the worker processes
    payload = {"workdir": str(workdir), "backend": backend, "options": options, "inputs": inputs, "ids": ids,
               "repeats": repeats, "variants": variants, "cuda_graph": cuda_graph}
    specs = [WorkerSpec(w, gpus[w], payload) for w in range(topo.world)]
    reports = supervise(gpu_worker, specs, timeout_s=timeout_s)
    return reports[0]["latents"], reports


def run_launched_rank(workdir: str | Path, inputs: GenerationInputs, options: RunOptions, rendezvous: Path,
                      backend: str = "ort", world_rank: int | None = None,
                      gpu: int | None = None) -> tuple[np.ndarray | None, dict]:
    """This process is one rank of a multi-process launch; NCCL ids meet in the `rendezvous` directory.
    The rank and GPU come from torchrun/srun/mpirun's environment unless given."""
    from trt_distri.runtime.launch import launcher_env, rendezvous_ids

    if world_rank is None or gpu is None:
        env = launcher_env()
        world_rank = env.world_rank if world_rank is None else world_rank
        gpu = env.local_rank if gpu is None else gpu
    data = json.loads((Path(workdir) / "manifest.json").read_text())
    groups = Topology.from_manifest(data).groups
    ids = rendezvous_ids(rendezvous, world_rank, lambda: [NcclLibrary().unique_id() for _ in range(groups + 1)])
    payload = {"workdir": str(workdir), "backend": backend, "options": replace(options, on_step=None),
               "inputs": inputs, "ids": ids}
    report = gpu_worker(WorkerSpec(world_rank, gpu, payload))
    return report["latents"], report
