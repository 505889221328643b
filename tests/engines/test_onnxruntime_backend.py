"""The ONNX Runtime backend on the tiny model's exported graphs: the export simulator run through engine sessions
gives the simulator's outputs; attention is rewritten for ORT's fused kernels; loading imports no torch or onnx."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from trt_distri.config import GNMode, Precision
from trt_distri.engines.backend import LoadOptions, get_backend
from trt_distri.engines.build import build_workdir
from trt_distri.engines.cache import EngineCache
from oracles.simulate import Simulator

sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
from export_helpers import export_tiny, unet_inputs  # noqa: E402

from test_trt_build import _tiny_graph  # noqa: E402


class _EngineSimulator(Simulator):
    """The export simulator with each segment run by a session loaded from the ORT engine cache."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.cache = EngineCache(self.manifest, get_backend("ort"))

    def _session(self, segment):
        if segment.name not in self._sessions:
            session = self.cache.load(segment)

            class _Adapter:  # the simulator calls run(output names, feeds) like an InferenceSession
                def run(self, names, feeds):
                    outputs = session.run_host(feeds)
                    return [outputs[n] for n in names]

            self._sessions[segment.name] = _Adapter()
        return self._sessions[segment.name]


@pytest.mark.slow
@pytest.mark.parametrize("precision,tol", [(Precision.FP16, 5e-3), (Precision.FP32, 1e-5)], ids=["fp16", "fp32"])
def test_engine_sessions_match_the_export_simulator(tiny_sdxl, tmp_path, rel_err, precision, tol):
    workdir = export_tiny(tiny_sdxl, "tiny-sdxl", tmp_path, 2, 64, 64, GNMode.CORRECTED_ASYNC, precision)
    build_workdir(workdir, "ort")
    reference, engines = Simulator(workdir), _EngineSimulator(workdir)
    sample, timestep, enc, added = (x.numpy() if hasattr(x, "numpy") else x for x in
                                    unet_inputs(tiny_sdxl, "tiny-sdxl", 64, 64, 2))
    added = {k: v.numpy() for k, v in added.items()}
    for sync in (True, False, False):  # warm-up set, then the steady set twice
        want = reference(sample, timestep, enc, added, sync=sync)
        assert rel_err(engines(sample, timestep, enc, added, sync=sync), want) < tol


def test_attention_becomes_multi_head_attention(tmp_path: Path) -> None:
    graph = _tiny_graph(tmp_path / "g.onnx", np.float16)
    engine, _ = get_backend("ort").build(graph, get_backend("ort").build_options())
    model = onnx.ModelProto.FromString(engine)
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ("com.microsoft", "MultiHeadAttention") in ops and ("", "Attention") not in ops
    assert {i.data_location for i in model.graph.initializer if i.name == "conv_in.weight"} == \
        {onnx.TensorProto.EXTERNAL}  # weights stay in weights.bin


def test_loading_engines_imports_no_torch_onnx_or_diffusers() -> None:
    code = ("import sys, trt_distri.engines.cache, trt_distri.engines.onnxruntime_backend, "
            "trt_distri.engines.tensorrt_backend; "
            "print(sorted(m for m in ('torch', 'onnx', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pointer_binding_rebinds_only_what_moved():
    """The IOBinding kept across runs reads bound memory in place and follows a pointer that changed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from trt_distri.engines.onnxruntime_backend import PointerBinding
    from trt_distri.engines.trt import TensorInfo

    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("x", "y")],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    info = lambda n, is_input: TensorInfo(n, (2, 3), "float32", is_input)  # noqa: E731
    binding = PointerBinding(session, [info("x", True), info("y", True)], [info("z", False)], "cpu", 0)
    x, x2, y, z = (np.full((2, 3), v, np.float32) for v in (1.0, 10.0, 2.0, 0.0))
    pointers = {"x": x.ctypes.data, "y": y.ctypes.data, "z": z.ctypes.data}
    binding.run(pointers)
    assert (z == 3.0).all()
    y[:] = 5.0  # same pointer, new contents: read in place
    binding.run(pointers)
    assert (z == 6.0).all()
    binding.run(dict(pointers, x=x2.ctypes.data))  # a moved input is re-bound
    assert (z == 15.0).all() and binding.applied["x"] == x2.ctypes.data


def test_cuda_graph_option_reaches_the_provider_and_is_refused_where_it_cannot_run(tmp_path):
    from trt_distri.engines.onnxruntime_backend import cuda_provider_options
    from trt_distri.errors import ConfigError

    assert cuda_provider_options(1, 1234, cuda_graph=True) == {
        "device_id": "1", "has_user_compute_stream": "1", "user_compute_stream": "1234", "enable_cuda_graph": "1"}
    assert "enable_cuda_graph" not in cuda_provider_options(0, None)
    with pytest.raises(ConfigError, match="CUDA-graph replay needs a CUDA device"):
        get_backend("ort").load(tmp_path / "graph.onnx", LoadOptions(None, cuda_graph=True))
    import dataclasses

    backend = get_backend("ort")  # as a backend whose capabilities lack CUDA graphs
    caps = dataclasses.replace(backend.capabilities(), supports_cuda_graph=False)
    backend.capabilities = lambda: caps
    with pytest.raises(ConfigError, match="not available with ONNX Runtime engines yet"):
        backend.load(tmp_path / "x.onnx", LoadOptions(0, cuda_graph=True))


def test_conv_algo_search_comes_from_the_environment(monkeypatch):
    from trt_distri.engines.onnxruntime_backend import cuda_provider_options
    from trt_distri.errors import ConfigError

    monkeypatch.delenv("TRT_DISTRI_ORT_CONV_ALGO_SEARCH", raising=False)
    assert "cudnn_conv_algo_search" not in cuda_provider_options(0, None)
    monkeypatch.setenv("TRT_DISTRI_ORT_CONV_ALGO_SEARCH", "")
    assert "cudnn_conv_algo_search" not in cuda_provider_options(0, None)
    for value in ("heuristic", "EXHAUSTIVE", "Default"):
        monkeypatch.setenv("TRT_DISTRI_ORT_CONV_ALGO_SEARCH", value)
        assert cuda_provider_options(0, 7)["cudnn_conv_algo_search"] == value.upper()
    monkeypatch.setenv("TRT_DISTRI_ORT_CONV_ALGO_SEARCH", "fastest")
    with pytest.raises(ConfigError, match="TRT_DISTRI_ORT_CONV_ALGO_SEARCH.*got 'fastest'.*Fix: unset"):
        cuda_provider_options(0, None)


def test_transient_sessions_keep_out_of_the_shared_device_arena(tmp_path, monkeypatch):
    """A transient session (text encoder, VAE) gets its own arena, freed with it; others share one per device."""
    import types

    from trt_distri.engines import onnxruntime_backend as ort_backend

    made, registered = [], []

    class Options:
        def __init__(self):
            self.entries = {}

        def add_session_config_entry(self, key, value):
            self.entries[key] = value

    class Session:
        def __init__(self, model, options, providers):
            made.append((options.entries, providers))

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self):
            return []

        def get_outputs(self):
            return []

    fake = types.SimpleNamespace(
        __version__="fake", SessionOptions=Options, InferenceSession=Session,
        get_available_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        OrtMemoryInfo=lambda *a: a, OrtAllocatorType=types.SimpleNamespace(ORT_ARENA_ALLOCATOR=0),
        OrtMemType=types.SimpleNamespace(DEFAULT=0), OrtArenaCfg=dict,
        create_and_register_allocator_v2=lambda *a: registered.append(a),
        set_default_logger_severity=lambda level: None)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    monkeypatch.setattr(ort_backend, "_SHARED_ARENAS", {})
    (tmp_path / "g.onnx").write_bytes(b"")
    backend = get_backend("ort")
    backend.load(tmp_path / "g.onnx", LoadOptions(3, transient=True))
    entries, providers = made[-1]
    assert "session.use_env_allocators" not in entries and not registered
    assert providers[0][1]["arena_extend_strategy"] == "kSameAsRequested"
    backend.load(tmp_path / "g.onnx", LoadOptions(3))
    entries, providers = made[-1]
    assert entries["session.use_env_allocators"] == "1" and len(registered) == 1
    assert "arena_extend_strategy" not in providers[0][1]


class _FakeSession:
    """Enough of an InferenceSession for PointerBinding: records binds, fails runs when told."""

    def __init__(self, error: Exception | None = None) -> None:
        self.bound, self.error = [], error

    def io_binding(self):
        session = self

        class Binding:
            def bind_input(self, name, *args):
                session.bound.append(name)

            bind_output = bind_input

        return Binding()

    def run_with_iobinding(self, binding, options) -> None:
        if self.error is not None:
            raise self.error


def test_a_captured_binding_refuses_a_moved_tensor_and_names_the_fix():
    """ORT replays a CUDA graph with the pointers it captured: a tensor that moved afterwards would be ignored
    silently, so it is refused; before the first run, binding is free."""
    from trt_distri.engines.onnxruntime_backend import PointerBinding
    from trt_distri.engines.trt import TensorInfo
    from trt_distri.errors import ConfigError

    info = TensorInfo("x", (1,), "float32", True)
    session = _FakeSession()
    binding = PointerBinding(session, [info], [], "cuda", 0, frozen=True)
    binding.run({"x": 0x1000})
    binding.run({"x": 0x1000})  # same place: replayed, nothing re-bound
    assert session.bound == ["x"]
    with pytest.raises(ConfigError, match="'x' moved after its CUDA graph was captured.*0x1000.*0x2000.*no-cuda-graph"):
        binding.run({"x": 0x2000})
    plain = PointerBinding(_FakeSession(), [info], [], "cuda", 0)
    plain.run({"x": 0x1000})
    plain.run({"x": 0x2000})  # without a graph a moved tensor is simply re-bound
    assert plain.applied["x"] == 0x2000


def test_a_failed_capture_names_the_way_out():
    from trt_distri.engines.onnxruntime_backend import PointerBinding
    from trt_distri.engines.trt import TensorInfo
    from trt_distri.errors import EngineRunError

    info = TensorInfo("x", (1,), "float32", True)
    failing = RuntimeError("CUDA failure 900: operation not permitted when stream is capturing")
    with pytest.raises(EngineRunError, match="stream is capturing.*--no-cuda-graph"):
        PointerBinding(_FakeSession(failing), [info], [], "cuda", 0, frozen=True).run({"x": 0x1000})
    with pytest.raises(RuntimeError, match="stream is capturing"):  # without a graph: ORT's error as it is
        PointerBinding(_FakeSession(failing), [info], [], "cuda", 0).run({"x": 0x1000})


def test_cuda_graphs_are_the_default_where_onnx_runtime_ranks_generate_more_than_once():
    """Capture costs the first image about 2 s and pays back over later ones (docs/benchmarks.md)."""
    from trt_distri.runtime.executor import uses_cuda_graph

    assert uses_cuda_graph(None, "ort", reused=True) is True
    assert uses_cuda_graph(None, "ort", reused=False) is False
    assert uses_cuda_graph(False, "ort", reused=True) is False and uses_cuda_graph(True, "ort", reused=False)


def test_the_cuda_graph_default_is_read_from_capabilities_not_names(monkeypatch):
    from types import SimpleNamespace

    from trt_distri.runtime import executor

    caps = SimpleNamespace(supports_cuda_graph=False)
    monkeypatch.setattr(executor, "get_backend", lambda name: SimpleNamespace(capabilities=lambda: caps))
    assert executor.uses_cuda_graph(None, "ort", reused=True) is False


@pytest.mark.parametrize("verbose", [False, True])
def test_onnx_runtime_warnings_reach_the_user_only_with_verbose(capfd, tmp_path, verbose):
    """A graph with an unused initializer makes ONNX Runtime warn (on the C++ side, to stderr)."""
    import logging

    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
                              [numpy_helper.from_array(np.zeros(4, np.float32), "unused")])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    package = logging.getLogger("trt_distri")
    before = package.level
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    try:
        get_backend("ort").load(path, LoadOptions(None)).run_host({"x": np.ones(1, np.float32)})
    finally:
        package.setLevel(before)
    assert ("unused" in capfd.readouterr().err) == verbose


def test_nhwc_convolutions_come_from_the_environment(monkeypatch):
    from trt_distri.engines.onnxruntime_backend import cuda_provider_options

    monkeypatch.delenv("TRT_DISTRI_ORT_PREFER_NHWC", raising=False)
    assert "prefer_nhwc" not in cuda_provider_options(0, None)
    monkeypatch.setenv("TRT_DISTRI_ORT_PREFER_NHWC", "1")
    assert cuda_provider_options(0, None)["prefer_nhwc"] == "1"
