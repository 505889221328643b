"""Cut an emitted rank graph into segments (contiguous runs of nodes) and describe each segment's I/O.

A tensor produced in one segment and consumed in a later one becomes an output of the first and an input of the
second (role `activation`). The builder emits nodes in topological order, so every segment only reads what
earlier segments or the model inputs produced.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from trt_distri.errors import InternalError
from trt_distri.export.onnx_builder import OPSET, Builder


@dataclass
class Segment:
    name: str
    graph: gs.Graph
    inputs: list[dict]
    outputs: list[dict]


def cut_points(builder: Builder, kinds: set[str]) -> list[int]:
    """Node indices where a new segment starts, for the cuts of the given kinds."""
    points = sorted({c.index for c in builder.cuts if c.kind in kinds})
    return [p for p in points if 0 < p < len(builder.nodes)]


def partition(builder: Builder, kinds: set[str], prefix: str) -> list[Segment]:
    bounds = [0] + cut_points(builder, kinds) + [len(builder.nodes)]
    segment_of = {}
    for s, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        for node in builder.nodes[lo:hi]:
            segment_of[id(node)] = s
    producer = {t.name: segment_of[id(node)] for node in builder.nodes for t in node.outputs}
    last_use: dict[str, int] = {}
    for node in builder.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Variable) and t.name:
                last_use[t.name] = max(last_use.get(t.name, -1), segment_of[id(node)])
    segments = []
    for s, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        segments.append(_segment(builder, builder.nodes[lo:hi], s, producer, last_use, f"{prefix}.{s:03d}"))
    return segments


def _segment(builder: Builder, nodes, s: int, producer, last_use, name: str) -> Segment:
    graph_outputs = {v.name for v in builder.outputs}
    inputs, seen = [], set()
    for node in nodes:
        for t in node.inputs:
            if not isinstance(t, gs.Variable) or not t.name or t.name in seen:
                continue
            src = producer.get(t.name)
            if src is None or src < s:
                seen.add(t.name)
                inputs.append(t)
            elif src > s:
                raise InternalError(f"{name}: {t.name} is read before segment {src} produces it")
    outputs = [t for node in nodes for t in node.outputs
               if t.name in graph_outputs or last_use.get(t.name, s) > s]
    graph = gs.Graph(nodes=list(nodes), inputs=inputs, outputs=outputs, opset=OPSET, name=name)
    return Segment(name, graph, [_describe(builder, t) for t in inputs], [_describe(builder, t) for t in outputs])


def _describe(builder: Builder, t: gs.Variable) -> dict:
    info = builder.roles.get(t.name, {"role": "activation"})
    return {"name": t.name, "shape": [int(d) for d in t.shape], "dtype": str(t.dtype), **info}
