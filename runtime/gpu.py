"""The GPU path: one process per GPU (runtime.launch), CUDA memory and streams (runtime.cuda), NCCL (runtime.nccl)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trt_distri.engines.backend import DEFAULT_BACKEND
from trt_distri.errors import ConfigError, InvalidArgumentError
from trt_distri.manifest import Manifest
from trt_distri.runtime.cuda import CudaDevice
from trt_distri.runtime.executor import RankExecutor, RunOptions, uses_cuda_graph
from trt_distri.runtime.generation import GenerationInputs, Topology, rank_inputs
from trt_distri.runtime.launch import RankPool, WorkerSpec, launcher_local_rank
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


@dataclass(frozen=True)
class Request:
    """One call to the loaded ranks: generate `repeats` times per variant."""

    inputs: GenerationInputs
    options: RunOptions
    repeats: int = 1
    variants: list[Variant] | None = None


@dataclass(frozen=True)
class AdapterRequest:
    """Apply exactly these LoRA (adapter, scale) pairs to the loaded weights (empty: the base weights)."""

    adapters: tuple = ()


class RankServer:
    """One rank with its sessions loaded and its communicators joined, serving generation requests. The device,
    the communicator and the session opener come from three methods (the host stand-ins of the tests replace
    them)."""

    def __init__(self, spec: WorkerSpec) -> None:
        p = spec.payload
        start = time.perf_counter()
        self.manifest = Manifest.load(p["workdir"])
        topo = Topology.from_manifest(self.manifest)
        group, rank = topo.place(spec.world_rank)
        self.world_rank, self.device = spec.world_rank, self.open_device(spec.device)
        self.comm = self.join(p["ids"], group, rank, topo)
        opener = self.session_opener(self.manifest, p["backend"], spec.device, p["cuda_graph"])
        self.executor = RankExecutor(self.manifest, RankLayout.from_manifest(self.manifest, rank), opener, self.device,
                                     self.comm, RunOptions(group=group, split=topo.groups == 2))
        self.load_s = round(time.perf_counter() - start, 2)  # reported by the first request only

    def open_device(self, index: int):
        return CudaDevice(index)

    def join(self, ids: list[bytes], group: int, rank: int, topo: Topology):
        return NcclComm(NcclLibrary(), self.device, ids[group], rank, topo.devices, ids[-1], self.world_rank,
                        topo.world)

    def session_opener(self, manifest: Manifest, backend: str, index: int, cuda_graph: bool):
        return session_opener(manifest, backend, index, cuda_graph=cuda_graph)

    def __call__(self, request: Request | AdapterRequest) -> dict:
        if isinstance(request, AdapterRequest):
            start = time.perf_counter()
            written = self.executor.set_adapters(list(request.adapters))
            return {**written, "seconds": round(time.perf_counter() - start, 3),
                    "device_bytes_used": self.device.memory_used(), "gpu": self.device.index}
        opt, ex = request.options, self.executor
        ex.opt.guidance_scale = request.inputs.guidance_scale
        latents, cond = rank_inputs(request.inputs, self.manifest, self.world_rank)
        runs, outputs = [], {}
        for v in request.variants or [Variant("run", opt.no_comm)]:
            ex.opt.no_comm = v.no_comm
            ex.opt.warmup_steps = opt.warmup_steps if v.warmup_steps is None else v.warmup_steps
            for _ in range(request.repeats if v.repeats is None else v.repeats):
                t0 = time.perf_counter()
                out = ex.generate(latents, cond, request.inputs.schedule)
                runs.append({"variant": v.label, "wall_s": round(time.perf_counter() - t0, 3), **ex.times.summary()})
            outputs[v.label] = out
        first = self.world_rank == 0
        load_s, self.load_s = self.load_s, 0.0
        memory = dict(self.executor.memory, after_generation=self.device.memory_used())
        return {"latents": out if first else None, "variant_latents": outputs if first else None, "load_s": load_s,
                "runs": runs, "device_bytes_used": memory["after_generation"], "memory": memory,
                "gpu": self.device.index}

    def close(self) -> None:
        """Release everything this rank holds: sessions, buffers and streams (the executor's), the communicator,
        then the device's remaining memory and events (idempotent). Not after a failed collective: a peer may be
        gone, and destroying the communicator or freeing memory would wait for it."""
        self.executor.close()
        self.comm.close()
        self.device.close()


def serve_rank(spec: WorkerSpec, server_type: type[RankServer] = RankServer) -> tuple[RankServer, dict]:
    """RankPool's target: load this rank once."""
    server = server_type(spec)
    return server, {"load_s": server.load_s, "pid": os.getpid()}


class GpuRankPool:
    """One process per GPU in `gpus` (world rank i on gpus[i]) that loads its sessions once and then generates
    on request, until close(). `cuda_graph`, `reused` (more than one generation is expected): see
    executor.uses_cuda_graph; fixed at load. `serve`: what each process runs (tests: host stand-ins)."""

    serve = staticmethod(serve_rank)

    def __init__(self, workdir: str | Path, gpus: list[int], backend: str = DEFAULT_BACKEND,
                 cuda_graph: bool | None = None, reused: bool = True, load_timeout_s: float = 1800.0) -> None:
        topo = Topology.from_manifest(Manifest.load(workdir))
        if len(gpus) != topo.world:
            raise ConfigError(f"the work directory is exported for {topo.world} GPUs ({topo.groups} guidance group(s) "
                              f"of {topo.devices}). Note: expected {topo.world} GPUs, got {len(gpus)}. Fix: pass "
                              f"--gpus {topo.world}, or export again with --gpus {len(gpus)}")
        lib = NcclLibrary()
        ids = [lib.unique_id() for _ in range(topo.groups)] + [lib.unique_id()]
        payload = {"workdir": str(workdir), "backend": backend, "ids": ids,
                   "cuda_graph": uses_cuda_graph(cuda_graph, backend, reused)}
        self.pool = RankPool(self.serve, [WorkerSpec(w, gpus[w], payload) for w in range(topo.world)],
                             timeout_s=load_timeout_s)

    def generate(self, inputs: GenerationInputs, options: RunOptions, repeats: int = 1,
                 variants: list[Variant] | None = None, timeout_s: float = 3600.0) -> tuple[np.ndarray, list[dict]]:
        """The last run's latents and the rank reports (rank 0's holds every variant's latents)."""
        request = Request(inputs, replace(options, on_step=None), repeats, variants)  # a callback stays here
        reports = self.pool.call(request, timeout_s)
        return reports[0]["latents"], reports

    def set_adapters(self, adapters, timeout_s: float = 600.0) -> list[dict]:
        """Apply LoRA (adapter, scale) pairs on every rank between generations; each rank's report."""
        return self.pool.call(AdapterRequest(tuple(adapters)), timeout_s)

    @property
    def open(self) -> bool:
        return self.pool.open

    def close(self) -> None:
        self.pool.close()


def run_gpus(workdir: str | Path, inputs: GenerationInputs, options: RunOptions, gpus: list[int],
             backend: str = DEFAULT_BACKEND, repeats: int = 1, timeout_s: float = 3600.0,
             variants: list[Variant] | None = None, adapters=()) -> tuple[np.ndarray, list[dict]]:
    """Load `workdir` on `gpus`, apply LoRA `adapters` ((adapter, scale) pairs), generate once (`repeats` times per
    variant), and stop the processes again; see GpuRankPool. `options.cuda_graph`: see executor.uses_cuda_graph."""
    ranks = GpuRankPool(workdir, gpus, backend, options.cuda_graph, reused=repeats > 1, load_timeout_s=timeout_s)
    try:
        if adapters:
            ranks.set_adapters(adapters, timeout_s)
        return ranks.generate(inputs, options, repeats, variants, timeout_s)
    finally:
        ranks.close()


def run_launched_rank(workdir: str | Path, inputs: GenerationInputs, options: RunOptions, rendezvous: Path,
                      backend: str = DEFAULT_BACKEND, world_rank: int | None = None,
                      gpu: int | None = None, adapters=()) -> tuple[np.ndarray | None, dict]:
    """This process is one rank of a multi-process launch; NCCL ids meet in the `rendezvous` directory.
    The rank and GPU come from torchrun/srun/mpirun's environment unless given."""
    from trt_distri.runtime.launch import launcher_env, rendezvous_ids

    if world_rank is None or gpu is None:
        env = launcher_env()
        world_rank = env.world_rank if world_rank is None else world_rank
        gpu = env.local_rank if gpu is None else gpu
    groups = Manifest.load(workdir).groups
    ids = rendezvous_ids(rendezvous, world_rank, lambda: [NcclLibrary().unique_id() for _ in range(groups + 1)])
    server = RankServer(WorkerSpec(world_rank, gpu, {"workdir": str(workdir), "backend": backend, "ids": ids,
                                                     "cuda_graph": uses_cuda_graph(options.cuda_graph, backend,
                                                                                   reused=False)}))
    try:
        if adapters:
            server(AdapterRequest(tuple(adapters)))
        report = server(Request(inputs, replace(options, on_step=None)))
    finally:
        server.close()
    return report["latents"], report


class GpuRanks:
    """A runtime.generation.Ranks on GPUs: one loaded process per GPU, kept for every generation (rank None), or
    this process as one rank of a launch (loaded per generation). A generation that fails stops the processes; the
    next one loads them again."""

    def __init__(self, manifest: Manifest, backend: str, rank: int | None, gpu: int | None,
                 rendezvous: str | Path | None, cuda_graph: bool | None = None) -> None:
        self.manifest, self.backend, self.rank = manifest, backend, rank
        self.topo = Topology.from_manifest(manifest)
        self.generations, self.aux_device, self.cuda_graph, self.pool = 0, 0, cuda_graph, None
        self.adapters: tuple = ()  # LoRA (adapter, scale) pairs in force; re-applied when the ranks load again
        if rank is None:
            self.pool = self._load()
            return
        if not 0 <= rank < self.topo.world:
            raise InvalidArgumentError(f"invalid rank. Note: expected 0..{self.topo.world - 1} (the work "
                                       f"directory's world), got {rank}")
        if rendezvous is None:
            raise ConfigError("a rank of a multi-process launch needs a rendezvous directory that every rank can "
                              "read. Fix: pass rendezvous (a fresh directory on a shared file system)")
        self.rendezvous = Path(rendezvous)
        self.aux_device = gpu if gpu is not None else launcher_local_rank(rank)

    def run(self, inputs: GenerationInputs, options: RunOptions) -> np.ndarray | None:
        """The final latents; None on ranks other than world rank 0 of a launch."""
        if self.rank is None:
            if self.pool is None or not self.pool.open:
                self.pool = self._load()
                if self.adapters:
                    self.pool.set_adapters(self.adapters)
            return self.pool.generate(inputs, options)[0]
        directory = self.rendezvous / f"generation-{self.generations}"  # every rank counts the same generations
        self.generations += 1
        directory.mkdir(parents=True, exist_ok=True)
        return run_launched_rank(self.manifest.root, inputs, options, directory, self.backend, world_rank=self.rank,
                                 gpu=self.aux_device, adapters=self.adapters)[0]

    def set_adapters(self, adapters) -> None:
        """Apply LoRA (adapter, scale) pairs: now on loaded rank processes, else from the next generation on."""
        adapters = tuple(adapters)
        if self.rank is None and self.pool is not None and self.pool.open:
            self.adapters = ()  # a failure stops the processes; they load again with the base weights
            self.pool.set_adapters(adapters)
        self.adapters = adapters

    def _load(self) -> GpuRankPool:
        return GpuRankPool(self.manifest.root, list(range(self.topo.world)), self.backend, self.cuda_graph)

    def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.close()
