"""Name the linear weights of a traced text-encoder graph after the torch parameters they hold (for LoRA).

`torch.onnx.export` folds `Transpose(linear.weight)` into a new initializer with a generated name
(`onnx::MatMul_298`): a LoRA key (`text_model.encoder.layers.0.self_attn.q_proj`) cannot be matched to it. Here
every such initializer is matched to its parameter by value (it holds exactly `weight.T`, shape (in, out)), never
by the generated name, and renamed `<module>.weight` (module path inside the encoder, as diffusers and PEFT write
LoRA keys). So a text encoder's weights follow the UNet's convention: `<module>.weight`, linear weights stored
transposed (in, out). An initializer whose value several parameters share (the exporter merges equal tensors)
keeps its name: an update of one of them cannot be told apart from the others. Linear weights the graph does not
hold at all are reported as unused (the manifest lists them: LoRA layers for them are skipped).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def _digest(array: np.ndarray) -> tuple:
    array = np.ascontiguousarray(array)
    return array.shape, array.dtype.str, hashlib.blake2b(array.tobytes(), digest_size=16).digest()


def _linear_weights(module: Any) -> dict[str, np.ndarray]:
    """`<module>.weight` -> value (out, in) of every `torch.nn.Linear` of `module`."""
    import torch

    return {f"{name}.weight": child.weight.detach().float().cpu().numpy() for name, child in module.named_modules()
            if isinstance(child, torch.nn.Linear)}


def name_linear_weights(model: Any, module: Any) -> tuple[int, list[str]]:
    """Rename, in the ONNX model proto `model` (external data loaded), each initializer holding a linear weight of
    `module` transposed. Returns how many were renamed, and the linear weights the graph does not hold at all,
    transposed or not: layers past the outputs the graph computes (SDXL's first encoder gives the penultimate
    hidden state, so its last layer is pruned), which no LoRA can change the outputs through."""
    from onnx import numpy_helper

    weights = _linear_weights(module)
    by_value: dict[tuple, list[str]] = {}
    for name, value in weights.items():
        by_value.setdefault(_digest(value.T), []).append(name)
    digests = {init.name: _digest(numpy_helper.to_array(init)) for init in model.graph.initializer}
    held, taken = set(digests.values()), set(digests)
    renames: dict[str, str] = {}
    for init in model.graph.initializer:
        names = by_value.get(digests[init.name]) if len(init.dims) == 2 else None
        if names and len(names) == 1 and names[0] not in taken and names[0] not in renames.values():
            renames[init.name] = names[0]
    _rename(model, renames)
    unused = [name for name, value in weights.items() if _digest(value.T) not in held and _digest(value) not in held]
    return len(renames), unused


def _rename(model: Any, renames: dict[str, str]) -> None:
    for init in model.graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in _all_nodes(model.graph):
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for value in list(model.graph.input) + list(model.graph.value_info):
        value.name = renames.get(value.name, value.name)


def _all_nodes(graph: Any):
    """The nodes of `graph` and of its subgraphs (If/Loop bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)
