"""Build exported ONNX graphs with TensorRT or TensorRT-RTX, and check an engine's I/O against the manifest.

One code path for both flavours: the module is chosen by `kind` ("trt" or "trt-rtx") and differences are read from
`Capabilities`. CI uses TensorRT-RTX on CPU-only runners to prove every exported graph parses and builds.

What can be inspected where (found by experiment with TensorRT-RTX 1.7.1.116 on a machine without a GPU):
building works (a small Conv/GroupNorm/Attention graph builds in about 0.1-0.2 s), deserializing does not
(`Runtime.deserialize_cuda_engine` fails with cudaError 35, no CUDA driver). So `inspect_engine` needs a GPU, and
CPU checks use `build_engine_with_io`, which reads the I/O of the parsed `INetworkDefinition` that was built.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from trt_distri.engines.backend import BackendBuildOptions, TensorInfo
from trt_distri.engines.capabilities import Capabilities, import_trt, probe_capabilities
from trt_distri.engines.trt_attention import COST, DECOMPOSERS, NO_FUSED_ATTENTION, lacks_fused_attention
from trt_distri.errors import ConfigError, EngineBuildError

__all__ = ["BuildOptions", "Capabilities", "TensorInfo", "build_engine", "build_engine_with_io",
           "engine_io", "import_trt", "inspect_engine", "make_logger"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class BuildOptions(BackendBuildOptions):
    """TensorRT's builder settings. None leaves TensorRT's default."""

    optimization_level: int | None = None
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    """Loaded before the build when the file exists, saved after it (ignored where unsupported, e.g. RTX)."""
    strongly_typed: bool = True
    """Tensor types come from the graph, which carries its precision (fp16 weights, fp32 statistics)."""
    refittable: bool = False
    """`BuilderFlag.REFIT`: the engine's weights can be replaced after the build (another checkpoint, LoRA); they
    keep the names of the graph's initializers (the ONNX parser names each weight after its initializer)."""
    strip_weights: bool = False
    """`BuilderFlag.STRIP_PLAN` with `REFIT_IDENTICAL` (as TensorRT documents for weight-stripped engines refitted
    with the build's own weights): the engine file holds no weights; they are refitted from the ONNX graph when
    it is loaded (a much smaller engine cache). With `refittable` too, `REFIT` instead: other weights may come."""

    def flags(self) -> dict[str, object]:
        """The settings that change the built engine (the cache key); the timing cache only speeds a build."""
        return {"optimization_level": self.optimization_level, "workspace_bytes": self.workspace_bytes,
                "strongly_typed": self.strongly_typed, "refittable": self.refittable,
                "strip_weights": self.strip_weights}

    @property
    def strips_weights(self) -> bool:
        return self.strip_weights


def make_logger(trt: ModuleType) -> Any:
    """A `trt.ILogger` that forwards to Python logging and keeps error messages for the exception text. Set
    `quiet` while errors are expected answers (probe builds): they are then kept and logged at debug level.
    A missing fused attention kernel is logged at debug level too: the build handles it (trt_attention.py)."""
    levels = {"INTERNAL_ERROR": logging.CRITICAL, "ERROR": logging.ERROR, "WARNING": logging.WARNING,
              "INFO": logging.DEBUG, "VERBOSE": logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.quiet = False

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity.name, logging.INFO)
            if level >= logging.ERROR:
                self.errors.append(msg.strip())
                level = logging.DEBUG if self.quiet or NO_FUSED_ATTENTION in msg else level
            if log.isEnabledFor(level):
                log.log(level, "[%s] %s", trt.__name__, msg)

    return _Logger()


def _numpy_name(trt: ModuleType, dtype: Any) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # no numpy equivalent (bfloat16, fp8, fp4): use TensorRT's name
        return {"BF16": "bfloat16"}.get(dtype.name, dtype.name.lower())


def _network_io(trt: ModuleType, network: Any) -> list[TensorInfo]:
    def info(tensor: Any, is_input: bool) -> TensorInfo:
        return TensorInfo(tensor.name, tuple(tensor.shape), _numpy_name(trt, tensor.dtype), is_input)

    return ([info(network.get_input(i), True) for i in range(network.num_inputs)]
            + [info(network.get_output(i), False) for i in range(network.num_outputs)])


def _parser_fix(code: str) -> str:
    return {
        "MODEL_DESERIALIZE_FAILED": "the file is not a complete ONNX model: export it again",
        "INVALID_GRAPH": "check that the external data file (weights.bin) sits next to the graph, or export again",
        "INVALID_VALUE": "check the path; export the graphs again if the file is missing",
    }.get(code, "use only operators this TensorRT version supports, or upgrade it (see the node above)")


def _parser_error(parser: Any, onnx_path: Path, caps: Capabilities, logged: list[str]) -> EngineBuildError:
    """Every parser error with its node; for a graph-level error, the first logged line it does not repeat
    (e.g. which external data file failed to open)."""
    lines, fixes = [], []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = err.desc().rstrip(".")
        context = [m for m in logged if desc not in m][:1] if err.node() < 0 else []
        node = f"node {err.node()} {err.node_name()!r} ({err.node_operator()})" if err.node() >= 0 else "graph"
        lines.append(f"{node}: {err.code().name}: {desc}" + "".join(f" (log: {m})" for m in context))
        fixes.append(_parser_fix(err.code().name))
    return EngineBuildError(
        f"{caps.label} {caps.version} could not parse {onnx_path}: {'; '.join(lines) or 'no error reported'}. "
        f"Note: expected a graph every node of which {caps.label} imports. Fix: {'; '.join(dict.fromkeys(fixes))}")


def _network_flags(trt: ModuleType, caps: Capabilities, options: BuildOptions) -> int:
    if options.strongly_typed and caps.supports_strongly_typed:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def _parse(trt: ModuleType, builder: Any, logger: Any, onnx_path: Path, caps: Capabilities,
           options: BuildOptions) -> tuple[Any, Any]:
    """The network and its parser (which owns the weights, so it must outlive the build)."""
    network = builder.create_network(_network_flags(trt, caps, options))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external data next to it is found
        raise _parser_error(parser, onnx_path, caps, logger.errors)
    return network, parser


def _configure(trt: ModuleType, builder: Any, caps: Capabilities, options: BuildOptions) -> Any:
    config = builder.create_builder_config()
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.optimization_level is not None and caps.supports_optimization_level:
        config.builder_optimization_level = options.optimization_level
    if options.timing_cache is not None and caps.supports_timing_cache:
        path = Path(options.timing_cache)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    elif options.timing_cache is not None:
        log.info("timing cache %s ignored: %s has none", options.timing_cache, caps.label)
    for flag in _weight_flags(caps, options):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if caps.supports_user_allocation:  # RTX: CUDA-graph capture needs the context's memory to be the caller's
        config.set_flag(trt.BuilderFlag.REQUIRE_USER_ALLOCATION)
    return config


def _weight_flags(caps: Capabilities, options: BuildOptions) -> list[str]:
    """REFIT for refittable engines; STRIP_PLAN with REFIT_IDENTICAL for weight-stripped ones (refitted with the
    build's own weights), with REFIT when they are also refittable."""
    wanted = []
    if options.refittable:
        wanted.append(("REFIT", caps.supports_refit, "refittable"))
    if options.strip_weights:
        wanted.append(("STRIP_PLAN", caps.supports_strip_plan, "weight-stripped"))
        if not options.refittable:
            wanted.append(("REFIT_IDENTICAL", caps.supports_refit_identical, "weight-stripped"))
    for flag, supported, what in wanted:
        if not supported:
            raise ConfigError(f"{caps.label} {caps.version} has no BuilderFlag.{flag}. Note: expected it for "
                              f"{what} engines. Fix: build without that option, or upgrade {caps.label}")
    return [flag for flag, _, _ in wanted]


def _save_timing_cache(config: Any, caps: Capabilities, options: BuildOptions) -> None:
    """Atomically (temp file + rename): ranks building in parallel share the file, and the last one wins."""
    if options.timing_cache is not None and caps.supports_timing_cache:
        path = Path(options.timing_cache)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
        os.replace(tmp, path)


def _build_error(onnx_path: Path, caps: Capabilities, errors: list[str]) -> EngineBuildError:
    fix = "run with -v for TensorRT's log; report the graph if it is valid ONNX"
    if lacks_fused_attention(errors):
        fix = (f"{caps.label} {caps.version} has no fused kernel for an attention and cannot decompose it: "
               "report the graph; an attention head dim of at least 16 avoids this")
    return EngineBuildError(
        f"{caps.label} {caps.version} parsed {onnx_path} but could not build it: {' | '.join(errors[-3:])}. "
        f"Note: expected a serialized engine, got None. Fix: {fix}")


def build_engine_with_io(onnx_path: Path, kind: str, options: BuildOptions) -> tuple[bytes, list[TensorInfo]]:
    """Build `onnx_path` with `kind`; return the serialized engine and the I/O of the network that was built
    (inputs, then outputs, in graph order). Works without a GPU where `builds_without_gpu`."""
    trt = import_trt(kind)
    caps = probe_capabilities(kind, trt)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, _parser = _parse(trt, builder, logger, Path(onnx_path), caps, options)
    config = _configure(trt, builder, caps, options)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None and caps.supports_decomposable_attention:
        serialized = _build_decomposed(trt, builder, network, config, logger, _network_flags(trt, caps, options),
                                       Path(onnx_path))
    if serialized is None:
        raise _build_error(Path(onnx_path), caps, logger.errors)
    _save_timing_cache(config, caps, options)
    return bytes(serialized), _network_io(trt, network)


def _build_decomposed(trt: ModuleType, builder: Any, network: Any, config: Any, logger: Any, flags: int,
                      onnx_path: Path) -> Any:
    """After a build that failed for want of a fused attention kernel: decompose the attentions that have none
    (engines/trt_attention.py), or all of them, and build again; None if that fails too."""
    serialized = None
    for decompose in DECOMPOSERS:
        if not lacks_fused_attention(logger.errors):
            break
        marked = decompose(trt, network, flags, logger)
        if not marked:
            continue
        log.warning("%s: %d attention layer(s) have no fused kernel in %s and are built decomposed: %s. Cost: %s",
                    onnx_path.name, len(marked), trt.__name__, ", ".join(marked), COST)
        logger.errors.clear()
        serialized = builder.build_serialized_network(network, config)
        if serialized is not None:
            break
    return serialized


def build_engine(onnx_path: Path, kind: str, options: BuildOptions) -> bytes:
    """Build `onnx_path` with `kind` ("trt" or "trt-rtx") and return the serialized engine."""
    return build_engine_with_io(onnx_path, kind, options)[0]


def inspect_engine(engine_bytes: bytes, kind: str) -> list[TensorInfo]:
    """The I/O tensors of a serialized engine, read from the deserialized `ICudaEngine`.

    Needs a CUDA driver: without one deserialization fails (see the module docstring) and this raises
    EngineBuildError; on CPU use the I/O returned by `build_engine_with_io` instead."""
    trt = import_trt(kind)
    caps = probe_capabilities(kind, trt)
    logger = make_logger(trt)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise EngineBuildError(
            f"{caps.label} {caps.version} could not deserialize a {len(engine_bytes)}-byte engine: "
            f"{' | '.join(logger.errors[-2:])}. Note: expected an engine built by the same version, on a machine "
            f"with a CUDA GPU and driver. Fix: inspect on a GPU machine, or use build_engine_with_io on CPU")
    return engine_io(trt, engine)


def engine_io(trt: ModuleType, engine: Any) -> list[TensorInfo]:
    """The I/O tensors of a deserialized `ICudaEngine`, in the engine's order."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return [TensorInfo(n, tuple(engine.get_tensor_shape(n)), _numpy_name(trt, engine.get_tensor_dtype(n)),
                       engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT) for n in names]
