"""What each TensorRT flavour can do, as data: the build code reads these fields instead of asking `if rtx:`.

TensorRT ("trt", module `tensorrt`) and TensorRT-RTX ("trt-rtx", module `tensorrt_rtx_bindings`) share one Python
API. Feature presence is probed on the imported module with `hasattr`; the few facts an attribute cannot reveal
(RTX keeps the timing-cache API as a deprecated no-op; RTX compiles ahead of time without a GPU) live in `_FLAVOURS`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from trt_distri.errors import ConfigError, MissingPackageError


@dataclass(frozen=True)
class _Flavour:
    module: str
    pip: str
    label: str
    builds_without_gpu: bool
    timing_cache_is_noop: bool
    portable_engines: bool


_FLAVOURS: dict[str, _Flavour] = {
    "trt": _Flavour("tensorrt", "tensorrt-cu13", "TensorRT", builds_without_gpu=False, timing_cache_is_noop=False,
                     portable_engines=False),
    "trt-rtx": _Flavour("tensorrt_rtx_bindings", "tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings==1.7.1.116",
                        "TensorRT-RTX", builds_without_gpu=True, timing_cache_is_noop=True,
                         portable_engines=True),
}


@dataclass(frozen=True)
class Capabilities:
    """One TensorRT flavour's features; each field names what it gates."""

    kind: str
    label: str
    version: str
    builds_without_gpu: bool
    """CI may build this kind's engines on a CPU-only runner (RTX compiles ahead of time; TensorRT times tactics)."""
    portable_engines: bool
    """An engine runs on any supported GPU architecture: RTX compiles ahead of time for every compute capability
    it supports (none set in the builder config) and specializes on the device when loaded. A TensorRT engine
    runs only on the compute capability it was built on."""
    deserializes_without_gpu: bool
    """`inspect_engine` works without a CUDA driver. False for both: `Runtime.deserialize_cuda_engine` opens a CUDA
    stream (RTX 1.7 on a CPU machine: cudaError 35, "CUDA driver version is insufficient"), so CPU checks read the
    I/O of the network definition instead (`build_engine_with_io`)."""
    supports_strongly_typed: bool
    """`NetworkDefinitionCreationFlag.STRONGLY_TYPED`: tensor types come from the graph (our graphs carry precision)."""
    supports_timing_cache: bool
    """`BuildOptions.timing_cache` is loaded and saved; otherwise it is ignored (RTX: the API is a no-op)."""
    supports_optimization_level: bool
    """`IBuilderConfig.builder_optimization_level` exists, so `BuildOptions.optimization_level` is applied."""
    supports_refit: bool
    """`BuilderFlag.REFIT`: weights can be replaced in a built engine (one engine, several checkpoints)."""
    supports_strip_plan: bool
    """`BuilderFlag.STRIP_PLAN`: weight-stripped engines, refitted from the ONNX weights at load."""
    supports_weight_streaming: bool
    """`BuilderFlag.WEIGHT_STREAMING`: weights may stay in host memory and stream in (large UNets on small GPUs)."""
    supports_refit_identical: bool
    """`BuilderFlag.REFIT_IDENTICAL`: refit only with the build's own weights (weight-stripped engines)."""
    supports_user_allocation: bool
    """`BuilderFlag.REQUIRE_USER_ALLOCATION` (TensorRT-RTX): engines use the caller's memory where possible, which
    RTX requires for CUDA stream capture; set on every build where it exists."""
    supports_decomposable_attention: bool
    """`IAttention.decomposable`: an attention without a fused kernel (e.g. fp16 head dim < 16) may be split up."""


def _flavour(kind: str) -> _Flavour:
    if kind not in _FLAVOURS:
        raise ConfigError(f"unknown TensorRT kind {kind!r}. Note: expected one of {sorted(_FLAVOURS)}, got {kind!r}")
    return _FLAVOURS[kind]


def import_trt(kind: str) -> ModuleType:
    """The TensorRT module for `kind` ("trt" -> `tensorrt`, "trt-rtx" -> `tensorrt_rtx_bindings`)."""
    flavour = _flavour(kind)
    try:
        return importlib.import_module(flavour.module)
    except ImportError as exc:
        raise MissingPackageError(
            f"building {flavour.label} engines needs the Python module `{flavour.module}`, which failed to import. "
            f"Note: expected an installed package, got {type(exc).__name__}: {exc}. "
            f"Fix: pip install {flavour.pip}") from exc


def probe_capabilities(kind: str, trt: ModuleType) -> Capabilities:
    """Capabilities of an imported TensorRT module `trt` of flavour `kind`."""
    flavour = _flavour(kind)
    config = trt.IBuilderConfig
    return Capabilities(
        kind=kind, label=flavour.label, version=str(getattr(trt, "__version__", "unknown")),
        builds_without_gpu=flavour.builds_without_gpu,
        portable_engines=flavour.portable_engines,
        deserializes_without_gpu=False,
        supports_strongly_typed=hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
        supports_timing_cache=hasattr(config, "create_timing_cache") and not flavour.timing_cache_is_noop,
        supports_optimization_level=hasattr(config, "builder_optimization_level"),
        supports_refit=hasattr(trt.BuilderFlag, "REFIT"),
        supports_strip_plan=hasattr(trt.BuilderFlag, "STRIP_PLAN"),
        supports_weight_streaming=hasattr(trt.BuilderFlag, "WEIGHT_STREAMING"),
        supports_refit_identical=hasattr(trt.BuilderFlag, "REFIT_IDENTICAL"),
        supports_user_allocation=hasattr(trt.BuilderFlag, "REQUIRE_USER_ALLOCATION"),
        supports_decomposable_attention=hasattr(trt, "IAttention") and hasattr(trt.IAttention, "decomposable"),
    )


def capabilities(kind: str) -> Capabilities:
    """Import the module for `kind` and probe it (raises MissingPackageError when it is not installed)."""
    return probe_capabilities(kind, import_trt(kind))
