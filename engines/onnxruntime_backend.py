"""ONNX Runtime backend: CPU provider anywhere, CUDA provider with I/O bound to raw device pointers.

"Building" prepares the graph for ONNX Runtime: every opset-23 `Attention` on 3-D inputs without a mask becomes
`com.microsoft.MultiHeadAttention`, which ORT's CUDA provider runs with fused kernels (on an H100, 4.5 ms against
6.9 ms for the opset-23 op) and its CPU provider also implements. Weights stay in the work directory's external
data file: the engine refers to them by name and `load` is told their folder (`weights_dir`).

On CUDA the session is created on the caller's stream (`user_compute_stream`), so every `run_async` must pass that
stream; the run is not synchronized (`disable_synchronize_execution_providers`). Loading imports only onnxruntime.
`TRT_DISTRI_ORT_CONV_ALGO_SEARCH` (EXHAUSTIVE, HEURISTIC or DEFAULT) sets the CUDA provider's cuDNN convolution
algorithm search: ORT's default, EXHAUSTIVE, searches on each convolution's first run, which costs time on a fresh
process's first step.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from trt_distri.engines.backend import (Backend, BackendBuildOptions, BackendCapabilities, LoadOptions, Session,
                                        TensorInfo, moved_tensor_error)
from trt_distri.engines.ort_weights import SharedWeights, WeightRef, engine_weights, sharing_enabled
from trt_distri.errors import ConfigError, EngineBuildError, EngineRunError, MissingPackageError

_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
              "tensor(double)": "float64", "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}
_WEIGHTS_DIR_KEY = "session.model_external_initializers_file_folder_path"
_NO_SYNC_KEY = "disable_synchronize_execution_providers"
CONV_ALGO_SEARCH_ENV = "TRT_DISTRI_ORT_CONV_ALGO_SEARCH"
_CONV_ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
PREFER_NHWC_ENV = "TRT_DISTRI_ORT_PREFER_NHWC"  # "1": the CUDA provider runs convolutions in NHWC (an experiment)


_SHARED_ARENAS: dict[int, bool] = {}
_ARENA_LOCK = threading.Lock()  # sessions of one rank are opened from several threads


def _share_device_arena(ort: ModuleType, device: int) -> bool:
    """One CUDA memory arena per device for every session of this process (registered once).

    A work directory has one session per segment (173 for SDXL); with an arena each, memory grows to the sum of
    their peaks (116 GiB per GPU at 2048x2048 on 2 GPUs). Sessions run one after another on one stream, so one
    shared arena only needs the largest peak. Where registration fails, sessions keep their own arenas."""
    with _ARENA_LOCK:
        return _register_arena(ort, device)


def _register_arena(ort: ModuleType, device: int) -> bool:
    if device not in _SHARED_ARENAS:
        try:
            info = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, device, ort.OrtMemType.DEFAULT)
            arena = ort.OrtArenaCfg({"arena_extend_strategy": 1})  # kSameAsRequested: no power-of-two overshoot
            ort.create_and_register_allocator_v2("CUDAExecutionProvider", info, {"device_id": str(device)}, arena)
            _SHARED_ARENAS[device] = True
        except Exception as exc:  # noqa: BLE001 - an older onnxruntime: fall back to per-session arenas
            logging.getLogger(__name__).warning("no shared CUDA arena on GPU %d (%s); each session keeps its own",
                                                device, exc)
            _SHARED_ARENAS[device] = False
    return _SHARED_ARENAS[device]


def _ort_severity(ort: ModuleType) -> int:
    """ONNX Runtime's own log level: its warnings ("Memcpy nodes are added", "No registered plugin EP device") only
    when trt-distri logs at DEBUG (`-v`); errors always. Applies to its default logger too."""
    level = 2 if logging.getLogger("trt_distri").isEnabledFor(logging.DEBUG) else 3  # 2 warning, 3 error
    ort.set_default_logger_severity(level)
    return level


def _import(module: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackageError(f"the ONNX Runtime backend needs the Python module `{module}`, which failed to "
                                  f"import ({type(exc).__name__}: {exc}). Fix: pip install {package}") from exc


def rewrite_attention(model: Any) -> int:
    """Replace each opset-23 `Attention` on 3-D inputs (q_num_heads set) with equal query and key/value heads and
    no mask, cache or soft-cap by `com.microsoft.MultiHeadAttention`; return how many were replaced."""
    from onnx import helper

    replaced = 0
    for i, node in enumerate(model.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (node.op_type == "Attention" and node.domain in ("", "ai.onnx") and len(node.output) == 1
                 and len([x for x in node.input if x]) == 3 and len(node.input) == 3
                 and attrs.get("q_num_heads") is not None and attrs.get("q_num_heads") == attrs.get("kv_num_heads")
                 and not attrs.get("is_causal", 0) and not attrs.get("softcap", 0.0))
        if not plain:
            continue
        extra = {"scale": float(attrs["scale"])} if "scale" in attrs else {}
        mha = helper.make_node("MultiHeadAttention", list(node.input), list(node.output), name=node.name,
                               domain="com.microsoft", num_heads=int(attrs["q_num_heads"]), **extra)
        model.graph.node[i].CopyFrom(mha)
        replaced += 1
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return replaced


def _graph_io(model: Any) -> list[TensorInfo]:
    from onnx import helper

    def info(value: Any, is_input: bool) -> TensorInfo:
        t = value.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)).name
        return TensorInfo(value.name, tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim),
                          dtype, is_input)

    return [info(v, True) for v in model.graph.input] + [info(v, False) for v in model.graph.output]


def _session_io(session: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    def info(arg: Any, is_input: bool) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
        return TensorInfo(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type), is_input)

    return ([info(a, True) for a in session.get_inputs()], [info(a, False) for a in session.get_outputs()])


class OrtSession(Session):
    """An `onnxruntime.InferenceSession`; on CUDA, bound tensors go through an IOBinding on raw pointers."""

    def __init__(self, session: Any, device: int | None, stream: int | None, cuda_graph: bool = False) -> None:
        super().__init__(*_session_io(session))
        self.session, self.device, self.stream, self.cuda_graph = session, device, stream, cuda_graph
        self._binding: PointerBinding | None = None

    def _run_host_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [t.name for t in self.outputs]
        return dict(zip(names, self.session.run(names, feeds)))

    def _run_async_impl(self, stream: int) -> None:
        if self.device is None:
            raise ConfigError("run_async needs a session on a CUDA device. Note: this session runs on the CPU. "
                              "Fix: load it with device=<GPU index>, or use run_host")
        if stream != self.stream:
            raise ConfigError(f"ONNX Runtime runs on the stream its session was created with. Note: expected "
                              f"stream {self.stream}, got {stream}. Fix: load the engine with stream={stream}")
        if self._binding is None:
            self._binding = PointerBinding(self.session, self.inputs, self.outputs, "cuda", self.device,
                                           self.cuda_graph)
        self._binding.run(self._bound)


class PointerBinding:
    """One IOBinding kept for the session's life: a run re-binds only the tensors whose pointer changed (a
    segment runs every step, and binding every tensor anew cost host time on each of ~140 runs per step).
    `frozen`: a session replaying a CUDA graph reads the pointers it was captured with, so after its first run a
    moved tensor is refused instead of being silently ignored."""

    def __init__(self, session: Any, inputs: list[TensorInfo], outputs: list[TensorInfo], device_type: str,
                 device_id: int, frozen: bool = False) -> None:
        ort = _import("onnxruntime", "onnxruntime-gpu")
        self.session, self.binding = session, session.io_binding()
        self.options = ort.RunOptions()
        self.options.add_run_config_entry(_NO_SYNC_KEY, "1")
        self.tensors = [(t.name, self.binding.bind_input, np.dtype(t.dtype), list(t.shape)) for t in inputs] + \
                       [(t.name, self.binding.bind_output, np.dtype(t.dtype), list(t.shape)) for t in outputs]
        self.device_type, self.device_id, self.frozen = device_type, device_id, frozen
        self.applied: dict[str, int] = {}

    def run(self, pointers: dict[str, int]) -> None:
        for name, bind, dtype, shape in self.tensors:
            ptr = pointers[name]
            if self.applied.get(name) != ptr:
                if self.frozen and name in self.applied:
                    raise moved_tensor_error(name, self.applied[name], ptr)
                bind(name, self.device_type, self.device_id, dtype, shape, ptr)
                self.applied[name] = ptr
        try:
            self.session.run_with_iobinding(self.binding, self.options)
        except Exception as exc:  # onnxruntime's own error types
            if not self.frozen:
                raise
            raise EngineRunError(f"ONNX Runtime failed while capturing or replaying a CUDA graph: {exc}. Fix: run "
                                 "without CUDA graphs (`trt-distri run --no-cuda-graph`; Python: "
                                 "cuda_graph=False) and report the graph that failed") from exc


def cuda_provider_options(device: int, stream: int | None, cuda_graph: bool = False,
                          transient: bool = False) -> dict[str, str]:
    """The CUDA provider's options: the device, the caller's stream, and CUDA-graph capture when asked (ORT
    captures after its first runs and then replays; every bound pointer must stay where it was), and the cuDNN
    convolution algorithm search when `TRT_DISTRI_ORT_CONV_ALGO_SEARCH` is set; NHWC convolutions when
    `TRT_DISTRI_ORT_PREFER_NHWC=1` (ORT then keeps transposed copies of the convolution weights per session, which
    LoRA writes to the shared store do not reach: a measurement switch, not a default)."""
    options = {"device_id": str(device)}
    if stream is not None:
        options.update(has_user_compute_stream="1", user_compute_stream=str(int(stream)))
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    if transient:  # its own arena, grown only by what it asks for, freed with the session
        options["arena_extend_strategy"] = "kSameAsRequested"
    search = os.environ.get(CONV_ALGO_SEARCH_ENV, "")
    if search:
        if search.upper() not in _CONV_ALGO_SEARCH:
            raise ConfigError(f"{CONV_ALGO_SEARCH_ENV} is not a cuDNN convolution algorithm search. Note: expected "
                              f"one of {', '.join(_CONV_ALGO_SEARCH)}, got {search!r}. Fix: unset "
                              f"{CONV_ALGO_SEARCH_ENV}, or set it to one of those")
        options["cudnn_conv_algo_search"] = search.upper()
    if os.environ.get(PREFER_NHWC_ENV) == "1":
        options["prefer_nhwc"] = "1"
    return options


@dataclass(frozen=True)
class OrtBuildOptions(BackendBuildOptions):
    """ONNX Runtime's build settings: none yet (its build rewrites attention, always)."""


class OnnxRuntimeBackend(Backend):
    name = "ort"
    label = "ONNX Runtime"
    package = "onnxruntime (CPU) or onnxruntime-gpu (CUDA)"

    def version(self) -> str:
        return _import("onnxruntime", "onnxruntime").__version__

    def capabilities(self) -> BackendCapabilities:
        return BackendCapabilities(builds_without_gpu=True, runs_without_gpu=True, device_specific=False,
                                   engine_suffix=".onnx", runs_onnx=True, supports_cuda_graph=True)

    def portable_archs(self) -> tuple[str, ...]:
        """One engine per provider: the CUDA one uses fused kernels that ORT's CPU provider lacks."""
        return ("cpu", "cuda")

    def device_arch(self, device: int | None) -> str:
        return "cpu" if device is None else "cuda"

    def build_flags(self) -> dict[str, object]:
        from trt_distri.engines.ort_fusions import PASSES_ENV

        return {"passes": os.environ.get(PASSES_ENV, "all")}

    def build_options(self, cache_dir: Path | None = None, **settings: object) -> OrtBuildOptions:
        """ONNX Runtime has no builder settings: TensorRT's (`settings`) are ignored, with a warning."""
        ignored = sorted(k for k, v in settings.items() if v not in (None, False))
        if ignored:
            logging.getLogger(__name__).warning("%s ignores the TensorRT build settings %s", self.label, ignored)
        return OrtBuildOptions()

    def build(self, graph_path: Path, options: BackendBuildOptions,
              arch: str = "cpu") -> tuple[bytes, list[TensorInfo]]:
        """The graph with attention rewritten and UNet chains put on fused kernels for `arch` ("cpu" or
        "cuda"; engines/ort_fusions.py); weights stay external."""
        onnx = _import("onnx", "onnx")
        try:
            model = onnx.load(str(graph_path), load_external_data=False)
        except Exception as exc:  # OSError, or protobuf's DecodeError for a file that is not ONNX
            raise EngineBuildError(f"cannot read the ONNX graph {graph_path}: {exc}. Note: expected a graph "
                                   "written by `trt-distri export`. Fix: export again") from exc
        from trt_distri.engines.ort_fusions import prepare, selected_passes  # onnx: loading never needs it

        rewrite_attention(model)
        counts = prepare(model, "cuda" if arch == "cuda" else "cpu", selected_passes())
        logging.getLogger(__name__).debug("%s for %s: %s", graph_path.name, arch, counts)
        return model.SerializeToString(), _graph_io(model)

    def shared_weight_store(self, weights_file: Path, device: int | None) -> SharedWeights | None:
        if not sharing_enabled():
            return None
        ort = _import("onnxruntime", "onnxruntime-gpu" if device is not None else "onnxruntime")
        return SharedWeights(ort, weights_file, device)

    def engine_weights(self, engine: bytes) -> list[WeightRef]:
        onnx = _import("onnx", "onnx")
        return engine_weights(onnx.load_from_string(engine))

    def load(self, engine_path: Path, options: LoadOptions) -> Session:
        self.check_load(options)
        device, stream, weights_dir = options.device, options.stream, options.weights_dir
        cuda_graph, transient, shared_weights = options.cuda_graph, options.transient, options.shared_weights
        ort = _import("onnxruntime", "onnxruntime-gpu" if device is not None else "onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = _ort_severity(ort)
        if weights_dir is not None:
            options.add_session_config_entry(_WEIGHTS_DIR_KEY, str(weights_dir))
        # Many sessions run one after another (a segment each), often from several rank threads: idle threads
        # that spin waiting for work would steal the cores the running session needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        providers: list[Any] = ["CPUExecutionProvider"]
        if device is not None:
            self._require_cuda(ort)
            providers.insert(0, ("CUDAExecutionProvider",
                                 cuda_provider_options(device, stream, cuda_graph, transient)))
            if not transient and _share_device_arena(ort, device):
                options.add_session_config_entry("session.use_env_allocators", "1")
        if shared_weights is not None:
            store, refs = shared_weights
            # kernels must read the store itself, not packed or reordered copies, so that writing it (LoRA) reaches
            # them: no pre-packing, and on the CPU no NCHWc layout pass (it copies convolution weights)
            options.add_session_config_entry("session.disable_prepacking", "1")
            if device is None:
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            for ref in refs:
                options.add_initializer(ref.name, store.value(ref))
        model = Path(engine_path).read_bytes() if weights_dir is not None else str(engine_path)
        try:
            session = ort.InferenceSession(model, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EngineBuildError(f"ONNX Runtime {ort.__version__} could not load {engine_path}: {exc}. Note: "
                                   f"expected a graph prepared by `trt-distri build --backend ort` with its weights "
                                   f"in {weights_dir or Path(engine_path).parent}. Fix: build again") from exc
        if device is not None and "CUDAExecutionProvider" not in session.get_providers():
            raise MissingPackageError(
                f"ONNX Runtime {ort.__version__} fell back to the CPU for {engine_path}: its CUDA provider did not "
                f"load (see its log above). Note: expected CUDAExecutionProvider, got {session.get_providers()}. "
                "Fix: install the CUDA and cuDNN libraries onnxruntime-gpu was built for, or call "
                "onnxruntime.preload_dlls() first where torch brought them")
        result = OrtSession(session, device, stream, cuda_graph)
        result.weights = shared_weights[0] if shared_weights is not None else None  # kept alive with the session
        return result

    @staticmethod
    def _require_cuda(ort: ModuleType) -> None:
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingPackageError(
                f"ONNX Runtime {ort.__version__} here has no CUDA provider. Note: expected CUDAExecutionProvider "
                f"among {ort.get_available_providers()}. Fix: pip uninstall onnxruntime; pip install onnxruntime-gpu")
