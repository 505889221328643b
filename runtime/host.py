"""Host memory behind the same interface as a CUDA device, so one executor runs on CPUs and GPUs.

Pointers are plain addresses (int) on both: here, addresses of numpy buffers this object keeps alive. Streams and
events are no-ops because host work is done in program order.
"""
from __future__ import annotations

import ctypes

import numpy as np

from trt_distri.engines.backend import Session


class HostDevice:
    kind = "cpu"
    index = None

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    def memory_used(self) -> int:
        """Bytes of the buffers this stand-in holds (a GPU reports its device-wide use instead)."""
        return sum(b.nbytes for b in self._buffers)

    def alloc(self, nbytes: int) -> int:
        buf = np.zeros(max(int(nbytes), 1), np.uint8)
        self._buffers.append(buf)
        return buf.ctypes.data

    def free(self, ptr: int) -> None:
        self._buffers = [b for b in self._buffers if b.ctypes.data != ptr]

    def view(self, ptr: int, shape, dtype) -> np.ndarray:
        """A numpy array over `ptr` (host only): sessions read and write through it without copies."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def copy(self, dst: int, src: int, nbytes: int, stream: int = 0) -> None:
        if nbytes:
            ctypes.memmove(dst, src, nbytes)

    def memset(self, ptr: int, value: int, nbytes: int, stream: int = 0) -> None:
        if nbytes:
            ctypes.memset(ptr, value, nbytes)

    def upload(self, ptr: int, array: np.ndarray, stream: int = 0) -> None:
        array = np.ascontiguousarray(array)
        ctypes.memmove(ptr, array.ctypes.data, array.nbytes)

    def download(self, ptr: int, shape, dtype, stream: int = 0) -> np.ndarray:
        return self.view(ptr, shape, dtype).copy()

    def stream(self) -> int:
        return 0

    def destroy_stream(self, stream: int) -> None:
        return None

    def record(self, stream: int) -> None:
        return None

    def wait(self, stream: int, event) -> None:
        return None

    def synchronize(self, stream: int) -> None:
        return None

    def elapsed_ms(self, start, end) -> float | None:
        return None

    def release_events(self) -> None:
        return None

    def close(self) -> None:
        self._buffers.clear()


class HostBoundSession(Session):
    """A CPU session behind the bind/run_async half of the Session contract: bound host addresses (HostDevice's)
    are read and written in place; names are checked as every backend's session checks them."""

    def __init__(self, session: Session, device: HostDevice) -> None:
        super().__init__(session.inputs, session.outputs)
        self.session, self.device = session, device

    def _run_host_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.session.run_host(feeds)

    def _run_async_impl(self, stream: int) -> None:
        feeds = {t.name: self.device.view(self._bound[t.name], t.shape, t.dtype) for t in self.inputs}
        outs = self.session.run_host(feeds)
        for t in self.outputs:
            self.device.view(self._bound[t.name], t.shape, t.dtype)[...] = outs[t.name]
