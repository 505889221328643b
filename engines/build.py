"""Build every segment of a work directory's graph sets into engines, one worker process per GPU.

Every rank runs the same graphs (docs/design.md), so an engine depends only on the segment and the GPU's
architecture: GPUs are grouped by compute capability, each group's segments are spread over its GPUs (one spawned
process per GPU, pinned with CUDA_VISIBLE_DEVICES), and the resulting file serves every rank on that kind of GPU.
Segments whose key is already in the cache are reused; segments with identical keys are built once. Backends that
build without a GPU and make portable engines (TensorRT-RTX, ONNX Runtime) build in this process.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from trt_distri.engines.backend import Backend, BackendBuildOptions, get_backend
from trt_distri.engines.cache import EngineCache, EngineKey, engine_key
from trt_distri.engines.gpus import list_gpus
from trt_distri.engines.io_check import check_io_against_manifest
from trt_distri.engines.weights import verify_weights
from trt_distri.errors import ConfigError, ManifestError
from trt_distri.manifest import GRAPH_SETS, Manifest, Segment
from trt_distri.paths import remove_stale

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildJob:
    """One engine to build: a segment for one architecture, written to every path that shares its key."""

    segment: Segment
    key: EngineKey
    paths: tuple[Path, ...]
    device: int | None  # the GPU that builds it; None: this process, no GPU

    @property
    def label(self) -> str:
        arch = self.key.fields["gpu_arch"]
        return f"{self.segment.name} ({'sm ' + arch if arch[0].isdigit() else arch})"


@dataclass
class BuildReport:
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0


#: progress(done, total, job label, seconds that job took)
Progress = Callable[[int, int, str, float], None]


def _targets(backend: Backend, gpus: Sequence[int] | None) -> dict[str, list[int | None]]:
    """Architecture -> devices that build for it."""
    caps = backend.capabilities()
    available = {g.index: g for g in list_gpus()}
    wanted = list(available) if gpus is None else list(gpus)
    unknown = [d for d in wanted if d not in available]
    if unknown and (caps.device_specific or not caps.builds_without_gpu):
        raise ConfigError(f"--gpus names GPUs this machine lacks: {unknown}. Note: expected some of "
                          f"{sorted(available) or 'none (nvidia-smi lists no GPU)'}. Fix: pass existing indices")
    if not caps.device_specific and caps.builds_without_gpu:
        return {arch: [None] for arch in backend.portable_archs()}
    if not wanted:
        raise ConfigError(f"{backend.label} builds engines on a CUDA GPU and this machine has none. Note: "
                          "expected a GPU listed by nvidia-smi. Fix: use --backend trt-rtx (builds on the CPU) or "
                          "--backend ort")
    groups: dict[str, list[int | None]] = {}
    for d in wanted:
        groups.setdefault(backend.device_arch(d) if caps.device_specific else "any", []).append(d)
    return groups


def plan_jobs(cache: EngineCache, targets: dict[str, list[int | None]], options: BackendBuildOptions,
              report: BuildReport) -> list[BuildJob]:
    """Jobs for every segment and architecture not already in the cache, deduplicated by key."""
    by_key: dict[str, tuple[Segment, EngineKey, list[Path]]] = {}
    for arch in targets:
        for segment in (s for name in GRAPH_SETS for s in cache.manifest.segments(name)):
            key, path = engine_key(cache.manifest, segment, cache.backend, arch, options), cache.path(segment, arch)
            if cache.is_fresh(path, key):
                report.reused.append(path.name)
                continue
            by_key.setdefault(key.digest, (segment, key, []))[2].append(path)
    jobs, turn = [], {arch: 0 for arch in targets}
    for segment, key, paths in by_key.values():
        arch = key.fields["gpu_arch"]
        devices = targets[arch]
        jobs.append(BuildJob(segment, key, tuple(paths), devices[turn[arch] % len(devices)]))
        turn[arch] += 1
    return jobs


def run_job(cache: EngineCache, options: BackendBuildOptions, job: BuildJob) -> float:
    """Build one job and write its engine to each of its paths; return the seconds it took."""
    start = time.perf_counter()
    data, io = cache.backend.build(cache.manifest.graph_path(job.segment), options, job.key.fields["gpu_arch"])
    check_io_against_manifest(io, job.segment)
    weights = cache.backend.engine_weights(data)
    for path in job.paths:
        cache.write(path, data, job.key, io, job.segment, stripped=options.strips_weights, weights=weights)
    return time.perf_counter() - start


@functools.cache
def _worker_cache(workdir: Path, backend_name: str) -> EngineCache:
    """A GPU worker's cache: the manifest is read once per worker process (its pool lives for one build)."""
    return EngineCache(Manifest.load(workdir), get_backend(backend_name))


def _run_job_in_worker(workdir: Path, backend_name: str, options: BackendBuildOptions, job: BuildJob) -> float:
    return run_job(_worker_cache(workdir, backend_name), options, job)


def _pin_gpu(device: int) -> None:
    """Worker initializer: this process sees only `device` (as CUDA device 0)."""
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(device)


def _run_on_gpus(workdir: Path, backend_name: str, options: BackendBuildOptions, jobs: list[BuildJob],
                 progress: Progress | None) -> None:
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold a CUDA context
    pools = {d: ProcessPoolExecutor(1, context, initializer=_pin_gpu, initargs=(d,))
             for d in sorted({j.device for j in jobs})}
    try:
        futures: list[tuple[BuildJob, Future]] = [
            (j, pools[j.device].submit(_run_job_in_worker, workdir, backend_name, options, j)) for j in jobs]
        for done, (job, future) in enumerate(futures, 1):
            seconds = future.result()
            if progress:
                progress(done, len(jobs), f"{job.label} on GPU {job.device}", seconds)
    finally:
        for pool in pools.values():
            pool.shutdown(cancel_futures=True)


def build_workdir(workdir: str | Path, backend_name: str, gpus: Sequence[int] | None = None,
                  options: BackendBuildOptions | None = None, progress: Progress | None = None) -> BuildReport:
    """Build (or reuse) the engines of every segment of both graph sets into WORKDIR/engines/<backend>/."""
    start, report = time.perf_counter(), BuildReport()
    manifest, backend = Manifest.load(workdir), get_backend(backend_name)
    _check_graphs(manifest)
    verify_weights(manifest, full=True)
    cache = EngineCache(manifest, backend)
    options = options or backend.build_options(cache.root)
    cache.root.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache.root):
        remove_stale(cache.root)
        _build(manifest, cache, backend_name, _targets(backend, gpus), options, report, progress)
    report.seconds = time.perf_counter() - start
    return report


def _check_graphs(manifest: Manifest) -> None:
    """Every graph the manifest names exists (a deleted file is named with the fix, not a backend's error)."""
    segments = [s for name in GRAPH_SETS for s in manifest.segments(name)]
    missing = [manifest.graph_path(s) for s in segments if not manifest.graph_path(s).is_file()]
    if missing:
        raise ManifestError(f"{len(missing)} graph file(s) of {manifest.root} are missing: {missing[0]}"
                            f"{' and others' if len(missing) > 1 else ''}. Note: expected every graph of the "
                            f"manifest. Fix: export again (`trt-distri export ... -o {manifest.root} --overwrite`)")


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One build of a cache at a time: a second waits, then reuses what the first built."""
    with open(root / ".build.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another build of %s to finish", root)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(manifest: Manifest, cache: EngineCache, backend_name: str, targets: dict,
           options: BackendBuildOptions, report: BuildReport, progress: Progress | None) -> None:
    backend = cache.backend
    jobs = plan_jobs(cache, targets, options, report)
    log.info("%s: %d engine(s) to build, %d reused from %s", backend.label, len(jobs), len(report.reused),
             cache.root)
    if any(j.device is not None for j in jobs):
        _run_on_gpus(manifest.root, backend_name, options, jobs, progress)
    else:
        for done, job in enumerate(jobs, 1):
            seconds = run_job(cache, options, job)  # the manifest read once, not per job
            if progress:
                progress(done, len(jobs), job.label, seconds)
    report.built = [p.name for j in jobs for p in j.paths]
