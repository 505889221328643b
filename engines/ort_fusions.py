"""ONNX Runtime preparation: the UNet op chains of a segment graph rewritten onto ORT's fused kernels.

Each pass matches the op chain that `export/unet_graph.py` emits, by op types, attributes and the shapes of the
weights involved (never by generated tensor names), replaces it, and counts the chains it rewrote; a chain that
differs is left as it is. The exported graphs stay backend-neutral; these rewrites exist only in ORT engines.

- `group_norm`: GroupNorm as one LayerNormalization per (batch, channel) row, which yields the normalised rows and
  fp32 per-channel mean and 1/std in one pass; group statistics are combined from those (exact decomposition of the
  variance, no E[x^2] - E[x]^2 cancellation) and the rows rescaled per (batch, channel):
  y = y_c * (w * inv_g / inv_c) + (w * (m_c - m_g) * inv_g + b). Replaces ~10 full passes in fp32 (cast, square,
  two reductions, subtract, multiply, cast back, affine) by one normalisation and two fp16 passes. Covers the
  one-GPU `GroupNormalization` op and the patch form whose statistics are exchanged (docs/design.md): the group
  statistics the patch exports keep their format, and the global ones it reads drive the rescaling.
- `skip_layer_norm`: bias + residual add + LayerNorm of a transformer block -> `SkipLayerNormalization`, whose
  fourth output is the new residual.
- `bias_split_gelu` (CUDA): GEGLU's bias add, split, exact GELU and product -> `BiasSplitGelu`.
- `bias_add` (CUDA): the bias and residual adds after a projection -> `BiasAdd`.
The first two have CPU kernels too, so the CPU target runs them and the tests prove them numerically there.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnx

from trt_distri.engines.ort_graph import GraphEdit
from trt_distri.errors import ConfigError

#: channel and hidden sizes ORT's CUDA kernels accept (contrib_ops/cuda/diffusion/*.cc)
BIAS_SPLIT_GELU_WIDTHS = (2560, 5120, 10240)
BIAS_ADD_CHANNELS = (320, 640, 1280)
_ROW_EPS = 1e-5  # the per-channel LayerNorm's epsilon; its exact inverse std is what the rescaling divides by
_F32 = onnx.TensorProto.FLOAT


def _bias_of(g: GraphEdit, tensor: str, shared: bool = False) -> tuple[str, str] | None:
    """(MatMul output, bias weight) when `tensor` = Add(MatMul(..), bias) and nothing else reads the Add
    (`shared`: other readers allowed, such as GEGLU's two slices; never a graph output)."""
    add = g.op(tensor, "Add")
    if add is None or tensor in g.outputs or not shared and g.sole_user(tensor) is None:
        return None
    for a, b in (add.input, add.input[::-1]):
        if g.op(a, "MatMul") is not None and g.init_dims(b) is not None and len(g.init_dims(b)) == 1:
            return a, b
    return None


def _residual_add(g: GraphEdit, add: onnx.NodeProto) -> tuple[str, str, str, onnx.NodeProto] | None:
    """(MatMul output, bias, residual, bias Add node) for add = Add(Add(MatMul, bias), residual)."""
    if add.op_type != "Add" or len(add.input) != 2:
        return None
    for x, skip in (add.input, add.input[::-1]):
        found = _bias_of(g, x)
        if found and g.shape(skip) is not None and g.shape(skip) == g.shape(add.output[0]):
            return found[0], found[1], skip, g.producer[x]
    return None


def skip_layer_norm(g: GraphEdit, target: str) -> int:
    count = 0
    for ln in g.live("LayerNormalization"):
        if len(ln.output) != 1 or len(ln.input) != 3:
            continue
        add = g.op(ln.input[0], "Add")
        found = _residual_add(g, add) if add is not None and g.attr(ln, "axis", -1) in (-1, 2) else None
        if found is None or len(g.shape(ln.input[0]) or ()) != 3:
            continue
        matmul_out, bias, skip, bias_add = found
        eps = float(g.attr(ln, "epsilon", 1e-5))
        g.node("SkipLayerNormalization", [matmul_out, skip, ln.input[1], ln.input[2], bias],
               [ln.output[0], "", "", add.output[0]], domain="com.microsoft", epsilon=eps)
        g.remove(ln, add, bias_add)
        count += 1
    return count


def bias_add(g: GraphEdit, target: str) -> int:
    count = 0
    for add in g.live("Add"):
        found = _residual_add(g, add)
        shape = g.shape(add.output[0])
        if found is None or shape is None or len(shape) != 3 or shape[2] not in BIAS_ADD_CHANNELS:
            continue
        matmul_out, bias, skip, inner = found
        g.node("BiasAdd", [matmul_out, bias, skip], [add.output[0]], domain="com.microsoft")
        g.remove(add, inner)
        count += 1
    return count


def bias_split_gelu(g: GraphEdit, target: str) -> int:
    count = 0
    for mul in g.live("Mul"):
        for left_name, gelu_name in (mul.input, mul.input[::-1]):
            chain = _geglu(g, left_name, gelu_name, mul)
            if chain is not None:
                matmul_out, bias, nodes = chain
                g.node("BiasSplitGelu", [matmul_out, bias], [mul.output[0]], domain="com.microsoft")
                g.remove(mul, *nodes)
                count += 1
                break
    return count


def _geglu(g: GraphEdit, left_name: str, gelu_name: str, mul: onnx.NodeProto):
    gelu, left = g.op(gelu_name, "Gelu"), g.op(left_name, "Slice")
    if gelu is None or left is None or g.attr(gelu, "approximate", "none") != "none":
        return None
    right = g.op(gelu.input[0], "Slice")
    if right is None or right.input[0] != left.input[0] or g.sole_user(gelu_name) is not mul:
        return None
    projected = left.input[0]
    found = _bias_of(g, projected, shared=True)
    width = g.init_dims(found[1])[0] if found else 0
    half = width // 2
    if (found is None or width not in BIAS_SPLIT_GELU_WIDTHS or not _is_slice(g, left, 0, half)
            or not _is_slice(g, right, half, width) or len(g.shape(projected) or ()) != 3
            or {id(n) for n in g.users(projected)} != {id(left), id(right)}
            or g.sole_user(left_name) is not mul or g.sole_user(gelu.input[0]) is not gelu):
        return None
    return found[0], found[1], [gelu, left, right, g.producer[projected]]


def _is_slice(g: GraphEdit, node: onnx.NodeProto, start: int, stop: int) -> bool:
    values = [g.const(n) for n in node.input[1:4]] if len(node.input) in (4, 5) else []
    if len(values) != 3 or any(v is None for v in values) or len(node.input) == 5 and node.input[4]:
        return False
    starts, ends, axes = (v.reshape(-1).tolist() for v in values)
    return starts == [start] and ends == [stop] and axes in ([2], [-1])


# ---- GroupNorm ---------------------------------------------------------------------------------------------
def group_norm(g: GraphEdit, target: str) -> int:
    count = 0
    for node in list(g.nodes):
        if id(node) in g.dead:
            continue
        if node.op_type == "GroupNormalization" and node.domain in ("", "ai.onnx"):
            count += _whole_group_norm(g, node)
        elif node.op_type == "Reshape":
            count += _patch_group_norm(g, node)
    return count


def _row_stats(g: GraphEdit, x: str, shape: tuple[int, ...], groups: int, elem_type: int) -> tuple[str, str, str, str]:
    """LayerNorm per (batch, channel) row of x (B, C, H, W): (normalised rows as (B, C, H, W), per-channel mean
    and variance as (B, G, C/G) fp32, 1/std per channel as (B, G, C/G))."""
    bsz, c, h, w = shape
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    rows = g.node("Reshape", [x, g.add_const(np.array([bsz * c, h * w], np.int64), "rows")])[0]
    ones = g.add_const(np.ones(h * w, dtype), "ones")
    y, mean, inv = g.node("LayerNormalization", [rows, ones], 3, axis=-1, epsilon=_ROW_EPS, stash_type=1)
    grouped = g.add_const(np.array([bsz, groups, c // groups], np.int64), "grouped")
    mean_c = g.node("Reshape", [mean, grouped])[0]
    inv_c = g.node("Reshape", [inv, grouped])[0]
    inv_sq = g.node("Mul", [inv_c, inv_c])[0]
    var_c = g.node("Sub", [g.node("Reciprocal", [inv_sq])[0], g.add_const(np.float32(_ROW_EPS), "eps")])[0]
    y4 = g.node("Reshape", [y, g.add_const(np.array(shape, np.int64), "shape")])[0]
    return y4, mean_c, var_c, inv_c


def _group_mean(g: GraphEdit, per_channel: str, keep: bool, out: str | None = None) -> str:
    axes = g.add_const(np.array([2], np.int64), "axes")
    return g.node("ReduceMean", [per_channel, axes], [out] if out else 1, keepdims=int(keep))[0]


def _rescale(g: GraphEdit, shape, groups: int, mean_c: str, inv_c: str, gmean: str, ginv: str,
             weight: str, bias: str) -> tuple[str, str]:
    """(scale, shift) per (batch, channel) as (B, C, 1, 1) in y's type; gmean/ginv are (B, G, 1) fp32."""
    bsz, c = shape[:2]
    per_group = g.add_const(np.array([1, groups, c // groups], np.int64), "per_group")
    w = g.node("Cast", [g.node("Reshape", [weight, per_group])[0]], to=_F32)[0]
    b = g.node("Cast", [g.node("Reshape", [bias, per_group])[0]], to=_F32)[0]
    w_inv = g.node("Mul", [w, ginv])[0]
    scale = g.node("Div", [w_inv, inv_c])[0]
    shift = g.node("Add", [g.node("Mul", [g.node("Sub", [mean_c, gmean])[0], w_inv])[0], b])[0]
    to = g.inits[weight].data_type
    col = g.add_const(np.array([bsz, c, 1, 1], np.int64), "col")
    return tuple(g.node("Cast", [g.node("Reshape", [t, col])[0]], to=to)[0] for t in (scale, shift))


def _apply(g: GraphEdit, y4: str, scale: str, shift: str, out: str) -> None:
    g.node("Add", [g.node("Mul", [y4, scale])[0], shift], [out])


def _whole_group_norm(g: GraphEdit, node: onnx.NodeProto) -> int:
    x, weight, bias = node.input
    shape, groups = g.shape(x), int(g.attr(node, "num_groups"))
    if shape is None or len(shape) != 4 or g.init_dims(weight) != (shape[1],) or g.init_dims(bias) != (shape[1],):
        return 0
    eps = g.add_const(np.float32(g.attr(node, "epsilon", 1e-5)), "gn_eps")
    y4, mean_c, var_c, inv_c = _row_stats(g, x, shape, groups, g.inits[weight].data_type)
    gmean = _group_mean(g, mean_c, keep=True)
    centred = g.node("Sub", [mean_c, gmean])[0]
    var_g = _group_mean(g, g.node("Add", [var_c, g.node("Mul", [centred, centred])[0]])[0], keep=True)
    ginv = g.node("Reciprocal", [g.node("Sqrt", [g.node("Add", [var_g, eps])[0]])[0]])[0]
    scale, shift = _rescale(g, shape, groups, mean_c, inv_c, gmean, ginv, weight, bias)
    _apply(g, y4, scale, shift, node.output[0])
    g.remove(node)
    return 1


def _patch_group_norm(g: GraphEdit, reshape: onnx.NodeProto) -> int:
    """The patch form (export/unet_graph.py `_group_norm`, n > 1) where statistics and normalisation share a
    segment: x32 = [Cast to fp32](Reshape(x, (B, G, N))) read by ReduceMean (E[x]), Mul + ReduceMean (E[x^2])
    and the normalisation Sub(x32, gmean) -> Mul(inv) -> Reshape -> [Cast] -> Mul(w) -> Add(b)."""
    x32, removed = reshape.output[0], [reshape]
    cast = g.sole_user(x32)
    if cast is not None and cast.op_type == "Cast" and g.attr(cast, "to") == _F32:
        x32, removed = cast.output[0], [reshape, cast]
    users = g.users(x32)
    by_type = {n.op_type: n for n in users}
    x, shape, grouped = reshape.input[0], g.shape(reshape.input[0]), g.shape(x32)
    if (x32 in g.outputs or len(users) != 3 or set(by_type) != {"ReduceMean", "Mul", "Sub"} or shape is None
            or grouped is None or len(shape) != 4 or len(grouped) != 3):
        return 0
    square, mean_node, sub = by_type["Mul"], by_type["ReduceMean"], by_type["Sub"]
    sq_mean = g.sole_user(square.output[0])
    chain = _normalise_chain(g, sub)
    if (list(square.input) != [x32, x32] or sq_mean is None or sq_mean.op_type != "ReduceMean" or chain is None
            or sub.input[0] != x32 or not _reduces_last(g, mean_node) or not _reduces_last(g, sq_mean)):
        return 0
    inv_u, weight, bias, out, nodes = chain
    groups = grouped[1]
    y4, mean_c, var_c, inv_c = _row_stats(g, x, shape, groups, g.inits[weight].data_type)
    _group_mean(g, mean_c, keep=False, out=mean_node.output[0])
    _group_mean(g, g.node("Add", [var_c, g.node("Mul", [mean_c, mean_c])[0]])[0], keep=False,
                out=sq_mean.output[0])
    scale, shift = _rescale(g, shape, groups, mean_c, inv_c, sub.input[1], inv_u, weight, bias)
    _apply(g, y4, scale, shift, out)
    g.remove(*removed, square, mean_node, sq_mean, sub, *nodes)
    return 1


def _reduces_last(g: GraphEdit, node: onnx.NodeProto) -> bool:
    axes = g.const(node.input[1]) if len(node.input) > 1 else None
    return axes is not None and axes.reshape(-1).tolist() in ([2], [-1]) and g.attr(node, "keepdims", 1) == 0


def _normalise_chain(g: GraphEdit, sub: onnx.NodeProto):
    """(inv (B, G, 1), weight, bias, output, nodes) of Sub -> Mul(inv) -> Reshape -> Cast -> Mul(w) -> Add(b)."""
    steps = []
    node = sub
    for op in ("Mul", "Reshape", "Cast", "Mul", "Add"):
        nxt = g.sole_user(node.output[0])
        if op == "Cast" and nxt is not None and nxt.op_type != "Cast":
            continue  # an fp32 model normalises without casting back
        if nxt is None or nxt.op_type != op:
            return None
        steps.append(node := nxt)
    scale, affine_w, affine_b = steps[0], steps[-2], steps[-1]
    inv = scale.input[1] if scale.input[0] == sub.output[0] else scale.input[0]
    weight = next((i for i in affine_w.input if g.init_dims(i) is not None), None)
    bias = next((i for i in affine_b.input if g.init_dims(i) is not None), None)
    if weight is None or bias is None:
        return None
    return inv, weight, bias, affine_b.output[0], steps


Pass = Callable[[GraphEdit, str], int]
#: pass name -> (function, targets it runs for); applied in this order
PASSES: dict[str, tuple[Pass, tuple[str, ...]]] = {
    "group_norm": (group_norm, ("cpu", "cuda")),
    "skip_layer_norm": (skip_layer_norm, ("cpu", "cuda")),
    "bias_split_gelu": (bias_split_gelu, ("cuda",)),
    "bias_add": (bias_add, ("cuda",)),
}


PASSES_ENV = "TRT_DISTRI_ORT_PASSES"


def selected_passes() -> tuple[str, ...]:
    """The passes `TRT_DISTRI_ORT_PASSES` names ("all", the default; "none"; or a comma-separated list)."""
    value = os.environ.get(PASSES_ENV, "all").strip()
    if value == "all":
        return tuple(PASSES)
    names = tuple(p for p in value.split(",") if p and p != "none")
    unknown = [p for p in names if p not in PASSES]
    if unknown:
        raise ConfigError(f"{PASSES_ENV} names unknown passes {unknown}. Note: expected 'all', 'none' or some of "
                          f"{', '.join(PASSES)}, got {value!r}. Fix: correct or unset {PASSES_ENV}")
    return names


def prepare(model: onnx.ModelProto, target: str, passes: tuple[str, ...] | None = None) -> dict[str, int]:
    """Rewrite `model` in place for ORT on `target` ("cpu" or "cuda") with `passes` (default: every pass);
    returns chains rewritten per pass."""
    edit = GraphEdit(model.graph)
    counts = {}
    for name, (run, targets) in PASSES.items():
        if target in targets and (passes is None or name in passes):
            counts[name] = run(edit, target)
    edit.commit()
    if any(counts.values()) and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return counts
