"""Open a work directory's graphs as sessions of a backend, for one device (None: the CPU).

Engines come from the engine cache (`trt-distri build`) when it holds this backend's; a backend that `runs_onnx`
can also run the exported graphs as they are. The scheduler's step graph is tiny and always run from its ONNX
file, by the backend itself where it `runs_onnx`, else by `engines.backend.onnx_runner()`. The opener also makes
the rank's LoRA patcher (`open_session.patcher(sessions, stream)`), which writes the engines' weights in place.
"""
from __future__ import annotations

import os

from trt_distri.engines.backend import LoadOptions, get_backend, onnx_runner
from trt_distri.engines.cache import EngineCache
from trt_distri.engines.weights import verify_weights
from trt_distri.errors import ManifestError
from trt_distri.manifest import Manifest, Segment
from trt_distri.runtime.host import HostBoundSession, HostDevice


WARMUP_CUDA_GRAPH_ENV = "TRT_DISTRI_WARMUP_CUDA_GRAPH"


def replayed_segments(manifest: Manifest, cuda_graph: bool) -> set[str]:
    """The UNet segments that replay a CUDA graph: all of them when `cuda_graph`, but under
    TRT_DISTRI_WARMUP_CUDA_GRAPH=0 only those of the steady set (a measurement switch: each captured graph keeps
    its activations out of the shared arena, and the warm-up set has most of the segments; plain warm-up steps
    cost launches)."""
    if not cuda_graph:
        return set()
    sets = ("steady",) if os.environ.get(WARMUP_CUDA_GRAPH_ENV, "1") == "0" else tuple(manifest.graph_sets)
    return {s.name for name in sets for s in manifest.graph_sets.get(name, ())}


def session_opener(manifest: Manifest, backend_name: str, device_index: int | None, host: HostDevice | None = None,
                   cuda_graph: bool = False):
    """A callable(segment, stream) -> session with bind/run_async, for RankExecutor. `cuda_graph`: the UNet
    segments replay captured CUDA graphs (the scheduler's step graph always runs normally)."""
    backend = get_backend(backend_name)
    caps = backend.capabilities()
    backend.check_load(LoadOptions(device_index, cuda_graph=cuda_graph))  # before any rank loads anything
    verify_weights(manifest)
    cache = EngineCache(manifest, backend)
    built = cache.root.is_dir()
    # one copy of the weights on this device for every session of the rank (where the backend shares them)
    weights = backend.shared_weight_store(manifest.root / manifest.weights.file, device_index) if built else None
    runner = backend if caps.runs_onnx else onnx_runner()
    replayed = replayed_segments(manifest, cuda_graph)

    def open_session(segment: Segment, stream: int):
        options = LoadOptions(device_index, stream if device_index is not None else None)
        unet = LoadOptions(options.device, options.stream, cuda_graph=segment.name in replayed)
        if segment.name == manifest.step.name:
            session = _raw(runner, manifest, segment, options)
        elif built:
            session = cache.load(segment, unet, weights=weights)
        elif caps.runs_onnx:
            session = _raw(backend, manifest, segment, unet)
        else:
            raise ManifestError(f"{manifest.root} has no {backend_name} engines. Fix: run `trt-distri build "
                                f"{manifest.root} --backend {backend_name}` first")
        return HostBoundSession(session, host) if device_index is None else session

    def patcher(sessions, stream: int):
        """The rank's LoRA state over its loaded `sessions` (engines.lora_apply), written on `stream`."""
        from trt_distri.engines.lora_apply import make_patcher

        return make_patcher(manifest, backend, cache if built else None, weights, sessions, device_index,
                            stream if device_index is not None else None)

    open_session.weights, open_session.patcher = weights, patcher
    return open_session


def _raw(backend, manifest: Manifest, segment: Segment, options: LoadOptions):
    path = manifest.graph_path(segment)
    return backend.load(path, LoadOptions(options.device, options.stream, weights_dir=path.parent,
                                          cuda_graph=options.cuda_graph))
