"""TensorRT and TensorRT-RTX backends: one class, given the other module (`kind`); differences are capabilities.

Build goes through `engines/trt.py` (strongly typed network, static shapes from the graph, optimisation level,
workspace limit, timing cache, refittable or weight-stripped engines, decomposed attention where no fused kernel
exists). Load follows the TensorRT 10/11 Python API: `Runtime.deserialize_cuda_engine`, then a session
(engines/trt_session.py) whose execution context runs on the rank's one shared memory block
(engines/trt_memory.py), with addresses set at bind time and optional CUDA-graph replay. The CUDA runtime is
cuda-python's, imported lazily like TensorRT itself; nothing here imports torch.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from trt_distri.engines.backend import Backend, BackendCapabilities, LoadOptions, Session, TensorInfo
from trt_distri.engines.capabilities import Capabilities, capabilities, import_trt
from trt_distri.engines.trt import BuildOptions, build_engine_with_io, make_logger
from trt_distri.engines.trt_memory import check, cudart, shared_context_memory
from trt_distri.engines.trt_session import TensorRTSession
from trt_distri.errors import EngineBuildError


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
                                   runs_onnx=False, supports_cuda_graph=True)

    def build_flags(self) -> dict[str, object]:
        """Set on every build where the flag exists (engines/trt.py), so part of the key."""
        return {"require_user_allocation": self._caps().supports_user_allocation}

    def build_options(self, cache_dir: Path | None = None, **settings: object) -> BuildOptions:
        timing_cache = None if cache_dir is None else Path(cache_dir) / "timing.cache"
        return BuildOptions(timing_cache=timing_cache, **settings)

    def build(self, graph_path: Path, options: BuildOptions, arch: str = "any") -> tuple[bytes, list[TensorInfo]]:
        return build_engine_with_io(graph_path, self.name, options)

    def load(self, engine_path: Path, options: LoadOptions) -> Session:
        """`stream`: TensorRT takes each run's; `transient`: the context keeps its own memory, freed with it;
        otherwise it shares the device's one block with every other context of the process."""
        self.check_load(options)
        trt, caps, rt = import_trt(self.name), self._caps(), cudart()
        check(rt.cudaSetDevice(options.device), "cudaSetDevice")
        logger = make_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if engine is None:
            raise EngineBuildError(
                f"{caps.label} {caps.version} could not deserialize {engine_path}: {' | '.join(logger.errors[-2:])}."
                f" Note: expected an engine built by the same version for this GPU. Fix: rebuild it with "
                f"`trt-distri build --backend {self.name}`")
        if options.refit_from is not None:
            self._refit(trt, engine, logger, options.refit_from)
        memory = None if options.transient else shared_context_memory(options.device, rt)
        return TensorRTSession(trt, engine, options.device, rt, memory, options.cuda_graph, keep=(runtime,))

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
