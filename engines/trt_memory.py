"""One device-memory block per GPU for every TensorRT execution context of a process (a rank).

A rank runs about 140 engines, one after another on one stream. A context created the default way allocates its
own scratch memory (`ExecutionContextAllocationStrategy.STATIC`), so the rank would hold the sum of 140 peaks.
Contexts are instead created without memory (`USER_MANAGED`) and all share one block sized to the largest
`ICudaEngine.device_memory_size_v2` among them (TensorRT's demo/Diffusion does the same): the runs never overlap,
so the block only needs the largest need. `ContextMemory` owns that block: it grows it while engines load (the
old block is freed first, so the peak stays one block), hands it to each context before it runs, and frees it
when the last context using it is gone. A block that grew after a context received the old one carries a new
`generation`: the context takes the new block before its next run (and a captured CUDA graph is captured again).

The CUDA runtime comes from cuda-python through trt_distri.cudart, imported on first use; tests pass a stand-in.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from trt_distri import cudart as cuda
from trt_distri.errors import EngineRunError

__all__ = ["Block", "ContextMemory", "check", "cudart", "engine_memory_size", "shared_context_memory"]


def cudart() -> ModuleType:
    """cuda-python's CUDA runtime bindings (trt_distri.cudart)."""
    return cuda.runtime("running TensorRT engines")


def check(result: Any, what: str) -> Any:
    """trt_distri.cudart.check for TensorRT: a failed call raises EngineRunError naming it."""
    return cuda.check(result, what, "check the GPU with nvidia-smi; run with -v for TensorRT's log", EngineRunError)


def engine_memory_size(engine: Any) -> int:
    """Scratch memory one execution context of `engine` needs (TensorRT >= 10.1: `device_memory_size_v2`)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(engine.device_memory_size if size is None else size)


@dataclass(frozen=True)
class Block:
    """The shared block as handed out: address, size and the generation it belongs to."""

    ptr: int
    size: int
    generation: int


class ContextMemory:
    """The block shared by the execution contexts of one GPU; see the module docstring."""

    def __init__(self, rt: ModuleType, device: int) -> None:
        self.rt, self.device = rt, device
        self._lock = threading.Lock()  # engines of a rank load from several threads
        self._users = 0
        self._block = Block(0, 0, 0)

    def claim(self, size: int) -> None:
        """A context that needs `size` bytes will use the block: grow it now if it is too small."""
        with self._lock:
            self._users += 1
            if size > self._block.size:
                self._replace(size)

    def block(self) -> Block:
        with self._lock:
            return self._block

    def release(self) -> None:
        """A context is gone; the last one frees the block."""
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._block.ptr:
                self._free()
                self._block = Block(0, 0, self._block.generation + 1)

    def _replace(self, size: int) -> None:
        generation = self._block.generation + 1
        if self._block.ptr:
            check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")
            check(self.rt.cudaDeviceSynchronize(), "cudaDeviceSynchronize")  # no run may still read the old block
            self._free()
        check(self.rt.cudaSetDevice(self.device), "cudaSetDevice")
        ptr = int(check(self.rt.cudaMalloc(size), f"cudaMalloc({size} bytes) for TensorRT's shared context memory"))
        self._block = Block(ptr, size, generation)

    def _free(self) -> None:
        check(self.rt.cudaFree(self._block.ptr), "cudaFree")


_SHARED: dict[int, ContextMemory] = {}
_SHARED_LOCK = threading.Lock()


def shared_context_memory(device: int, rt: ModuleType | None = None) -> ContextMemory:
    """The one `ContextMemory` of `device` in this process (a rank is a process per GPU)."""
    with _SHARED_LOCK:
        if device not in _SHARED:
            _SHARED[device] = ContextMemory(rt or cudart(), device)
        return _SHARED[device]
