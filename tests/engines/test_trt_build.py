"""engines/trt.py: tiny exported-like graphs parse and build with TensorRT-RTX on CPU, and their I/O is checked."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from trt_distri.engines.capabilities import capabilities, import_trt
from trt_distri.engines.backend import TensorInfo
from trt_distri.engines.io_check import check_io_against_manifest
from trt_distri.engines.trt import BuildOptions, build_engine, build_engine_with_io, inspect_engine
from trt_distri.errors import ConfigError, EngineBuildError, ManifestError, MissingPackageError
from trt_distri.manifest import Segment, decode_record

B, H, W, L = 1, 4, 4, 16  # L = H * W tokens


def _const(name: str, value: np.ndarray) -> gs.Constant:
    return gs.Constant(name, np.ascontiguousarray(value))


def _conv_groupnorm(g: gs.Graph, x: gs.Variable, dtype: type, c: int) -> gs.Variable:
    """Cast to `dtype`, 3x3 Conv (its weight goes to external data), GroupNormalization (per-channel affine)."""
    x = g.layer(op="Cast", name="cast_in", inputs=[x], outputs=["x"],
                attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))})[0]
    weight = np.random.default_rng(0).normal(0, 0.1, (c, c, 3, 3)).astype(dtype)
    x = g.layer(op="Conv", name="conv_in", outputs=["conv_out"], attrs={"kernel_shape": [3, 3], "pads": [1] * 4},
                inputs=[x, _const("conv_in.weight", weight), _const("conv_in.bias", np.zeros(c, dtype))])[0]
    return g.layer(op="GroupNormalization", name="norm", attrs={"num_groups": 4, "epsilon": 1e-5}, outputs=["gn"],
                   inputs=[x, _const("norm.weight", np.ones(c, dtype)), _const("norm.bias", np.zeros(c, dtype))])[0]


def _tiny_graph(path: Path, dtype: type, channels: int = 32, heads: int = 2) -> Path:
    """sample (fp32) -> Conv -> GroupNorm -> tokens -> self-attention over [own, peer1] keys/values (3D inputs).

    Outputs the fresh `kv.attn1` (2, B, L, C) and the attention output; weights >= 64 bytes go to weights.bin."""
    g, c = gs.Graph(opset=23), channels
    sample, peer = gs.Variable("sample", np.float32, (B, c, H, W)), gs.Variable("kv.attn1.peer1", dtype, (2, B, L, c))
    fresh, out = gs.Variable("kv.attn1", dtype, (2, B, L, c)), gs.Variable("attn1.out", dtype, (B, L, c))
    x = _conv_groupnorm(g, sample, dtype, c)
    x = g.layer(op="Reshape", inputs=[x, _const("tokens_shape", np.array([B, c, L], np.int64))], outputs=["flat"])[0]
    seq = g.layer(op="Transpose", inputs=[x], outputs=["seq"], attrs={"perm": [0, 2, 1]})[0]
    axis0 = _const("axis0", np.array([0], np.int64))
    own = g.layer(op="Unsqueeze", inputs=[seq, axis0], outputs=["own"])[0]
    g.layer(op="Concat", name="kv_pack", inputs=[own, own], outputs=[fresh], attrs={"axis": 0})
    peers = g.layer(op="Split", inputs=[peer], outputs=["pk", "pv"], attrs={"axis": 0, "num_outputs": 2})
    keys, values = (g.layer(op="Concat", name=f"cat_{i}", attrs={"axis": 1}, outputs=[f"kv_all_{i}"], inputs=[
        seq, g.layer(op="Squeeze", inputs=[p, axis0], outputs=[f"peer_{i}"])[0]])[0] for i, p in enumerate(peers))
    g.layer(op="Attention", name="attn1", inputs=[seq, keys, values], outputs=[out],
            attrs={"q_num_heads": heads, "kv_num_heads": heads})
    g.inputs, g.outputs = [sample, peer], [fresh, out]
    model = gs.export_onnx(g.cleanup().toposort())
    model.ir_version = 10  # ONNX Runtime 1.31 rejects IR 14
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin", size_threshold=64)
    return path


def _segment(dtype: str, channels: int = 32) -> dict:
    """The manifest segment an exporter would write for `_tiny_graph`, by hand."""
    return {"name": "steady.0", "file": "graphs/steady.0.onnx", "exchange_range": [0, 4096],
            "inputs": [{"name": "sample", "role": "sample", "shape": [B, channels, H, W], "dtype": "float32",
                        "layer": "conv_in"},
                       {"name": "kv.attn1.peer1", "role": "stale", "shape": [2, B, L, channels], "dtype": dtype,
                        "layer": "attn1", "source": {"entry": "kv.attn1", "peer": 1, "wrap": True}}],
            "outputs": [{"name": "kv.attn1", "role": "fresh", "shape": [2, B, L, channels], "dtype": dtype,
                         "layer": "attn1"},
                        {"name": "attn1.out", "role": "activation", "shape": [B, L, channels], "dtype": dtype,
                         "layer": "attn1"}]}


@pytest.fixture(params=[np.float16, np.float32], ids=["fp16", "fp32"])
def graph(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    return _tiny_graph(tmp_path / "steady.0.onnx", request.param), np.dtype(request.param).name


def test_tiny_graph_is_valid_onnx_and_runs_in_onnxruntime(graph: tuple[Path, str]) -> None:
    path, dtype = graph
    onnx.checker.check_model(str(path), full_check=True)
    assert (path.parent / "weights.bin").stat().st_size > 0
    feeds = {"sample": np.ones((B, 32, H, W), np.float32), "kv.attn1.peer1": np.ones((2, B, L, 32), dtype)}
    kv, out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    assert kv.shape == (2, B, L, 32) and out.shape == (B, L, 32) and out.dtype == np.dtype(dtype)


@pytest.mark.rtx
def test_builds_and_network_io_matches_segment(graph: tuple[Path, str]) -> None:
    path, dtype = graph
    engine, io = build_engine_with_io(path, "trt-rtx", BuildOptions(optimization_level=3, workspace_bytes=1 << 28))
    assert len(engine) > 0
    assert TensorInfo("sample", (B, 32, H, W), "float32", True) in io
    check_io_against_manifest(io, decode_record(Segment, _segment(dtype)))


@pytest.mark.rtx
def test_timing_cache_follows_capabilities(graph: tuple[Path, str], tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    assert build_engine(graph[0], "trt-rtx", BuildOptions(timing_cache=cache))
    assert cache.exists() == capabilities("trt-rtx").supports_timing_cache  # a no-op in TensorRT-RTX


@pytest.mark.rtx
def test_rtx_capabilities() -> None:
    caps = capabilities("trt-rtx")
    assert caps.builds_without_gpu and caps.supports_strongly_typed and not caps.supports_timing_cache
    assert caps.supports_decomposable_attention


def _two_attention_graph(path: Path) -> Path:
    """fp16 self-attention twice over 32 channels, each behind a residual Add: `small` with 4 heads of dim 8 (no
    fused kernel in TensorRT-RTX 1.7), `wide` with 2 heads of dim 16 (fused). (RTX 1.7 crashed building an
    attention fed straight by a graph input, so each is fed by an Add.)"""
    g = gs.Graph(opset=23)
    x, out = gs.Variable("x", np.float16, (B, L, 32)), gs.Variable("out", np.float16, (B, L, 32))
    h = g.layer(op="Add", inputs=[x, x], outputs=["h"])[0]
    y = g.layer(op="Attention", name="small", inputs=[h, h, h], outputs=["y"],
                attrs={"q_num_heads": 4, "kv_num_heads": 4})[0]
    z = g.layer(op="Add", inputs=[y, h], outputs=["z"])[0]
    g.layer(op="Attention", name="wide", inputs=[z, z, z], outputs=[out], attrs={"q_num_heads": 2, "kv_num_heads": 2})
    g.inputs, g.outputs = [x], [out]
    model = gs.export_onnx(g)
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.mark.rtx
def test_attention_without_fused_kernel_is_decomposed_and_named(tmp_path: Path, caplog) -> None:
    path = _tiny_graph(tmp_path / "g.onnx", np.float16, channels=8, heads=2)  # head dim 4
    with caplog.at_level("WARNING", logger="trt_distri.engines.trt"):
        assert build_engine(path, "trt-rtx", BuildOptions())
    assert "attn1 (head dim 4, HALF)" in caplog.text and "slower than the fused kernel" in caplog.text
    assert "ERROR" not in [r.levelname for r in caplog.records]  # handled, so not reported as an error


@pytest.mark.rtx
def test_only_attentions_without_fused_kernel_are_decomposed(tmp_path: Path, caplog) -> None:
    """The warning lists every layer the build decomposed: `small` (head dim 8) only; `wide` keeps its kernel."""
    with caplog.at_level("WARNING", logger="trt_distri.engines.trt"):
        assert build_engine(_two_attention_graph(tmp_path / "g.onnx"), "trt-rtx", BuildOptions())
    decomposed = [r.getMessage() for r in caplog.records if "built decomposed" in r.getMessage()]
    assert len(decomposed) == 1 and "1 attention layer(s)" in decomposed[0]
    assert "small (head dim 8, HALF)" in decomposed[0] and "wide" not in decomposed[0]


@pytest.mark.rtx
@pytest.mark.gpu
def test_inspect_engine_matches_network_io(graph: tuple[Path, str]) -> None:
    engine, io = build_engine_with_io(graph[0], "trt-rtx", BuildOptions())
    assert sorted(inspect_engine(engine, "trt-rtx"), key=lambda t: t.name) == sorted(io, key=lambda t: t.name)


@pytest.mark.rtx
@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the message on machines without a GPU")
def test_inspect_engine_without_gpu_says_what_to_use(graph: tuple[Path, str]) -> None:
    engine = build_engine(graph[0], "trt-rtx", BuildOptions())
    with pytest.raises(EngineBuildError, match="could not deserialize.*build_engine_with_io"):
        inspect_engine(engine, "trt-rtx")


def _unsupported_op_graph(path: Path) -> Path:
    x, y = gs.Variable("x", np.float32, (1, 4)), gs.Variable("y", np.float32, (1, 4))
    node = gs.Node("NoSuchOp", "mystery", inputs=[x], outputs=[y])
    model = gs.export_onnx(gs.Graph(nodes=[node], inputs=[x], outputs=[y], opset=23))
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.mark.rtx
def test_unsupported_op_names_node_and_operator(tmp_path: Path) -> None:
    with pytest.raises(EngineBuildError, match=r"node 0 'mystery' \(NoSuchOp\).*Fix: use only operators"):
        build_engine(_unsupported_op_graph(tmp_path / "g.onnx"), "trt-rtx", BuildOptions())


@pytest.mark.rtx
def test_broken_file_says_it_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "g.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(EngineBuildError, match="MODEL_DESERIALIZE_FAILED.*export it again"):
        build_engine(tmp_path / "g.onnx", "trt-rtx", BuildOptions())


@pytest.mark.rtx
def test_missing_external_data_names_the_file(tmp_path: Path) -> None:
    path = _tiny_graph(tmp_path / "g.onnx", np.float32)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(EngineBuildError, match="weights.bin.*Fix: check that the external data"):
        build_engine(path, "trt-rtx", BuildOptions())


def test_check_io_lists_every_mismatch() -> None:
    io = [TensorInfo("sample", (B, 32, H, W), "float16", True),
          TensorInfo("kv.attn1", (2, B, L, 32), "float16", True),
          TensorInfo("attn1.out", (B, L, 16), "float16", False),
          TensorInfo("extra", (1,), "float32", False)]
    with pytest.raises(ManifestError) as info:
        check_io_against_manifest(io, decode_record(Segment, _segment("float16")))
    message = str(info.value)
    assert "5 mismatches" in message and "'kv.attn1.peer1' missing" in message and "'extra' unexpected" in message
    assert "'sample' dtype: expected float32, got float16" in message
    assert "'kv.attn1' direction: expected output, got input" in message
    assert "'attn1.out' shape: expected (1, 16, 32), got (1, 16, 16)" in message


@pytest.mark.parametrize(("kind", "module", "package"), [("trt", "tensorrt", "tensorrt-cu13"),
                                                         ("trt-rtx", "tensorrt_rtx_bindings", "tensorrt-rtx-cu13")])
def test_missing_module_names_the_package(monkeypatch: pytest.MonkeyPatch, kind: str, module: str,
                                          package: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingPackageError, match=f"pip install {package}"):
        import_trt(kind)


def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        import_trt("tensorrt")


@pytest.mark.rtx
def test_strip_weights_pairs_strip_plan_with_refit_identical() -> None:
    import dataclasses

    import tensorrt_rtx_bindings as trt

    from trt_distri.engines.trt import _configure, _weight_flags, make_logger

    caps = capabilities("trt-rtx")
    assert _weight_flags(caps, BuildOptions(strip_weights=True)) == ["STRIP_PLAN", "REFIT_IDENTICAL"]
    assert _weight_flags(caps, BuildOptions(strip_weights=True, refittable=True)) == ["REFIT", "STRIP_PLAN"]
    assert _weight_flags(caps, BuildOptions(refittable=True)) == ["REFIT"] and not _weight_flags(caps, BuildOptions())
    config = _configure(trt, trt.Builder(make_logger(trt)), caps, BuildOptions(strip_weights=True))
    assert [config.get_flag(getattr(trt.BuilderFlag, f)) for f in ("STRIP_PLAN", "REFIT_IDENTICAL", "REFIT")] == \
        [True, True, False]
    old = dataclasses.replace(caps, supports_refit_identical=False)
    with pytest.raises(ConfigError, match="no BuilderFlag.REFIT_IDENTICAL.*weight-stripped"):
        _weight_flags(old, BuildOptions(strip_weights=True))


@pytest.mark.rtx
def test_parsed_network_knows_every_weight_by_its_graph_name(tmp_path: Path) -> None:
    """A refitter addresses weights by name; the ONNX parser names them after the graph's initializers, so a
    refit (or LoRA) finds them under the exporter's names."""
    import tensorrt_rtx_bindings as trt

    from trt_distri.engines.trt import make_logger

    path = _tiny_graph(tmp_path / "g.onnx", np.float16)
    model = onnx.load(str(path))
    names = [t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert {"conv_in.weight", "conv_in.bias", "norm.weight", "norm.bias"} <= set(names)
    logger = make_logger(trt)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(path))
    assert [n for n in names if not network.mark_weights_refittable(n)] == []  # True: weights of that name exist
    assert not network.mark_weights_refittable("conv_in.missing")
