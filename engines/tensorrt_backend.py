"""TensorRT and TensorRT-RTX backends: one class, given the other module (`kind`); differences are capabilities.

Build goes through `engines/trt.py` (strongly typed network, static shapes from the graph, optimisation level,
workspace limit, timing cache, refittable or weight-stripped engines). Load follows the TensorRT 10/11 Python API:
`Runtime.deserialize_cuda_engine`, `create_execution_context`, then per run `set_tensor_address` for every I/O
tensor and `execute_async_v3(stream)`, which enqueues and returns. Device memory for `run_host` comes from the
CUDA runtime of cuda-python, imported lazily like TensorRT itself; nothing here imports torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from trt_distri.engines.backend import Backend, BackendCapabilities, LoadOptions, Session, TensorInfo
from trt_distri.engines.capabilities import Capabilities, capabilities, import_trt
from trt_distri.engines.trt import BuildOptions, build_engine_with_io, engine_io, make_logger
from trt_distri.errors import EngineBuildError, MissingPackageError


def _cudart() -> ModuleType:
    for module in ("cuda.bindings.runtime", "cuda.cudart"):  # cuda-python >= 12.6, then older releases
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise MissingPackageError("running TensorRT engines from host arrays needs the CUDA runtime bindings of "
                              "cuda-python, which failed to import. Fix: pip install cuda-python")


def _check(result: tuple) -> Any:
    """Unpack a cuda-python `(error, value...)` tuple, raising on an error."""
    error, *values = result
    if int(error) != 0:
        raise EngineBuildError(f"CUDA runtime call failed: {error}. Note: expected cudaSuccess. Fix: check the GPU "
                               "with nvidia-smi; run with -v for TensorRT's log")
    return values[0] if len(values) == 1 else values


class TensorRTSession(Session):
    """An `ICudaEngine` with one `IExecutionContext` on one GPU."""

    def __init__(self, trt: ModuleType, runtime: Any, engine: Any, device: int) -> None:
        io = engine_io(trt, engine)
        super().__init__([t for t in io if t.is_input], [t for t in io if not t.is_input])
        self._keep = (runtime, engine)  # the context needs both alive
        self.context = engine.create_execution_context()
        self.device = device

    def _run_async_impl(self, stream: int) -> None:
        for name, ptr in self._bound.items():
            self.context.set_tensor_address(name, ptr)
        if not self.context.execute_async_v3(stream):
            raise EngineBuildError("TensorRT could not enqueue the engine (execute_async_v3 returned False). "
                                   "Note: expected every I/O tensor bound to device memory of its full size. "
                                   "Fix: run with -v for TensorRT's log")

    def _run_host_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = _cudart()
        _check(cudart.cudaSetDevice(self.device))
        stream = _check(cudart.cudaStreamCreate())
        outputs = {t.name: np.empty(t.shape, t.dtype) for t in self.outputs}
        pointers = {name: _check(cudart.cudaMalloc(a.nbytes)) for name, a in {**feeds, **outputs}.items()}
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        saved = dict(self._bound)
        try:
            for name, array in feeds.items():
                _check(cudart.cudaMemcpy(pointers[name], array.ctypes.data, array.nbytes, h2d))
            self._bound = {name: int(ptr) for name, ptr in pointers.items()}
            self._run_async_impl(int(stream))
            _check(cudart.cudaStreamSynchronize(stream))
            for name, array in outputs.items():
                _check(cudart.cudaMemcpy(array.ctypes.data, pointers[name], array.nbytes, d2h))
        finally:
            self._bound = saved
            for ptr in pointers.values():
                cudart.cudaFree(ptr)
            cudart.cudaStreamDestroy(stream)
        return outputs


class TensorRTBackend(Backend):
    """TensorRT (`tensorrt` >= 10); `TensorRTRTXBackend` is the same code given `tensorrt_rtx_bindings`."""

    name, label, package = "trt", "TensorRT", "tensorrt-cu13"

    def _caps(self) -> Capabilities:
        return capabilities(self.name)  # raises MissingPackageError naming the package

    def version(self) -> str:
        return self._caps().version

    def capabilities(self) -> BackendCapabilities:
        caps = self._caps()
        return BackendCapabilities(builds_without_gpu=caps.builds_without_gpu, runs_without_gpu=False,
                                   device_specific=not caps.portable_engines, engine_suffix=".engine",
                                   runs_onnx=False, supports_cuda_graph=False)

    def build_options(self, cache_dir: Path | None = None, **settings: object) -> BuildOptions:
        timing_cache = None if cache_dir is None else Path(cache_dir) / "timing.cache"
        return BuildOptions(timing_cache=timing_cache, **settings)

    def build(self, graph_path: Path, options: BuildOptions, arch: str = "any") -> tuple[bytes, list[TensorInfo]]:
        return build_engine_with_io(graph_path, self.name, options)

    def load(self, engine_path: Path, options: LoadOptions) -> Session:
        # `stream`: TensorRT takes each run's; `transient`: an engine and its context free their memory when dropped
        self.check_load(options)
        device, graph_path = options.device, options.refit_from
        trt, caps = import_trt(self.name), self._caps()
        _check(_cudart().cudaSetDevice(device))
        logger = make_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise EngineBuildError(
                f"{caps.label} {caps.version} could not deserialize {engine_path}: {' | '.join(logger.errors[-2:])}."
                f" Note: expected an engine built by the same version for this GPU. Fix: rebuild it with "
                f"`trt-distri build --backend {self.name}`")
        if graph_path is not None:
            self._refit(trt, engine, logger, graph_path)
        return TensorRTSession(trt, runtime, engine, device)

    def _refit(self, trt: ModuleType, engine: Any, logger: Any, graph_path: Path) -> None:
        """Put the ONNX graph's weights into a weight-stripped engine."""
        refitter = trt.Refitter(engine, logger)
        parser_refitter = trt.OnnxParserRefitter(refitter, logger)
        if not parser_refitter.refit_from_file(str(graph_path)) or not refitter.refit_cuda_engine():
            raise EngineBuildError(f"{self.label} could not refit the weight-stripped engine from {graph_path}: "
                                   f"{' | '.join(logger.errors[-2:])}. Note: expected the graph it was built from. "
                                   f"Fix: rebuild with `trt-distri build --backend {self.name}`")


class TensorRTRTXBackend(TensorRTBackend):
    name, label, package = "trt-rtx", "TensorRT-RTX", "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings"
