"""Open a work directory's graphs as sessions of a backend, for one device (None: the CPU).

Engines come from the engine cache (`trt-distri build`) when it holds this backend's; ONNX Runtime can also run
the exported graphs as they are. The scheduler's step graph is tiny and always run from its ONNX file, by ONNX
Runtime where the backend cannot read ONNX.
"""
from __future__ import annotations

from pathlib import Path

from trt_distri.engines.backend import get_backend
from trt_distri.engines.cache import EngineCache
from trt_distri.errors import ManifestError
from trt_distri.export.manifest import Manifest
from trt_distri.runtime.host import HostBoundSession, HostDevice


def session_opener(workdir: Path, backend_name: str, device_index: int | None, host: HostDevice | None = None,
                   cuda_graph: bool = False):
    """A callable(segment, stream) -> session with bind/run_async, for RankExecutor. `cuda_graph`: the UNet
    segments replay captured CUDA graphs (the scheduler's step graph always runs normally)."""
    backend = get_backend(backend_name)
    manifest = Manifest.load(workdir)
    cache = EngineCache(manifest, backend)
    built = cache.root.is_dir()
    # one copy of the weights on this device for every session of the rank (where the backend shares them)
    weights = backend.shared_weight_store(manifest.root / manifest.data["weights"]["file"], device_index) \
        if built else None
    onnx_runner = backend if backend.capabilities().engine_suffix == ".onnx" else get_backend("ort")

    def open_session(segment: dict, stream: int):
        if segment["name"].startswith("step"):
            session = _raw(onnx_runner, manifest, segment, device_index, stream)
        elif built:
            session = cache.load(segment, device_index, stream if device_index is not None else None, cuda_graph,
                                 weights=weights)
        elif backend is onnx_runner:
            session = _raw(backend, manifest, segment, device_index, stream, cuda_graph)
        else:
            raise ManifestError(f"{workdir} has no {backend_name} engines. Fix: run `trt-distri build {workdir} "
                                f"--backend {backend_name}` first")
        return HostBoundSession(session, host) if device_index is None else session

    open_session.weights = weights
    return open_session


def _raw(backend, manifest: Manifest, segment: dict, device_index: int | None, stream: int,
         cuda_graph: bool = False):
    path = manifest.graph_path(segment)
    return backend.load(path, device_index, weights_dir=path.parent,
                        stream=stream if device_index is not None else None, cuda_graph=cuda_graph)
