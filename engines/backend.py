"""One interface for every engine backend: build a graph into engine bytes, load an engine into a session.

A `Backend` is stateless and cheap to construct; its package is imported lazily, on first use, so that a missing
one becomes a MissingPackageError naming the package (not an ImportError at import time). A `Session` has named
inputs and outputs and two ways to run:
- `run_host(feeds)`: numpy in, numpy out (tests, CPU machines);
- `bind(name, device_ptr)` then `run_async(stream)`: tensors live in caller-owned device memory (the runtime binds
  exchange-area offsets) and work is enqueued on the caller's CUDA stream without synchronizing.

Backends differ in what they can do, not in how they are called: those differences are fields of
`BackendCapabilities`. This module imports neither torch nor onnx, so the runtime can use it.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_distri.engines.trt import BuildOptions, TensorInfo
from trt_distri.errors import ConfigError, TrtDistriError

__all__ = ["BACKENDS", "Backend", "BackendCapabilities", "BuildOptions", "Session", "TensorInfo",
           "available_backends", "get_backend"]


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do on this machine; each field names the code that reads it."""

    builds_without_gpu: bool
    """`build` works on a machine without a CUDA GPU (TensorRT-RTX compiles ahead of time; ORT rewrites a graph)."""
    runs_without_gpu: bool
    """`load(engine, device=None)` gives a session that runs on the CPU (ONNX Runtime's CPU provider)."""
    device_specific: bool
    """An engine runs only on GPUs of the compute capability it was built on: the cache key records it."""
    stream_at_load: bool
    """The CUDA stream is fixed when the session is created (ORT's user_compute_stream); `run_async` must be
    given that same stream. Otherwise any stream may be passed to each `run_async` (TensorRT)."""
    engine_suffix: str
    """File suffix of a built engine (".engine" for TensorRT, ".onnx" for ONNX Runtime)."""


class Session(abc.ABC):
    """A loaded engine. Subclasses implement the `_impl` hooks; the public methods check names first."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def __init__(self, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        self.inputs, self.outputs = inputs, outputs
        self._bound: dict[str, int] = {}

    def run_host(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run synchronously on host arrays; returns every output by name."""
        expected = {t.name for t in self.inputs}
        if set(feeds) != expected:
            raise ConfigError(f"run_host needs exactly the session's inputs. Note: expected {sorted(expected)}, "
                              f"got {sorted(feeds)}")
        arrays = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in self.inputs}
        return self._run_host_impl(arrays)

    def bind(self, name: str, device_ptr: int) -> None:
        """Bind input or output `name` to caller-owned device memory of its full size (see `TensorInfo`)."""
        if name not in {t.name for t in self.inputs + self.outputs}:
            raise ConfigError(f"cannot bind {name!r}: the session has no such tensor. Note: expected one of "
                              f"{[t.name for t in self.inputs + self.outputs]}")
        self._bound[name] = int(device_ptr)

    def run_async(self, stream: int) -> None:
        """Enqueue one run on CUDA stream `stream` (a cudaStream_t as int) with every tensor bound; no sync."""
        missing = [t.name for t in self.inputs + self.outputs if t.name not in self._bound]
        if missing:
            raise ConfigError(f"run_async needs every input and output bound to device memory. Note: unbound: "
                              f"{missing}. Fix: call bind(name, device_ptr) for each")
        self._run_async_impl(int(stream))

    @abc.abstractmethod
    def _run_host_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _run_async_impl(self, stream: int) -> None: ...


class Backend(abc.ABC):
    """Builds graphs into engines and loads engines into sessions. `name` is the CLI's --backend value."""

    name: str
    label: str
    package: str
    """What `pip install` needs when the backend's module is missing."""

    @abc.abstractmethod
    def version(self) -> str:
        """The backend package's version (part of the cache key); raises MissingPackageError when absent."""

    @abc.abstractmethod
    def capabilities(self) -> BackendCapabilities: ...

    @abc.abstractmethod
    def build(self, graph_path: Path, options: BuildOptions, arch: str = "any") -> tuple[bytes, list[TensorInfo]]:
        """Build the ONNX graph at `graph_path` (external data beside it) for `arch` (a `device_arch` value);
        return engine bytes and its I/O."""

    @abc.abstractmethod
    def load(self, engine_path: Path, device: int | None, *, weights_dir: Path | None = None,
             stream: int | None = None, graph_path: Path | None = None, cuda_graph: bool = False,
             transient: bool = False, shared_weights=None) -> Session:
        """Load an engine on CUDA device `device` (None: the CPU, where `runs_without_gpu`).

        `weights_dir` holds external weights an engine refers to (ORT graphs; the work directory). `stream` is
        the stream of every `run_async` where `capabilities().stream_at_load`. `graph_path`, for a weight-stripped
        engine: the ONNX graph whose weights are refitted into it. `cuda_graph`: replay each run as a captured
        CUDA graph (bindings must not move between runs; ONNX Runtime only). `transient`: a session
        used briefly (text encoders, VAE): all its device memory goes back when it is dropped, none is kept in a
        pool shared with other sessions of the process. `shared_weights`: (store, the engine's weight refs) from
        `shared_weight_store` where the backend has one: the session reads its weights from the store instead of
        loading its own copy."""

    def shared_weight_store(self, weights_file: Path, device: int | None):
        """One copy of `weights_file` on `device` for every session of a rank, or None where engines carry their
        own weights (TensorRT builds them into each engine)."""
        return None

    def engine_weights(self, engine: bytes) -> list:
        """The shared weights a built engine reads (recorded in its metadata); none where it holds its own."""
        return []

    def build_flags(self) -> dict[str, object]:
        """Settings of this backend's own that change a built engine (part of the cache key's flags)."""
        return {}

    def portable_archs(self) -> tuple[str, ...]:
        """The targets a portable backend builds for, each into its own engine ("any": one engine runs on every
        device). Device-specific backends build per compute capability instead."""
        return ("any",)

    def device_arch(self, device: int | None) -> str:
        """The cache key's GPU field: compute capability "9.0" of `device`, or "any" where engines are portable."""
        if device is None or not self.capabilities().device_specific:
            return "any"
        from trt_distri.engines.gpus import compute_capability

        return compute_capability(device)


#: --backend name -> "module:class", imported on demand so that one backend's package is not needed by another.
BACKENDS: dict[str, str] = {
    "trt": "trt_distri.engines.tensorrt_backend:TensorRTBackend",
    "trt-rtx": "trt_distri.engines.tensorrt_backend:TensorRTRTXBackend",
    "ort": "trt_distri.engines.onnxruntime_backend:OnnxRuntimeBackend",
}


def get_backend(name: str) -> Backend:
    """The backend called `name` ("trt", "trt-rtx" or "ort"); its package is imported only when used."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}. Note: expected one of {sorted(BACKENDS)}, got {name!r}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def available_backends() -> list[str]:
    """Backends whose package imports on this machine (whether a GPU is present is not checked)."""
    names = []
    for name in BACKENDS:
        try:
            get_backend(name).version()
        except TrtDistriError:
            continue
        names.append(name)
    return names
