"""On a GPU with TensorRT: bound sessions on the shared context memory, with and without CUDA graphs, give ONNX
Runtime's outputs. Not run here (no GPU); the lead runs it: `pytest -m "gpu and tensorrt" tests/engines/test_trt_gpu.py`
(`TRT_DISTRI_TEST_TRT_KIND=trt-rtx` for TensorRT-RTX on a GPU it supports)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from trt_distri.engines.backend import LoadOptions, get_backend
from trt_distri.engines.trt_memory import check, cudart

from test_backend_contract import _feeds
from test_trt_build import _tiny_graph

KIND = os.environ.get("TRT_DISTRI_TEST_TRT_KIND", "trt")
pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]


def _run_bound(session, feeds: dict[str, np.ndarray], runs: int) -> dict[str, np.ndarray]:
    """Bind every tensor to device buffers once, run `runs` times on one stream, read the outputs back."""
    rt = cudart()
    stream = int(check(rt.cudaStreamCreate(), "cudaStreamCreate"))
    arrays = {**feeds, **{t.name: np.empty(t.shape, t.dtype) for t in session.outputs}}
    ptrs = {n: int(check(rt.cudaMalloc(a.nbytes), "cudaMalloc")) for n, a in arrays.items()}
    kinds = rt.cudaMemcpyKind
    for name, array in feeds.items():
        check(rt.cudaMemcpy(ptrs[name], array.ctypes.data, array.nbytes, kinds.cudaMemcpyHostToDevice), "H2D")
    for name, ptr in ptrs.items():
        session.bind(name, ptr)
    for _ in range(runs):
        session.run_async(stream)
    check(rt.cudaStreamSynchronize(rt.cudaStream_t(stream)), "sync")
    out = {t.name: arrays[t.name] for t in session.outputs}
    for name, array in out.items():
        check(rt.cudaMemcpy(array.ctypes.data, ptrs[name], array.nbytes, kinds.cudaMemcpyDeviceToHost), "D2H")
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_bound_sessions_with_and_without_graphs_match_onnxruntime(tmp_path: Path, dtype) -> None:
    backend = get_backend(KIND)
    graph = _tiny_graph(tmp_path / "g.onnx", dtype)
    engine = tmp_path / "g.engine"
    engine.write_bytes(backend.build(graph, backend.build_options())[0])
    feeds = _feeds(np.dtype(dtype).name)
    want = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, feeds)
    plain = backend.load(engine, LoadOptions(0))
    graphed = backend.load(engine, LoadOptions(0, cuda_graph=True))
    assert plain.memory is graphed.memory  # one block for both contexts
    for got in (_run_bound(plain, feeds, 2), _run_bound(graphed, feeds, 3), plain.run_host(feeds)):
        for ref, name in zip(want, ("kv.attn1", "attn1.out")):
            np.testing.assert_allclose(got[name], ref, rtol=2e-2, atol=2e-2)
