"""A CUDA device through cuda-python's runtime bindings, with the interface of runtime.host.HostDevice.

Pointers and streams are plain ints everywhere else in the runtime (sessions bind ints, NCCL takes ints); this
module wraps them into cuda-python's handle types at the call. Every call's status is checked (trt_distri.cudart).
"""
from __future__ import annotations

import os

import numpy as np

from trt_distri import cudart
from trt_distri.errors import ConfigError

MEMORY_CAP_ENV = "TRT_DISTRI_DEVICE_MEMORY_CAP_GIB"


class CudaDevice:
    kind = "cuda"

    def __init__(self, index: int) -> None:
        self.rt = cudart.runtime()
        self.index = index
        self._check(self.rt.cudaSetDevice(index), "cudaSetDevice")
        self._allocs: list[int] = []
        self._events: list[object] = []
        self._streams: list[object] = []
        self._cap()

    def _check(self, result, what: str):
        return cudart.check(result, f"{what} on GPU {self.index}")

    def _stream(self, stream: int):
        return self.rt.cudaStream_t(int(stream))

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(int(nbytes), 256)), f"cudaMalloc({nbytes} bytes)"))
        self._allocs.append(ptr)
        return ptr

    def free(self, ptr: int) -> None:
        if ptr in self._allocs:
            self._allocs.remove(ptr)
            self._check(self.rt.cudaFree(ptr), "cudaFree")

    def copy(self, dst: int, src: int, nbytes: int, stream: int = 0) -> None:
        if nbytes:
            kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
            self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream(stream)), "cudaMemcpyAsync")

    def memset(self, ptr: int, value: int, nbytes: int, stream: int = 0) -> None:
        if nbytes:
            self._check(self.rt.cudaMemsetAsync(ptr, value, nbytes, self._stream(stream)), "cudaMemsetAsync")

    def upload(self, ptr: int, array: np.ndarray, stream: int = 0) -> None:
        """Host -> device; waits for the copy so that `array` may be freed by the caller."""
        array = np.ascontiguousarray(array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self._stream(stream)),
                    "cudaMemcpyAsync H2D")
        self.synchronize(stream)

    def download(self, ptr: int, shape, dtype, stream: int = 0) -> np.ndarray:
        out = np.empty(shape, dtype)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(out.ctypes.data, ptr, out.nbytes, kind, self._stream(stream)),
                    "cudaMemcpyAsync D2H")
        self.synchronize(stream)
        return out

    def stream(self) -> int:
        s = self._check(self.rt.cudaStreamCreateWithFlags(self.rt.cudaStreamNonBlocking), "cudaStreamCreate")
        self._streams.append(s)
        return int(s)

    def destroy_stream(self, stream: int) -> None:
        for s in self._streams:
            if int(s) == int(stream):
                self._streams.remove(s)
                self._check(self.rt.cudaStreamDestroy(s), "cudaStreamDestroy")
                return

    def record(self, stream: int):
        event = self._check(self.rt.cudaEventCreate(), "cudaEventCreate")
        self._events.append(event)
        self._check(self.rt.cudaEventRecord(event, self._stream(stream)), "cudaEventRecord")
        return event

    def wait(self, stream: int, event) -> None:
        self._check(self.rt.cudaStreamWaitEvent(self._stream(stream), event, 0), "cudaStreamWaitEvent")

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(self._stream(stream)), "cudaStreamSynchronize")

    def elapsed_ms(self, start, end) -> float:
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def memory_used(self) -> int:
        """Bytes in use on the whole device (every process; nvidia-smi's memory.used), less the cap's ballast."""
        free, total = self._check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        return int(total) - int(free) - self._ballast_bytes

    def _cap(self) -> None:
        """TRT_DISTRI_DEVICE_MEMORY_CAP_GIB=X: take all but X GiB of the device at once and hold it, so that a run
        on a larger GPU fails where one on an X GiB GPU would ("fits in 80 GB", shown on a 141 GB card)."""
        self._ballast, self._ballast_bytes = None, 0
        cap = os.environ.get(MEMORY_CAP_ENV)
        if not cap:
            return
        try:
            cap_bytes = int(float(cap) * 2**30)
        except ValueError:
            raise ConfigError(f"{MEMORY_CAP_ENV} is not a number of GiB. Note: expected e.g. 80, got {cap!r}. "
                              f"Fix: set it to the memory of the GPU to emulate, or unset it") from None
        free, total = self._check(self.rt.cudaMemGetInfo(), "cudaMemGetInfo")
        ballast = int(total) - cap_bytes
        if ballast > 0:
            self._ballast = self._check(self.rt.cudaMalloc(ballast), f"cudaMalloc(ballast {ballast} bytes)")
            self._ballast_bytes = ballast

    def release_events(self) -> None:
        for event in self._events:
            self.rt.cudaEventDestroy(event)
        self._events.clear()

    def close(self) -> None:
        """Free every allocation, stream and event still held (idempotent); errors are ignored: this also runs
        after a failure."""
        self.release_events()
        for ptr in self._allocs:
            self.rt.cudaFree(ptr)
        self._allocs.clear()
        if self._ballast is not None:
            self.rt.cudaFree(self._ballast)
            self._ballast, self._ballast_bytes = None, 0
        for stream in self._streams:
            self.rt.cudaStreamDestroy(stream)
        self._streams.clear()
