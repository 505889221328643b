"""One contract, run against every backend whose package imports here (ONNX Runtime always; TensorRT-RTX on CI;
TensorRT where `tensorrt` imports). Loading needs a GPU except where `runs_without_gpu`: those tests skip with the
reason elsewhere."""
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
from trt_distri.manifest import Segment, decode_record

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
        got = session.run_host(feeds)
        want = ort.InferenceSession(str(graph[0]), providers=["CPUExecutionProvider"]).run(None, feeds)
        for spec, ref in zip(_segment(graph[1])["outputs"], want):
            assert got[spec["name"]].dtype == ref.dtype
            np.testing.assert_allclose(got[spec["name"]], ref, rtol=2e-2, atol=2e-2)

    def test_missing_package_names_it(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        module, package = _MODULES[name]
        monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
        with pytest.raises(MissingPackageError, match=f"pip install {package}"):
            get_backend(name).version()


def test_every_backend_is_listed() -> None:
    assert set(_MODULES) == set(BACKENDS) and "ort" in available_backends()


def test_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        get_backend("tensorrt")


def test_session_checks_feeds_and_bindings(graph: tuple[Path, str], tmp_path: Path) -> None:
    backend = get_backend("ort")
    engine = tmp_path / "e.onnx"
    engine.write_bytes(backend.build(graph[0], backend.build_options())[0])
    session = backend.load(engine, LoadOptions(None, weights_dir=graph[0].parent))
    with pytest.raises(ConfigError, match="exactly the session's inputs"):
        session.run_host({"sample": np.zeros((B, 32, H, W), np.float32)})
    with pytest.raises(ConfigError, match="no such tensor"):
        session.bind("nope", 0)
    with pytest.raises(ConfigError, match="unbound"):
        session.run_async(0)
