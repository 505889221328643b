"""One interface for every engine backend: build a graph into engine bytes, load an engine into a session.

A `Backend` is stateless and cheap to construct; its package is imported lazily, on first use, so that a missing
one becomes a MissingPackageError naming the package (not an ImportError at import time). A `Session` has named
inputs and outputs and two ways to run:
- `run_host(feeds)`: numpy in, numpy out (tests, CPU machines);
- `bind(name, device_ptr)` then `run_async(stream)`: tensors live in caller-owned device memory (the runtime binds
  exchange-area offsets) and work is enqueued on the caller's CUDA stream without synchronizing.

Backends differ in what they can do, not in how they are called: those differences are fields of
`BackendCapabilities`, and each backend has its own build options (a `BackendBuildOptions`). How to load is one
`LoadOptions` for every backend. This module imports neither torch, onnx nor any backend's module, so the
runtime can use it; `BACKENDS` is the one registry of backends (the CLI, the API and the contract test read it).
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_distri.errors import ConfigError, MissingPackageError, TrtDistriError

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "BackendBuildOptions", "BackendCapabilities", "LoadOptions",
           "Session", "TensorInfo", "available_backends", "default_backend", "get_backend", "moved_tensor_error",
           "onnx_runner"]


@dataclass(frozen=True)
class TensorInfo:
    """One engine or network I/O tensor: dtype is the numpy name ("float16"); -1 marks a dynamic dimension."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    is_input: bool


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do on this machine; each field names the code that reads it."""

    builds_without_gpu: bool
    """`build` works on a machine without a CUDA GPU (TensorRT-RTX compiles ahead of time; ORT rewrites a graph):
    engines.build builds in this process."""
    runs_without_gpu: bool
    """`load` with `device=None` gives a session that runs on the CPU (ONNX Runtime's CPU provider): checked by
    `Backend.check_load` and by the runtime's session opener before any rank starts."""
    device_specific: bool
    """An engine runs only on GPUs of the compute capability it was built on: the cache key records it."""
    engine_suffix: str
    """File suffix of a built engine (".engine" for TensorRT, ".onnx" for ONNX Runtime)."""
    runs_onnx: bool
    """`load` also reads an exported ONNX graph as it is, unbuilt: the runtime runs a work directory without an
    engine cache, and the scheduler's step graph, text encoders and VAE with such a backend (`onnx_runner`)."""
    supports_cuda_graph: bool
    """`LoadOptions.cuda_graph` is honoured (runs are captured once, then replayed): runtime.executor.uses_cuda_graph
    turns it on by default for loaded ranks that generate more than once."""


@dataclass(frozen=True)
class LoadOptions:
    """How to load an engine, for every backend; a backend refuses (ConfigError) what its capabilities lack."""

    device: int | None = None
    """CUDA device index; None: the CPU (where `runs_without_gpu`)."""
    stream: int | None = None
    """The CUDA stream every `run_async` will be given (ONNX Runtime fixes it when the session is created;
    TensorRT takes the stream of each run and ignores this)."""
    weights_dir: Path | None = None
    """Folder of the external weights an engine refers to (ONNX graphs: the work directory's graphs/)."""
    refit_from: Path | None = None
    """For a weight-stripped engine: the ONNX graph whose weights are refitted into it."""
    cuda_graph: bool = False
    """Replay each run as a captured CUDA graph (bindings must not move between runs); `supports_cuda_graph`."""
    transient: bool = False
    """A session used briefly (text encoders, VAE): all its device memory goes back when it is dropped, none is
    kept in a pool shared with other sessions of the process."""
    shared_weights: tuple | None = None
    """(store, the engine's weight refs): a store from `Backend.shared_weight_store` and the weights this engine
    reads; the session takes its weights from the store instead of loading its own copy."""


@dataclass(frozen=True)
class BackendBuildOptions:
    """A backend's builder settings; each backend has its own subclass (TensorRT: engines.trt.BuildOptions)."""

    def flags(self) -> dict[str, object]:
        """The settings that change the built engine (part of the cache key)."""
        return {}

    @property
    def strips_weights(self) -> bool:
        """The engine holds no weights: loading refits them from the graph (`LoadOptions.refit_from`)."""
        return False


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
        self._bind_impl(name, int(device_ptr))
        self._bound[name] = int(device_ptr)

    def run_async(self, stream: int) -> None:
        """Enqueue one run on CUDA stream `stream` (a cudaStream_t as int) with every tensor bound; no sync."""
        missing = [t.name for t in self.inputs + self.outputs if t.name not in self._bound]
        if missing:
            raise ConfigError(f"run_async needs every input and output bound to device memory. Note: unbound: "
                              f"{missing}. Fix: call bind(name, device_ptr) for each")
        self._run_async_impl(int(stream))

    def _bind_impl(self, name: str, device_ptr: int) -> None:
        """Hand a binding to the backend now (TensorRT sets tensor addresses once, here); default: at run time."""

    @abc.abstractmethod
    def _run_host_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _run_async_impl(self, stream: int) -> None: ...


def moved_tensor_error(name: str, captured: int, now: int) -> ConfigError:
    """The refusal of a session that replays a CUDA graph: its kernels read the addresses it was captured with."""
    return ConfigError(f"tensor {name!r} moved after its CUDA graph was captured. Note: expected address "
                       f"{captured:#x}, got {now:#x}. Fix: keep every bound buffer in place for the session's life, "
                       "or load the session with cuda_graph=False (`trt-distri run --no-cuda-graph`)")


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
    def build_options(self, cache_dir: Path | None = None, **settings: object) -> BackendBuildOptions:
        """This backend's build options from the CLI's settings (TensorRT: optimization_level, workspace_bytes,
        refittable, strip_weights); `cache_dir` holds what builds share (TensorRT's timing cache)."""

    @abc.abstractmethod
    def build(self, graph_path: Path, options: BackendBuildOptions,
              arch: str = "any") -> tuple[bytes, list[TensorInfo]]:
        """Build the ONNX graph at `graph_path` (external data beside it) for `arch` (a `device_arch` value);
        return engine bytes and its I/O."""

    @abc.abstractmethod
    def load(self, engine_path: Path, options: LoadOptions) -> Session:
        """Load an engine (or, where `runs_onnx`, an exported graph) as `options` say; see LoadOptions."""
    def check_load(self, options: LoadOptions) -> None:
        """Refuse load options this backend's capabilities lack (the first thing `load` does)."""
        caps = self.capabilities()
        if options.device is None and not caps.runs_without_gpu:
            raise ConfigError(f"{self.label} engines run only on a CUDA GPU. Note: expected a device index, got "
                              "None (the CPU). Fix: run on a GPU (--device cuda), or use a backend that runs on the "
                              f"CPU: {', '.join(n for n in BACKENDS if n != self.name)}")
        if options.cuda_graph and not caps.supports_cuda_graph:
            raise ConfigError(f"CUDA-graph replay is not available with {self.label} engines yet. Note: expected "
                              "cuda_graph=False. Fix: drop --cuda-graph, or use a backend that supports it: "
                              f"{', '.join(n for n in BACKENDS if n != self.name)}")
        if options.cuda_graph and options.device is None:
            raise ConfigError("CUDA-graph replay needs a CUDA device. Note: expected a device index, got None (the "
                              "CPU). Fix: drop --cuda-graph on the CPU")

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


#: The registry: --backend name -> "module:class", imported on demand so that one backend's package is not needed
#: by another. The first that `runs_onnx` is `onnx_runner`.
BACKENDS: dict[str, str] = {
    "ort": "trt_distri.engines.onnxruntime_backend:OnnxRuntimeBackend",
    "trt": "trt_distri.engines.tensorrt_backend:TensorRTBackend",
    "trt-rtx": "trt_distri.engines.tensorrt_backend:TensorRTRTXBackend",
}
#: What `trt-distri run` and the API use unless told: the backend that runs exported graphs on CPUs and GPUs.
DEFAULT_BACKEND = "ort"


def default_backend(device: str | None = None) -> str:
    """What `trt-distri build` and `run` use without --backend: TensorRT where the `tensorrt` package imports (and
    the ranks run on GPUs), else DEFAULT_BACKEND. One rule, so that `build W && run W` uses the engines it built."""
    if device == "cpu":
        return DEFAULT_BACKEND
    try:
        importlib.import_module("tensorrt")
    except Exception:  # noqa: BLE001 - absent, or a binding whose libraries fail to load: not usable here
        return DEFAULT_BACKEND
    return "trt"


def get_backend(name: str) -> Backend:
    """The backend called `name` ("trt", "trt-rtx" or "ort"); its package is imported only when used."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}. Note: expected one of {sorted(BACKENDS)}, got {name!r}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def onnx_runner() -> Backend:
    """The first registered backend that runs exported ONNX graphs as they are (`runs_onnx`): it runs the
    scheduler's step graph, the text encoders and the VAE decoder whatever backend runs the UNet."""
    for name in BACKENDS:
        try:
            backend = get_backend(name)
            if backend.capabilities().runs_onnx:
                return backend
        except MissingPackageError:
            continue
    raise MissingPackageError("no installed backend runs ONNX graphs as they are. Note: expected one of "
                              f"{sorted(BACKENDS)} with that capability. Fix: pip install onnxruntime")


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
