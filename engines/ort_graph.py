"""A small editor over an ONNX graph protobuf for rewrite passes: who produces and consumes each tensor, node
removal and insertion, inline constants, and a topological re-sort when done.

Weights stay where they are (external data is never loaded): passes read initializer shapes, and values only of
the small inline constants the exporter writes (slice bounds, reshape targets).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphEdit:
    """Edits `graph` in place; call `commit()` once after the passes."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = list(graph.node)
        self.dead: set[int] = set()
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            self._index(node)
        self.outputs = {o.name for o in graph.output}
        self.inits = {t.name: t for t in graph.initializer}
        self.shapes = {v.name: _shape(v) for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
        self._names = 0

    def _index(self, node: onnx.NodeProto) -> None:
        for out in node.output:
            if out:
                self.producer[out] = node
        for inp in node.input:
            if inp:
                self.consumers[inp].append(node)

    # ---- queries ---------------------------------------------------------------------------------------------
    def op(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The live node of type `op_type` (default domain) producing `tensor`, else None."""
        node = self.producer.get(tensor)
        if node is None or id(node) in self.dead or node.op_type != op_type or node.domain not in ("", "ai.onnx"):
            return None
        return node

    def live(self, op_type: str):
        """The nodes of `op_type` (default domain) that are still live when the iteration reaches them."""
        for node in list(self.nodes):
            if id(node) not in self.dead and node.op_type == op_type and node.domain in ("", "ai.onnx"):
                yield node

    def users(self, tensor: str) -> list[onnx.NodeProto]:
        """Live consumers of `tensor`, each once (Mul(x, x) reads it twice)."""
        seen = {}
        for n in self.consumers.get(tensor, []):
            if id(n) not in self.dead:
                seen.setdefault(id(n), n)
        return list(seen.values())

    def sole_user(self, tensor: str) -> onnx.NodeProto | None:
        """The one live consumer of `tensor` when it has exactly one and is not a graph output."""
        users = self.users(tensor)
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def const(self, name: str) -> np.ndarray | None:
        """The value of an inline initializer (None for a weight in external data or a computed tensor)."""
        init = self.inits.get(name)
        if init is None or init.data_location == onnx.TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(init)

    def init_dims(self, name: str) -> tuple[int, ...] | None:
        init = self.inits.get(name)
        return None if init is None else tuple(init.dims)

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        return self.shapes.get(tensor)

    def dtype(self, tensor: str) -> int | None:
        for v in list(self.graph.value_info) + list(self.graph.input) + list(self.graph.output):
            if v.name == tensor:
                return v.type.tensor_type.elem_type
        init = self.inits.get(tensor)
        return None if init is None else init.data_type

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    # ---- edits -----------------------------------------------------------------------------------------------
    def name(self, hint: str) -> str:
        self._names += 1
        return f"ort_prep/{hint}_{self._names}"

    def add_const(self, array: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        init = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.graph.initializer.append(init)
        self.inits[name] = init
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "",
             shape: tuple[int, ...] | None = None, **attrs) -> list[str]:
        """Insert a node; `outputs` are names, or a count of fresh names. Returns the output names."""
        names = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        node = helper.make_node(op_type, inputs, names, name=self.name(op_type), domain=domain or None, **attrs)
        self.nodes.append(node)
        self._index(node)
        if shape is not None:
            self.shapes[names[0]] = shape
        return names

    def remove(self, *nodes: onnx.NodeProto) -> None:
        self.dead.update(id(n) for n in nodes)

    def commit(self) -> None:
        """Write the live nodes back in topological order and drop value_info of tensors no longer produced."""
        live = [n for n in self.nodes if id(n) not in self.dead]
        del self.graph.node[:]
        self.graph.node.extend(_toposort(live, {i.name for i in self.graph.input} | set(self.inits)))
        produced = {o for n in live for o in n.output}
        kept = [v for v in self.graph.value_info if v.name in produced]
        del self.graph.value_info[:]
        self.graph.value_info.extend(kept)
        used = {i for n in live for i in n.input} | {o.name for o in self.graph.output}
        inits = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits)


def _shape(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Kahn's order, stable with respect to the given order; raises on a cycle or a missing input."""
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input if i not in ready})[:5]
            raise ValueError(f"graph rewrite left nodes whose inputs nothing produces: {missing}")
        pending = rest
    return ordered
