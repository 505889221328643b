"""Fused attention where TensorRT has a kernel for it, decomposed attention where it has none.

The ONNX parser turns each `Attention` node into an `IAttention`, which by default must run as one fused kernel.
Some valid shapes have none (TensorRT-RTX 1.7, fp16: head dim 8 and below; tiny test models, small heads): the
build then fails with "Attention operation was not supported by a dedicated kernel ... may be marked as
decomposable". Which layers lack a kernel is the builder's knowledge, not ours, so each distinct attention shape
is asked once with a probe build of that attention alone (query, key, value of the same shapes and types, same
normalization and causality); only the layers whose probe fails are marked `IAttention.decomposable`, with a
warning naming them and the cost. When the probe and the full build disagree, every attention is decomposed, again
with a warning. The probes run only after a build has failed this way, so other graphs pay nothing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["COST", "DECOMPOSERS", "NO_FUSED_ATTENTION", "describe", "lacks_fused_attention"]

log = logging.getLogger(__name__)

NO_FUSED_ATTENTION = "Attention operation was not supported by a dedicated kernel"
COST = ("it runs as separate matrix-multiply and softmax kernels: slower than the fused kernel, and it holds "
        "the full query x key score matrix in memory")


def lacks_fused_attention(errors: list[str]) -> bool:
    return any(NO_FUSED_ATTENTION in e for e in errors)


def _attentions(trt: ModuleType, network: Any) -> list[Any]:
    """Every IAttention of `network` (each appears as an input and an output layer)."""
    found: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.ATTENTION_INPUT:
            layer.__class__ = trt.IAttentionInputLayer  # TensorRT's documented down-cast of an ILayer
            found.setdefault(layer.attention.name, layer.attention)
    return list(found.values())


def _signature(attention: Any) -> tuple:
    qkv = tuple((tuple(attention.get_input(k).shape), attention.get_input(k).dtype) for k in range(3))
    return qkv + (attention.norm_op, attention.causal)


def describe(attention: Any) -> str:
    query = attention.get_input(0)
    return f"{attention.name} (head dim {query.shape[-1]}, {query.dtype.name})"


def _has_fused_kernel(trt: ModuleType, signature: tuple, flags: int, logger: Any) -> bool:
    """Build the attention alone, not decomposable: the builder says whether a fused kernel exists. TensorRT keeps
    one logger per process, so the build's own `logger` is muted meanwhile and keeps none of the probe's errors."""
    (q, q_type), (k, k_type), (v, v_type), norm_op, causal = signature
    kept, logger.quiet = len(logger.errors), True
    try:
        builder = trt.Builder(logger)
        network = builder.create_network(flags)
        inputs = [network.add_input(n, t, s) for n, t, s in (("q", q_type, q), ("k", k_type, k), ("v", v_type, v))]
        attention = network.add_attention(*inputs, norm_op, causal)
        network.mark_output(attention.get_output(0))
        return builder.build_serialized_network(network, builder.create_builder_config()) is not None
    finally:
        del logger.errors[kept:]
        logger.quiet = False


def decompose_unfused(trt: ModuleType, network: Any, flags: int, logger: Any) -> list[str]:
    """Mark decomposable each attention whose shapes have no fused kernel; describe those marked."""
    verdicts: dict[tuple, bool] = {}
    marked = []
    for attention in _attentions(trt, network):
        signature = _signature(attention)
        if signature not in verdicts:
            verdicts[signature] = _has_fused_kernel(trt, signature, flags, logger)
        if not verdicts[signature] and not attention.decomposable:
            attention.decomposable = True
            marked.append(describe(attention))
    return marked


def decompose_all(trt: ModuleType, network: Any, flags: int, logger: Any) -> list[str]:
    """Mark every attention still fused decomposable; describe those marked."""
    marked = []
    for attention in _attentions(trt, network):
        if not attention.decomposable:
            attention.decomposable = True
            marked.append(describe(attention))
    return marked


#: In the order they are tried: the precise fallback first, then the one that cannot miss.
DECOMPOSERS: tuple[Callable[[ModuleType, Any, int, Any], list[str]], ...] = (decompose_unfused, decompose_all)
