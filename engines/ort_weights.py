"""One copy of a work directory's weights per device, shared by every ONNX Runtime session of a rank.

Every graph of both graph sets refers to the same `weights.bin` (external data). Left to itself, each ORT session
loads the initializers it uses onto the device, so the warm-up and steady sets held two copies of the UNet (5.1 GB
each for SDXL in fp16). Instead the whole file goes once into one device allocation that this store owns, each
weight is an OrtValue viewing its bytes there, and every session receives it with
`SessionOptions.add_initializer`, which ORT uses in place when it already lives where the session plans it.
`add_initializer` refuses a buffer ORT owns itself (`ortvalue_from_numpy(..., "cuda")` copies into one; seen on an
H200 with ORT 1.31.1), so a CUDA weight is handed over as a DLPack tensor over the store's memory (ORT only views
it; the deleter does nothing); on the CPU the OrtValue views a private copy-on-write mapping of the file (pages
are copied only when written). `TRT_DISTRI_SHARE_WEIGHTS=0` turns sharing off (each session loads its own copy,
as before).

The store's memory is the weights every session reads, so `write` changes them in place for all of them (LoRA
adapters, engines/lora_apply.py); `base` reads the file's original bytes, which stay on the host.

The build records which external weights an engine reads (`engine_weights`, into the engine's metadata), so loading
needs neither onnx nor the graph to know what to hand each session. This module imports only numpy; ONNX Runtime
comes from the caller.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from trt_distri.cudart import check as cuda_check, runtime as cuda_runtime
from trt_distri.errors import CorruptEngineError, InternalError
from trt_distri.manifest import WeightRef

SHARE_ENV = "TRT_DISTRI_SHARE_WEIGHTS"


def sharing_enabled() -> bool:
    return os.environ.get(SHARE_ENV, "1") != "0"


def engine_weights(model: Any) -> list[WeightRef]:
    """The external initializers of an ONNX model proto (read at build time, where onnx is loaded)."""
    from onnx import TensorProto, helper

    refs = []
    for init in model.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).name
        refs.append(WeightRef(init.name, int(info.get("offset", 0)), int(info["length"]), dtype, tuple(init.dims)))
    return refs


class SharedWeights:
    """The weights of `path` (weights.bin) as OrtValues on `device` (None: host memory, a copy-on-write mapping of
    the file, so that `write` changes this process's view and never the file), each created once on first request. Thread-safe: a rank opens its sessions from several
    threads. The owner calls `close()` after its sessions are gone."""

    def __init__(self, ort: Any, path: Path, device: int | None) -> None:
        self.ort, self.path, self.device = ort, Path(path), device
        self._file = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._host = np.memmap(self.path, dtype=np.uint8, mode="c") if device is None else None
        self._values: dict[str, Any] = {}
        self._keep: list[Any] = []  # DLPack structures ORT's tensors point into
        self._lock = threading.Lock()
        self.bytes = 0
        self._block = _DeviceBlock(device, self._file) if device is not None else None

    def value(self, ref: WeightRef) -> Any:
        with self._lock:
            if ref.name not in self._values:
                self._values[ref.name] = self._upload(ref)
                self.bytes += ref.length
            return self._values[ref.name]

    def _upload(self, ref: WeightRef) -> Any:
        if ref.offset + ref.length > self._file.size:
            raise CorruptEngineError(f"{self.path} is too short for weight {ref.name!r}. Note: expected at least "
                                     f"{ref.offset + ref.length} bytes, got {self._file.size}. Fix: export the work "
                                     "directory again")
        if self.device is None:
            array = self._host[ref.offset:ref.offset + ref.length].view(ref.dtype).reshape(ref.shape)
            return self.ort.OrtValue.ortvalue_from_numpy(array)
        capsule, keep = _dlpack_capsule(self._block.ptr + ref.offset, self.device, ref.dtype, ref.shape)
        self._keep.append(keep)
        return self.ort.OrtValue.from_dlpack(capsule)

    def base(self, ref: WeightRef) -> np.ndarray:
        """The weight's original value, read from the file (read-only)."""
        return self._file[ref.offset:ref.offset + ref.length].view(ref.dtype).reshape(ref.shape)

    def write(self, ref: WeightRef, array: np.ndarray, stream: int | None = None) -> None:
        """Overwrite the weight that every session reads (on CUDA: a copy enqueued on `stream`; call `flush`
        before the host array is dropped or changed)."""
        data = np.ascontiguousarray(array, dtype=ref.dtype).reshape(-1).view(np.uint8)
        if data.size != ref.length:
            raise InternalError(f"weight {ref.name!r} takes {ref.length} bytes. Note: got {data.size}")
        if self._block is None:
            self._host[ref.offset:ref.offset + ref.length] = data
        else:
            self._block.upload(ref.offset, data, stream)

    def flush(self, stream: int | None = None) -> None:
        """Wait for the copies `write` enqueued on `stream`."""
        if self._block is not None:
            self._block.sync(stream)

    # ---- in-place updates on the device (engines/lora_device.py) ----
    def device_pointer(self, ref: WeightRef) -> int:
        return self._block.ptr + ref.offset

    def restore(self, ref: WeightRef, stream: int | None) -> None:
        """Enqueue a copy of the weight's original bytes over its device copy (from a pinned host copy of the file,
        made on first use and kept until `close`)."""
        self._block.restore(ref.offset, ref.length, stream)

    def allocate(self, nbytes: int) -> int:
        return self._block.allocate(nbytes)

    def release(self, ptr: int) -> None:
        self._block.release(ptr)

    def copy_to_device(self, ptr: int, array: np.ndarray, stream: int | None) -> None:
        self._block.copy(ptr, array, stream)

    def count(self) -> int:
        return len(self._values)

    def close(self) -> None:
        """Drop every weight; call after the sessions that read them are gone."""
        with self._lock:
            self._values.clear()
            self.bytes = 0
            if self._block is not None:
                self._block.free()


class _DeviceBlock:
    """The whole weights file in one device allocation (cuda-python's runtime), freed by `free` or at exit."""

    def __init__(self, device: int, data: np.ndarray) -> None:
        self.rt, self.ptr, self._pending = cuda_runtime("sharing ONNX Runtime weights on a GPU"), 0, []
        self.mirror, self._data = 0, data
        self._check(self.rt.cudaSetDevice(device), "cudaSetDevice")
        self.ptr = int(self._check(self.rt.cudaMalloc(max(data.size, 256)), f"cudaMalloc({data.size} bytes)"))
        step = 1 << 28
        for start in range(0, data.size, step):  # from the page cache, a chunk at a time
            chunk = np.ascontiguousarray(data[start:start + step])
            self._check(self.rt.cudaMemcpy(self.ptr + start, chunk.ctypes.data, chunk.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice), "cudaMemcpy weights")

    def upload(self, offset: int, data: np.ndarray, stream: int | None) -> None:
        self.copy(self.ptr + offset, data, stream)

    def copy(self, ptr: int, data: np.ndarray, stream: int | None) -> None:
        self._pending.append(data)  # the copy reads it until `sync`
        self._check(self.rt.cudaMemcpyAsync(ptr, data.ctypes.data, data.nbytes,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream or 0),
                    "cudaMemcpyAsync into the shared weights")

    def restore(self, offset: int, length: int, stream: int | None) -> None:
        if self.mirror == 0:
            self._pin(self._data)
        if self.mirror < 0:  # no page-locked copy: from the file's mapping (the driver stages it)
            self.copy(self.ptr + offset, self._data[offset:offset + length], stream)
            return
        self._check(self.rt.cudaMemcpyAsync(self.ptr + offset, self.mirror + offset, length,
                                            self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream or 0),
                    "cudaMemcpyAsync of original weights")

    def _pin(self, data: np.ndarray) -> None:
        """The file in page-locked host memory: restores run at PCIe speed and never wait for the host. Where the
        host cannot lock that much memory, restores read the file's mapping instead (slower; a warning says so)."""
        status, ptr = self.rt.cudaMallocHost(max(data.size, 256))
        if int(status) != 0:
            logging.getLogger(__name__).warning(
                "no page-locked host copy of the weights (%d bytes: %s); LoRA switches restore weights from the "
                "file's mapping, more slowly", data.size, status)
            self.mirror = -1
            return
        self.mirror = int(ptr)
        view = np.ctypeslib.as_array((ctypes.c_uint8 * data.size).from_address(self.mirror))
        step = 1 << 28
        for start in range(0, data.size, step):
            view[start:start + step] = data[start:start + step]

    def allocate(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 256)), f"cudaMalloc({nbytes} bytes) for LoRA factors"))

    def release(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def sync(self, stream: int | None) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream or 0), "cudaStreamSynchronize after writing weights")
        self._pending.clear()

    @staticmethod
    def _check(result, what: str):
        return cuda_check(result, f"{what} (loading the shared weights)",
                          f"free GPU memory, or set {SHARE_ENV}=0")

    def free(self) -> None:
        if self.ptr:
            self.rt.cudaFree(self.ptr)
            self.ptr = 0
        if self.mirror > 0:
            self.rt.cudaFreeHost(self.mirror)
        self.mirror = 0

    def __del__(self) -> None:
        self.free()


# ---- a DLPack tensor over memory this module owns (ORT's from_dlpack views it) -------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


_NO_DELETE = _DELETER(lambda _: None)  # the store owns the memory; module-level so it outlives every tensor
_KDL_CUDA = 2
_DL_CODES = {"f": 2, "i": 0, "u": 1, "b": 6}  # kDLFloat, kDLInt, kDLUInt, kDLBool
_CAPSULE_NEW = ctypes.pythonapi.PyCapsule_New
_CAPSULE_NEW.restype = ctypes.py_object
_CAPSULE_NEW.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def _dlpack_capsule(ptr: int, device: int, dtype: str, shape: tuple[int, ...]) -> tuple[object, tuple]:
    """A "dltensor" capsule for a contiguous CUDA tensor at `ptr`, and the structures to keep alive with it."""
    np_dtype = np.dtype(dtype)
    dims = (ctypes.c_int64 * max(len(shape), 1))(*shape)
    managed = _DLManagedTensor()
    managed.dl_tensor = _DLTensor(ptr, _DLDevice(_KDL_CUDA, device), len(shape),
                                  _DLDataType(_DL_CODES[np_dtype.kind], np_dtype.itemsize * 8, 1), dims, None, 0)
    managed.manager_ctx, managed.deleter = None, _NO_DELETE
    return _CAPSULE_NEW(ctypes.addressof(managed), b"dltensor", None), (managed, dims)
