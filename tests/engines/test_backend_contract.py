"""One contract, run against every backend whose package imports here (ONNX Runtime always; TensorRT-RTX on CI;
TensorRT where `tensorrt` imports). Loading needs a GPU except where `runs_without_gpu`: those tests skip with the
reason elsewhere. Both ways to run are covered: `run_host`, and `bind`/`run_async`, the runtime's path, on the
device a rank would use (runtime.host's stand-in on the CPU, runtime.cuda on a GPU)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from trt_distri.engines.backend import BACKENDS, LoadOptions, available_backends, get_backend
from trt_distri.engines.gpus import list_gpus
from trt_distri.engines.io_check import check_io_against_manifest
from trt_distri.errors import ConfigError, MissingPackageError
from trt_distri.manifest import Segment, decode_record, nbytes
from trt_distri.runtime.host import HostBoundSession, HostDevice

from test_trt_build import B, H, L, W, _segment, _tiny_graph

_MODULES = {"trt": ("tensorrt", "tensorrt-cu13"), "trt-rtx": ("tensorrt_rtx_bindings", "tensorrt-rtx-cu13"),
            "ort": ("onnxruntime", "onnxruntime")}


def _feeds(dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"sample": rng.standard_normal((B, 32, H, W)).astype(np.float32),
            "kv.attn1.peer1": rng.standard_normal((2, B, L, 32)).astype(dtype)}


@pytest.fixture(scope="module", params=[np.float16, np.float32], ids=["fp16", "fp32"])
def graph(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return _tiny_graph(tmp_path_factory.mktemp("graph") / "steady.0.onnx", request.param), \
        np.dtype(request.param).name


@pytest.mark.parametrize("name", available_backends())
class TestBackendContract:
    def test_version_and_capabilities(self, name: str) -> None:
        backend = get_backend(name)
        caps = backend.capabilities()
        assert backend.name == name and backend.version() and caps.engine_suffix.startswith(".")

    def test_build_io_matches_manifest_segment(self, name: str, graph: tuple[Path, str]) -> None:
        backend = get_backend(name)
        if not backend.capabilities().builds_without_gpu and not list_gpus():
            pytest.skip(f"{backend.label} builds only on a GPU")
        engine, io = backend.build(graph[0], backend.build_options())
        assert len(engine) > 0
        check_io_against_manifest(io, decode_record(Segment, _segment(graph[1])))

    def test_loaded_session_matches_onnxruntime_reference(self, name: str, graph: tuple[Path, str],
                                                          tmp_path: Path) -> None:
        backend = get_backend(name)
        caps = backend.capabilities()
        device = None if caps.runs_without_gpu else 0
        if device is not None and not list_gpus():
            pytest.skip(f"{backend.label} engines run only on a CUDA GPU")
        engine = tmp_path / f"e{caps.engine_suffix}"
        engine.write_bytes(backend.build(graph[0], backend.build_options())[0])
        session = backend.load(engine, LoadOptions(device, weights_dir=graph[0].parent))
        assert [t.name for t in session.inputs] == ["sample", "kv.attn1.peer1"]
        feeds = _feeds(graph[1])
        _assert_matches_reference(session.run_host(feeds), graph, feeds)

    @pytest.mark.parametrize("place", ["host", pytest.param("cuda", marks=pytest.mark.gpu)])
    def test_bound_run_matches_onnxruntime_reference(self, name: str, place: str, graph: tuple[Path, str],
                                                     tmp_path: Path) -> None:
        """Every tensor bound to memory of the rank's device, one run_async on the device's stream, as the runtime's
        executor runs a segment: the outputs equal ONNX Runtime's CPU run of the graph."""
        backend = get_backend(name)
        caps = backend.capabilities()
        if place == "host" and not caps.runs_without_gpu:
            pytest.skip(f"{backend.label} engines run only on a CUDA GPU")
        device = HostDevice() if place == "host" else _cuda_device()
        try:
            stream, index = device.stream(), device.index  # HostDevice: stream 0, index None
            engine = tmp_path / f"e{caps.engine_suffix}"
            engine.write_bytes(backend.build(graph[0], backend.build_options(), backend.device_arch(index))[0])
            loaded = backend.load(engine, LoadOptions(index, stream if index is not None else None,
                                                      weights_dir=graph[0].parent))
            session = HostBoundSession(loaded, device) if place == "host" else loaded
            feeds = _feeds(graph[1])
            got = _run_bound(session, device, stream, feeds)
        finally:
            device.close()
        _assert_matches_reference(got, graph, feeds)

    def test_missing_package_names_it(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        module, package = _MODULES[name]
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
        with pytest.raises(MissingPackageError, match=f"pip install {package}"):
            get_backend(name).version()


def _cuda_device():
    from trt_distri.runtime.cuda import CudaDevice

    return CudaDevice(0)


def _run_bound(session, device, stream: int, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Bind every input and output to memory of `device`, upload `feeds`, run_async on `stream`, download."""
    ptrs = {t.name: device.alloc(nbytes(t.shape, t.dtype)) for t in session.inputs + session.outputs}
    for name, ptr in ptrs.items():
        session.bind(name, ptr)
    for t in session.inputs:
        device.upload(ptrs[t.name], feeds[t.name].astype(t.dtype), stream)
    session.run_async(stream)
    device.synchronize(stream)
    return {t.name: device.download(ptrs[t.name], t.shape, t.dtype, stream) for t in session.outputs}


def _assert_matches_reference(got: dict[str, np.ndarray], graph: tuple[Path, str],
                              feeds: dict[str, np.ndarray]) -> None:
    want = ort.InferenceSession(str(graph[0]), providers=["CPUExecutionProvider"]).run(None, feeds)
    for spec, ref in zip(_segment(graph[1])["outputs"], want):
        assert got[spec["name"]].dtype == ref.dtype
        np.testing.assert_allclose(got[spec["name"]], ref, rtol=2e-2, atol=2e-2)


def test_every_backend_is_listed() -> None:
    assert set(_MODULES) == set(BACKENDS) and "ort" in available_backends()


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        get_backend("tensorrt")


@pytest.mark.parametrize("host_bound", [False, True], ids=["session", "host-bound"])
def test_session_checks_feeds_and_bindings(graph: tuple[Path, str], tmp_path: Path, host_bound: bool) -> None:
    backend = get_backend("ort")
    engine = tmp_path / "e.onnx"
    engine.write_bytes(backend.build(graph[0], backend.build_options())[0])
    session = backend.load(engine, LoadOptions(None, weights_dir=graph[0].parent))
    if host_bound:
        session = HostBoundSession(session, HostDevice())
    with pytest.raises(ConfigError, match="exactly the session's inputs"):
        session.run_host({"sample": np.zeros((B, 32, H, W), np.float32)})
    with pytest.raises(ConfigError, match="no such tensor"):
        session.bind("nope", 0)
    with pytest.raises(ConfigError, match="unbound"):
        session.run_async(0)


# ---- sessions that replay CUDA graphs: one contract for every backend that `supports_cuda_graph` ---------------
def _ort_graph_session(cuda_graph: bool):
    """ONNX Runtime's session on a stand-in InferenceSession (ORT captures inside its own run)."""
    from types import SimpleNamespace

    from trt_distri.engines.onnxruntime_backend import OrtSession

    arg = lambda name: SimpleNamespace(name=name, shape=[4], type="tensor(float)")  # noqa: E731

    class Binding:
        def bind_input(self, *args) -> None:
            pass

        bind_output = bind_input

    inference = SimpleNamespace(get_inputs=lambda: [arg("x")], get_outputs=lambda: [arg("y")],
                                io_binding=Binding, run_with_iobinding=lambda binding, options: None)
    return OrtSession(inference, 0, 5, cuda_graph)


def _trt_graph_session(cuda_graph: bool):
    """TensorRT's session on the recording stand-in (tests/engines/trt_standin.py)."""
    from trt_distri.engines.trt_memory import ContextMemory
    from trt_distri.engines.trt_session import TensorRTSession

    from trt_standin import FakeEngine, Log, fake_cudart, fake_trt

    log = Log()
    trt, rt = fake_trt(log), fake_cudart(log)
    return TensorRTSession(trt, FakeEngine(trt, "e", 256), 0, rt, ContextMemory(rt, 0), cuda_graph)


@pytest.mark.parametrize("make", [_ort_graph_session, _trt_graph_session], ids=["ort", "trt-standin"])
class TestGraphReplayContract:
    def _bound(self, make, cuda_graph: bool):
        session = make(cuda_graph)
        session.bind("x", 0x1000)
        session.bind("y", 0x2000)
        return session

    def test_before_the_first_run_bindings_may_move(self, make) -> None:
        session = self._bound(make, True)
        session.bind("x", 0x3000)
        session.run_async(5)
        session.run_async(5)

    def test_after_the_first_run_a_moved_tensor_is_refused(self, make) -> None:
        session = self._bound(make, True)
        session.run_async(5)
        session.bind("x", 0x1000)  # the same place is fine
        session.run_async(5)
        with pytest.raises(ConfigError, match=r"'x' moved after its CUDA graph was captured.*0x1000, got 0x3000"
                                              r".*--no-cuda-graph"):
            session.bind("x", 0x3000)
            session.run_async(5)

    def test_without_graphs_a_moved_tensor_is_rebound(self, make) -> None:
        session = self._bound(make, False)
        session.run_async(5)
        session.bind("x", 0x3000)
        session.run_async(5)

    def test_run_async_needs_every_tensor_bound(self, make) -> None:
        session = make(True)
        session.bind("x", 0x1000)
        with pytest.raises(ConfigError, match=r"unbound: \['y'\]"):
            session.run_async(5)
