"""ONNX Runtime preparation passes (engines/ort_fusions.py) on the tiny model's real segment graphs: every pass
rewrites the chains it targets and each rewritten segment computes what the exported one computes.

GroupNorm and SkipLayerNormalization run on ORT's CPU provider as they are. BiasSplitGelu and BiasAdd have CUDA
kernels only: here their sizes are widened to the tiny model's and they are expanded back into standard ops with
the semantics ORT documents for them, which checks the wiring (inputs, order, bias); the kernels themselves are
compared on a GPU by benchmarks/ort_fusion_check.py."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from trt_distri.config import GNMode, Precision
from trt_distri.engines import ort_fusions
from trt_distri.engines.onnxruntime_backend import rewrite_attention

sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
from export_helpers import export_tiny  # noqa: E402


def _expand_cuda_only(model: onnx.ModelProto) -> None:
    """BiasSplitGelu(x, b) = (x + b)[..., :h] * gelu((x + b)[..., h:]); BiasAdd(x, b, s) = x + b + s."""
    nodes = []
    for k, node in enumerate(model.graph.node):
        if node.op_type == "BiasSplitGelu":
            x, b = node.input
            half = f"_h{k}"
            model.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(v, np.int64), f"{half}{i}")
                                            for i, v in enumerate(([0], [-1], [2], [np.iinfo(np.int64).max]))])
            nodes += [helper.make_node("Add", [x, b], [f"{half}s"]),
                      helper.make_node("Split", [f"{half}s"], [f"{half}l", f"{half}r"], axis=2, num_outputs=2),
                      helper.make_node("Gelu", [f"{half}r"], [f"{half}g"]),
                      helper.make_node("Mul", [f"{half}l", f"{half}g"], list(node.output))]
        elif node.op_type == "BiasAdd":
            x, b, s = node.input
            nodes += [helper.make_node("Add", [x, b], [f"_b{k}"]), helper.make_node("Add", [f"_b{k}", s],
                                                                                    list(node.output))]
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _run(model: onnx.ModelProto, folder: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _feeds(model: onnx.ModelProto, rng: np.random.Generator) -> dict:
    feeds = {}
    for value in model.graph.input:
        t = value.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        shape = [d.dim_value for d in t.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


@pytest.fixture(scope="module")
def tiny_exports(tiny_sdxl, tmp_path_factory):
    root = tmp_path_factory.mktemp("fusions")
    return {n: export_tiny(tiny_sdxl, "tiny-sdxl", root / str(n), n, 64, 64, GNMode.CORRECTED_ASYNC,
                           Precision.FP32) for n in (1, 2)}


@pytest.mark.parametrize("devices", [1, 2])
def test_rewritten_segments_compute_the_exported_ones(tiny_exports, monkeypatch, rel_err, devices):
    monkeypatch.setattr(ort_fusions, "BIAS_SPLIT_GELU_WIDTHS", (64, 128, 256))
    monkeypatch.setattr(ort_fusions, "BIAS_ADD_CHANNELS", (8, 16, 32))
    graphs = tiny_exports[devices] / "graphs"
    totals: dict[str, int] = {}
    rng = np.random.default_rng(devices)
    for path in sorted(graphs.glob("steady.*.onnx")):
        original = onnx.load(str(path), load_external_data=False)
        rewrite_attention(original)
        fused = onnx.ModelProto()
        fused.CopyFrom(original)
        for name, count in ort_fusions.prepare(fused, "cuda").items():
            totals[name] = totals.get(name, 0) + count
        _expand_cuda_only(fused)
        checked = graphs / f"fused.{path.name}"
        checked.write_bytes(fused.SerializeToString())
        onnx.checker.check_model(str(checked))
        feeds = _feeds(original, rng)
        for got, want in zip(_run(fused, graphs, feeds), _run(original, graphs, feeds)):
            # fp32; per-channel statistics sum in another order than per-group ones, and the random stale
            # statistics fed here make some groups' variance tiny, which magnifies rounding
            assert rel_err(got, want) < 1e-4, path.name
    assert all(totals[name] > 0 for name in ort_fusions.PASSES), totals


def test_cpu_target_keeps_cuda_only_kernels_out(tiny_exports, monkeypatch):
    monkeypatch.setattr(ort_fusions, "BIAS_SPLIT_GELU_WIDTHS", (64, 128, 256))
    model = onnx.load(str(sorted((tiny_exports[1] / "graphs").glob("steady.*.onnx"))[2]), load_external_data=False)
    counts = ort_fusions.prepare(model, "cpu")
    assert set(counts) == {"group_norm", "skip_layer_norm"} and counts["group_norm"] > 0
    assert not {n.op_type for n in model.graph.node} & {"BiasSplitGelu", "BiasAdd", "GroupNormalization"}


def test_chains_that_differ_are_left_alone(tiny_exports):
    """A GEGLU whose width ORT's kernel does not take stays as exported (the tiny model's widths)."""
    model = onnx.load(str(sorted((tiny_exports[1] / "graphs").glob("steady.*.onnx"))[2]), load_external_data=False)
    before = sum(n.op_type == "Gelu" for n in model.graph.node)
    assert ort_fusions.prepare(model, "cuda")["bias_split_gelu"] == 0
    assert before > 0 and sum(n.op_type == "Gelu" for n in model.graph.node) == before
