"""A small ONNX graph builder on onnx-graphsurgeon that tracks shapes and records where a graph may be cut.

Every tensor is named on purpose (`scope/op_k` or an explicit name), shapes are static and known at emission, so
the manifest can describe any tensor that crosses a segment boundary without running shape inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

OPSET = 23
Shape = tuple[int, ...]


@dataclass
class Cut:
    """A place between two nodes where the graph may be split: `index` is the number of nodes before it."""

    index: int
    kind: str  # "block", "latent-halo", "halo", "kv", "gn"
    label: str


@dataclass
class Builder:
    """Collects nodes in topological order; activations use `dtype`, statistics fp32."""

    dtype: np.dtype
    nodes: list[gs.Node] = field(default_factory=list)
    inputs: list[gs.Variable] = field(default_factory=list)
    outputs: list[gs.Variable] = field(default_factory=list)
    cuts: list[Cut] = field(default_factory=list)
    weights: dict[str, gs.Constant] = field(default_factory=dict)
    roles: dict[str, dict] = field(default_factory=dict)  # tensor name -> {"role", "layer", ...}
    scope: str = ""
    _count: int = 0
    _consts: dict[tuple, gs.Constant] = field(default_factory=dict)

    # ---- tensors -------------------------------------------------------------------------------------------
    def input(self, name: str, shape: Shape, dtype, role: str, **info) -> gs.Variable:
        var = gs.Variable(name, dtype=np.dtype(dtype), shape=list(shape))
        self.inputs.append(var)
        self.roles[name] = {"role": role, **info}
        return var

    def output(self, var: gs.Variable, name: str, role: str, **info) -> gs.Variable:
        """Expose `var` as a graph output called `name` (an Identity keeps names independent of producers)."""
        out = self._node("Identity", [var], var.shape, var.dtype, name=name)
        self.outputs.append(out)
        self.roles[name] = {"role": role, **info}
        return out

    def weight(self, name: str, array: np.ndarray, dtype=None) -> gs.Constant:
        if name not in self.weights:
            self.weights[name] = gs.Constant(name, np.ascontiguousarray(array.astype(dtype or self.dtype)))
        return self.weights[name]

    def const(self, value, dtype=np.int64) -> gs.Constant:
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = gs.Constant(f"const.{len(self._consts)}", arr)
        return self._consts[key]

    def cut(self, kind: str, label: str) -> None:
        self.cuts.append(Cut(len(self.nodes), kind, label))

    # ---- generic op ------------------------------------------------------------------------------------------
    def _node(self, op: str, inputs, shape: Shape, dtype, attrs=None, name: str | None = None,
              n_out: int = 1, shapes=None):
        self._count += 1
        base = name or f"{self.scope}/{op}_{self._count}"
        outs = [gs.Variable(base if n_out == 1 else f"{base}.{i}", dtype=np.dtype(dtype),
                            shape=list(shapes[i] if shapes else shape)) for i in range(n_out)]
        self.nodes.append(gs.Node(op, name=f"{base}#node", attrs=attrs or {}, inputs=list(inputs), outputs=outs))
        return outs[0] if n_out == 1 else outs

    def op(self, op: str, inputs, shape: Shape, dtype=None, attrs=None, name=None):
        return self._node(op, inputs, shape, dtype if dtype is not None else inputs[0].dtype, attrs, name)

    # ---- helpers ---------------------------------------------------------------------------------------------
    def cast(self, x, dtype):
        dtype = np.dtype(dtype)
        if np.dtype(x.dtype) == dtype:
            return x
        from onnx.helper import np_dtype_to_tensor_dtype
        return self.op("Cast", [x], x.shape, dtype, {"to": int(np_dtype_to_tensor_dtype(dtype))})

    def add(self, a, b, shape=None):
        return self.op("Add", [a, b], shape or a.shape)

    def mul(self, a, b, shape=None):
        return self.op("Mul", [a, b], shape or a.shape)

    def silu(self, x):
        return self.mul(x, self.op("Sigmoid", [x], x.shape))

    def reshape(self, x, shape: Shape):
        return self.op("Reshape", [x, self.const(list(shape))], shape)

    def transpose(self, x, perm):
        return self.op("Transpose", [x], tuple(x.shape[p] for p in perm), attrs={"perm": list(perm)})

    def concat(self, xs, axis: int):
        shape = list(xs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in xs)
        return xs[0] if len(xs) == 1 else self.op("Concat", xs, tuple(shape), attrs={"axis": axis})

    def slice(self, x, axis: int, start: int, stop: int):
        shape = list(x.shape)
        shape[axis] = stop - start
        return self.op("Slice", [x, self.const([start]), self.const([stop]), self.const([axis])], tuple(shape))

    def unsqueeze(self, x, axis: int):
        shape = list(x.shape)
        shape.insert(axis, 1)
        return self.op("Unsqueeze", [x, self.const([axis])], tuple(shape))

    def take(self, x, index: int):
        """x[index] along axis 0."""
        return self.op("Gather", [x, self.const(index)], tuple(x.shape[1:]), attrs={"axis": 0})

    def reduce_mean(self, x, axis: int):
        shape = tuple(d for i, d in enumerate(x.shape) if i != axis % len(x.shape))
        return self.op("ReduceMean", [x, self.const([axis])], shape, attrs={"keepdims": 0})

    def linear(self, x, weight: np.ndarray, bias: np.ndarray | None, name: str):
        """x (..., in) @ W^T + b, with W stored transposed once as (in, out)."""
        w = self.weight(f"{name}.weight", weight.T)
        y = self.op("MatMul", [x, w], tuple(x.shape[:-1]) + (weight.shape[0],))
        return y if bias is None else self.add(y, self.weight(f"{name}.bias", bias))

    def conv(self, x, weight, bias, name: str, stride: int, pads, out_rows: int, out_width: int):
        inputs = [x, self.weight(f"{name}.weight", weight)]
        if bias is not None:
            inputs.append(self.weight(f"{name}.bias", bias))
        attrs = {"kernel_shape": list(weight.shape[2:]), "strides": [stride, stride], "pads": list(pads)}
        shape = (x.shape[0], weight.shape[0], out_rows, out_width)
        return self.op("Conv", inputs, shape, attrs=attrs)
