"""A recording stand-in for the parts of the TensorRT runtime API and of cuda-python's CUDA runtime that
engines/trt_session.py and engines/trt_memory.py call. Every call is appended to one shared `log` as a tuple, in
order, so tests can check what was called, with what, and when; nothing runs. Names and signatures follow
TensorRT 10/11 (`create_execution_context(strategy)`, `set_device_memory(ptr, size)`, `set_tensor_address`,
`execute_async_v3`) and cuda-python (`(error, value)` tuples)."""
from __future__ import annotations

import enum
import types
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Log:
    calls: list[tuple] = field(default_factory=list)

    def add(self, *call) -> None:
        self.calls.append(call)

    def named(self, *names: str) -> list[tuple]:
        return [c for c in self.calls if c[0] in names]


class _Enum(enum.Enum):
    pass


def fake_trt(log: Log) -> types.SimpleNamespace:
    """The `tensorrt` module as the session code sees it."""
    strategy = _Enum("ExecutionContextAllocationStrategy", "STATIC ON_PROFILE_CHANGE USER_MANAGED")
    mode = _Enum("TensorIOMode", "NONE INPUT OUTPUT")
    dtype = _Enum("DataType", "FLOAT HALF")
    return types.SimpleNamespace(ExecutionContextAllocationStrategy=strategy, TensorIOMode=mode, DataType=dtype,
                                 nptype=lambda t: {"FLOAT": np.float32, "HALF": np.float16}[t.name], log=log)


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy) -> None:
        self.engine, self.strategy, self.log = engine, strategy, engine.log
        self.capturable = True

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.log.add("set_tensor_address", self.engine.name, name, ptr)
        return True

    def set_device_memory(self, ptr: int, size: int) -> None:
        self.log.add("set_device_memory", self.engine.name, ptr, size)

    def execute_async_v3(self, stream: int) -> bool:
        self.log.add("execute_async_v3", self.engine.name, stream)
        return True

    def is_stream_capturable(self, stream: int) -> bool:
        return self.capturable


class FakeEngine:
    """An engine with one fp32 input `x` (4 values) and one output `y`, needing `memory` bytes of scratch."""

    def __init__(self, trt, name: str, memory: int) -> None:
        self.trt, self.name, self.device_memory_size_v2, self.log = trt, name, memory, trt.log
        self.io = [("x", trt.TensorIOMode.INPUT), ("y", trt.TensorIOMode.OUTPUT)]

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return self.io[i][0]

    def get_tensor_shape(self, name: str) -> tuple:
        return (4,)

    def get_tensor_dtype(self, name: str):
        return self.trt.DataType.FLOAT

    def get_tensor_mode(self, name: str):
        return dict(self.io)[name]

    def create_execution_context(self, strategy=None) -> FakeContext:
        strategy = strategy or self.trt.ExecutionContextAllocationStrategy.STATIC
        self.log.add("create_execution_context", self.name, strategy.name)
        return FakeContext(self, strategy)


def fake_cudart(log: Log) -> types.SimpleNamespace:
    """cuda-python's runtime: calls return `(0, value)`; allocations are tracked in `live`."""
    rt = types.SimpleNamespace(live={}, next_ptr=0x10000, count=0)

    def call(name, result=None):
        def f(*args):
            log.add(name, *args)
            return (0,) if result is None else (0, result(*args))
        return f

    def malloc(size):
        ptr, rt.next_ptr = rt.next_ptr, rt.next_ptr + ((size + 255) // 256 + 1) * 256
        rt.live[ptr] = size
        return ptr

    def free(ptr):
        log.add("cudaFree", ptr)
        del rt.live[ptr]
        return (0,)

    def made(kind):
        def f(*args):
            rt.count += 1
            return f"{kind}{rt.count}"
        return f

    rt.cudaMalloc = call("cudaMalloc", malloc)
    rt.cudaFree = free
    for name in ("cudaSetDevice", "cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaStreamDestroy",
                 "cudaMemcpy", "cudaStreamBeginCapture", "cudaGraphLaunch", "cudaGraphExecDestroy",
                 "cudaGraphDestroy"):
        setattr(rt, name, call(name))
    rt.cudaStreamCreate = call("cudaStreamCreate", lambda: 77)
    rt.cudaStreamEndCapture = call("cudaStreamEndCapture", made("graph"))
    rt.cudaGraphInstantiate = call("cudaGraphInstantiate", made("exec"))
    rt.cudaStream_t = int
    rt.cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeThreadLocal="thread-local")
    rt.cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice="h2d", cudaMemcpyDeviceToHost="d2h")
    return rt
