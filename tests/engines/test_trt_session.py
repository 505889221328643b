"""engines/trt_session.py and trt_memory.py against a recording stand-in of TensorRT and the CUDA runtime: contexts
created without memory, one block sized to the largest need, addresses set once, capture and replay order."""
from __future__ import annotations

import types

import pytest

from trt_distri.engines import tensorrt_backend, trt_memory
from trt_distri.engines.backend import LoadOptions
from trt_distri.engines.trt_memory import ContextMemory
from trt_distri.engines.trt_session import TensorRTSession
from trt_distri.errors import EngineRunError

from trt_standin import FakeEngine, Log, fake_cudart, fake_trt

STREAM = 5


@pytest.fixture
def standin():
    log = Log()
    return log, fake_trt(log), fake_cudart(log)


def _session(standin, name="e", memory_bytes=1000, memory=None, cuda_graph=False) -> TensorRTSession:
    log, trt, rt = standin
    session = TensorRTSession(trt, FakeEngine(trt, name, memory_bytes), 0, rt, memory, cuda_graph)
    session.bind("x", 0x1000)
    session.bind("y", 0x2000)
    return session


def test_contexts_share_one_block_sized_to_the_largest_engine(standin) -> None:
    log, trt, rt = standin
    memory = ContextMemory(rt, 0)
    sessions = [_session(standin, n, size, memory) for n, size in (("a", 1000), ("b", 3000), ("c", 2000))]
    assert [c[2] for c in log.named("create_execution_context")] == ["USER_MANAGED"] * 3
    for session in sessions:
        session.run_async(STREAM)
    (block, size), = rt.live.items()
    assert size == 3000  # the largest need, once: not 6000 for three contexts
    assert log.named("set_device_memory") == [("set_device_memory", n, block, 3000) for n in "abc"]
    grows = [c[0] for c in log.named("cudaMalloc", "cudaFree")]
    assert grows == ["cudaMalloc", "cudaFree", "cudaMalloc"]  # grown while loading; the old block went first
    for session in sessions:
        session.run_async(STREAM)
    assert len(log.named("set_device_memory")) == 3  # handed over once per context
    for session in sessions:
        session.close()
    assert rt.live == {}  # the owner freed its block with the last context


def test_a_transient_session_keeps_its_own_context_memory(standin) -> None:
    log, _, _ = standin
    _session(standin, memory=None).run_async(STREAM)
    assert [c[2] for c in log.named("create_execution_context")] == ["STATIC"]
    assert not log.named("set_device_memory", "cudaMalloc")


def test_addresses_are_set_once_at_bind_time(standin) -> None:
    log, _, _ = standin
    session = _session(standin)
    for _ in range(3):
        session.run_async(STREAM)
    calls = [c[0] for c in log.named("set_tensor_address", "execute_async_v3")]
    assert calls == ["set_tensor_address"] * 2 + ["execute_async_v3"] * 3


def test_cuda_graph_first_run_plain_then_capture_then_replay(standin) -> None:
    log, _, rt = standin
    session = _session(standin, memory=ContextMemory(rt, 0), cuda_graph=True)
    for _ in range(4):
        session.run_async(STREAM)
    order = [c[0] for c in log.calls if c[0] not in ("cudaSetDevice", "cudaMalloc", "create_execution_context",
                                                      "set_tensor_address")]
    assert order == ["set_device_memory", "execute_async_v3",  # run 1: plain, TensorRT's lazy setup
                     "cudaStreamBeginCapture", "execute_async_v3", "cudaStreamEndCapture", "cudaGraphInstantiate",
                     "cudaGraphLaunch",  # run 2: captured, then launched
                     "cudaGraphLaunch", "cudaGraphLaunch"]  # runs 3, 4: replayed
    assert log.named("cudaStreamBeginCapture")[0][1:] == (STREAM, "thread-local")
    session.close()
    assert [c[0] for c in log.calls[-3:]] == ["cudaGraphExecDestroy", "cudaGraphDestroy", "cudaFree"]


def test_a_grown_block_reaches_every_context_and_its_graph_is_captured_again(standin) -> None:
    log, _, rt = standin
    memory = ContextMemory(rt, 0)
    first = _session(standin, "a", 1000, memory, cuda_graph=True)
    first.run_async(STREAM)
    first.run_async(STREAM)  # captured with the 1000-byte block
    _session(standin, "b", 5000, memory)  # loaded later, needs more: the block is replaced
    first.run_async(STREAM)
    (block, size), = rt.live.items()
    assert size == 5000 and log.named("set_device_memory")[-1] == ("set_device_memory", "a", block, 5000)
    assert log.named("cudaDeviceSynchronize")  # nothing may still read the old block when it is freed
    assert [c[0] for c in log.calls[-8:]] == ["set_device_memory", "cudaGraphExecDestroy", "cudaGraphDestroy",
                                              "cudaStreamBeginCapture", "execute_async_v3", "cudaStreamEndCapture",
                                              "cudaGraphInstantiate", "cudaGraphLaunch"]


def test_run_failures_are_run_errors(standin) -> None:
    session = _session(standin, cuda_graph=True)
    session.context.execute_async_v3 = lambda stream: False
    with pytest.raises(EngineRunError, match="execute_async_v3 returned False"):
        session.run_async(STREAM)
    capture = _session(standin, cuda_graph=True)
    capture.run_async(STREAM)
    capture.context.capturable = False
    with pytest.raises(EngineRunError, match="cannot be captured.*--no-cuda-graph"):
        capture.run_async(STREAM)


def test_run_host_uses_its_own_buffers_and_restores_the_bindings(standin) -> None:
    import numpy as np

    log, _, rt = standin
    session = _session(standin)
    out = session.run_host({"x": np.ones(4, np.float32)})
    assert out["y"].shape == (4,) and rt.live == {}  # its buffers are freed again
    restored = [c[2:] for c in log.named("set_tensor_address")[-2:]]
    assert sorted(restored) == [("x", 0x1000), ("y", 0x2000)]


def _fake_backend(monkeypatch, standin) -> tensorrt_backend.TensorRTBackend:
    log, trt, rt = standin

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, data: bytes) -> FakeEngine:
            return FakeEngine(trt, data.decode(), int(data.decode()[1:]))

    trt.Runtime, trt.ILogger = Runtime, type("ILogger", (), {"__init__": lambda self: None})
    caps = types.SimpleNamespace(builds_without_gpu=True, portable_engines=True, label="TensorRT", version="10")
    monkeypatch.setattr(tensorrt_backend, "import_trt", lambda kind: trt)
    monkeypatch.setattr(tensorrt_backend, "cudart", lambda: rt)
    monkeypatch.setattr(tensorrt_backend.TensorRTBackend, "_caps", lambda self: caps)
    monkeypatch.setattr(trt_memory, "_SHARED", {})
    return tensorrt_backend.TensorRTBackend()


def test_loaded_sessions_of_a_device_share_its_block_and_transient_ones_do_not(monkeypatch, standin, tmp_path):
    log, _, rt = standin
    backend = _fake_backend(monkeypatch, standin)
    paths = []
    for name in ("a100", "b300", "c900"):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(name.encode())
    shared = [backend.load(p, LoadOptions(0, cuda_graph=True)) for p in paths[:2]]
    transient = backend.load(paths[2], LoadOptions(0, transient=True))
    assert shared[0].memory is shared[1].memory and transient.memory is None
    assert list(rt.live.values()) == [300]
    assert [c[1:] for c in log.named("create_execution_context")] == [("a100", "USER_MANAGED"),
                                                                       ("b300", "USER_MANAGED"), ("c900", "STATIC")]
    assert backend.capabilities().supports_cuda_graph
