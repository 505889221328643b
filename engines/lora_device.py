"""LoRA updates computed where the weights live: on the GPU, in place, one cuBLAS GEMM per (weight, adapter).

The host path (engines/lora_apply.StoreTarget) computes W = base + sum(scale * up @ down) in float32 on the CPU and
uploads every changed weight: for an SDXL adapter on every attention and feed-forward layer that is 2.2 G values,
9-15 s per switch on an H200 host (lease E, docs/benchmarks.md). Here instead, for a store on a GPU:
1. every weight to change is restored from a pinned host copy of the weights file (made on the first switch, then
   kept; one copy at PCIe speed, no arithmetic on the host);
2. each adapter's factors (a few MB per layer pair) are uploaded once per switch, and
   `W += scale * up @ down` runs as cublasGemmEx with beta = 1 (float32 accumulation, W's own dtype), so the
   update never leaves the device.
With one adapter the result equals the host path's single rounding; with several, W is rounded once per adapter.
Clearing restores the base bytes, bit for bit. All work is enqueued on the rank's compute stream between
generations and waited for before `apply` returns.

`gemm_plan` holds the layout arithmetic (row-major weights, column-major cuBLAS) and is tested on the CPU against
the host path through `HostBlas`, a numpy stand-in with cuBLAS's semantics over a host buffer.
"""
from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from trt_distri.errors import CudaError, MissingPackageError
from trt_distri.lora import LowRank
from trt_distri.manifest import WeightRef
from trt_distri.native import load_first, wheel_libraries

CUBLAS_ENV = "TRT_DISTRI_CUBLAS_LIBRARY"
OP_N, OP_T = 0, 1
_CUDA_TYPES = {"float16": 2, "float32": 0, "bfloat16": 14}  # cudaDataType_t
_COMPUTE_32F, _GEMM_DEFAULT = 68, -1


@dataclass(frozen=True)
class Gemm:
    """cublasGemmEx's shape arguments for `W += alpha * up @ down` in W's stored layout (column-major view)."""

    trans_a: int
    trans_b: int
    m: int
    n: int
    k: int
    a_is_up: bool  # A is the up factor (else the down factor)
    lda: int
    ldb: int
    ldc: int


def gemm_plan(shape: Sequence[int], rank: int) -> Gemm:
    """The GEMM that adds up (out, r) @ down (r, in*kh*kw) to a weight stored as `shape`: a linear weight is stored
    (in, out) (ONNX MatMul), anything else (out, in[, kh, kw]) (LowRank.delta's layouts)."""
    if len(shape) == 2:  # W (in, out) row-major = W^T (out x in) column-major = up @ down
        inp, out = shape
        return Gemm(OP_T, OP_T, out, inp, rank, True, rank, inp, out)
    out, rest = shape[0], int(np.prod(shape[1:]))  # W (out, rest) row-major = (rest x out) column-major
    return Gemm(OP_N, OP_N, rest, out, rank, False, rest, rank, rest)


class DeviceStoreTarget:
    """A shared weight store on a GPU, changed in place by `blas` GEMMs on `stream` (engines/lora_apply's target
    interface: `apply(patcher, names, adapters)`)."""

    def __init__(self, store, stream: int | None, blas) -> None:
        self.store, self.stream, self.blas = store, stream, blas

    def apply(self, patcher, names: Sequence[str], adapters) -> None:
        work = [(patcher.index[n], [(a.layers[n], s) for a, s in adapters if n in a.layers and s != 0.0])
                for n in names]
        staged = _Staging(self.store, [(ref, parts) for ref, parts in work if parts])
        try:
            for ref, _ in work:
                self.store.restore(ref, self.stream)
            staged.upload(self.stream)
            for ref, parts in work:
                for i, (low_rank, scale) in enumerate(parts):
                    up, down = staged.pointers(ref.name, i)
                    self.blas.gemm_accumulate(gemm_plan(ref.shape, low_rank.rank), ref.dtype,
                                              scale * low_rank.scale, up, down, self.store.device_pointer(ref),
                                              self.stream)
            self.store.flush(self.stream)
        finally:
            staged.free()

    def close(self) -> None:
        self.blas.close()


class _Staging:
    """Every factor of one switch in one device buffer of the store's allocator, freed after the switch."""

    def __init__(self, store, work: Sequence[tuple[WeightRef, Sequence[tuple[LowRank, float]]]]) -> None:
        self.store, self.host, self.offsets, self.ptr = store, [], {}, 0
        size = 0
        for ref, parts in work:
            for i, (low_rank, _) in enumerate(parts):
                up, down = low_rank.matrices(ref.dtype)  # in the weight's dtype
                self.offsets[(ref.name, i)] = (size, size + _aligned(up.nbytes))
                self.host += [(size, up), (size + _aligned(up.nbytes), down)]
                size += _aligned(up.nbytes) + _aligned(down.nbytes)
        self.size = size

    def upload(self, stream: int | None) -> None:
        if not self.size:
            return
        self.ptr = self.store.allocate(self.size)
        for offset, array in self.host:
            self.store.copy_to_device(self.ptr + offset, array, stream)

    def pointers(self, name: str, index: int) -> tuple[int, int]:
        up, down = self.offsets[(name, index)]
        return self.ptr + up, self.ptr + down

    def free(self) -> None:
        if self.ptr:
            self.store.release(self.ptr)
            self.ptr = 0


def _aligned(nbytes: int) -> int:
    return (nbytes + 255) // 256 * 256


class HostBlas:
    """cuBLAS's GEMM semantics over a numpy byte buffer (`memory`, pointers are offsets into it): the CPU tests'
    stand-in for `Cublas`."""

    def __init__(self, memory: np.ndarray) -> None:
        self.memory, self.calls, self.closed = memory, 0, False

    def _matrix(self, ptr: int, dtype: str, rows: int, cols: int, ld: int) -> np.ndarray:
        """A column-major (rows x cols) matrix with leading dimension `ld` at `ptr`, as a numpy view."""
        item = np.dtype(dtype).itemsize
        flat = self.memory[ptr:ptr + item * (ld * (cols - 1) + rows)].view(dtype)
        return np.lib.stride_tricks.as_strided(flat, (rows, cols), (item, item * ld))

    def gemm_accumulate(self, g: Gemm, dtype: str, alpha: float, up: int, down: int, c: int,
                        stream: int | None) -> None:
        a_ptr, b_ptr = (up, down) if g.a_is_up else (down, up)
        a_rows, a_cols = (g.k, g.m) if g.trans_a == OP_T else (g.m, g.k)
        b_rows, b_cols = (g.n, g.k) if g.trans_b == OP_T else (g.k, g.n)
        a = self._matrix(a_ptr, dtype, a_rows, a_cols, g.lda).astype(np.float32)
        b = self._matrix(b_ptr, dtype, b_rows, b_cols, g.ldb).astype(np.float32)
        a, b = (a.T if g.trans_a == OP_T else a), (b.T if g.trans_b == OP_T else b)
        out = self._matrix(c, dtype, g.m, g.n, g.ldc)
        out[...] = (out.astype(np.float32) + np.float32(alpha) * (a @ b)).astype(dtype)
        self.calls += 1

    def close(self) -> None:
        self.closed = True


def _candidates() -> list[str]:
    found = [os.environ[CUBLAS_ENV]] if os.environ.get(CUBLAS_ENV) else []
    found += ["libcublas.so.13", "libcublas.so.12"]  # the one ONNX Runtime's CUDA provider already loaded, if any
    # the nvidia-cublas wheels: nvidia/cu13/lib (CUDA 13), nvidia/cublas/lib (CUDA 12)
    found += wheel_libraries(os.path.join("*", "lib", "libcublas.so.*"), newest_first=True)
    return found + ["libcublas.so"]


class Cublas:
    """The cuBLAS calls this module needs: the library loaded at construction, a handle made on the first GEMM (on
    the current device) and destroyed by `close`."""

    def __init__(self) -> None:
        self.lib, _ = load_first(_candidates(), "libcublas", f"pip install nvidia-cublas (or set {CUBLAS_ENV})")
        p, i, v = ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p
        self.lib.cublasCreate_v2.argtypes = [ctypes.POINTER(p)]
        self.lib.cublasSetStream_v2.argtypes = [p, p]
        self.lib.cublasDestroy_v2.argtypes = [p]
        self.lib.cublasGemmEx.argtypes = [p, i, i, i, i, i, v, v, i, i, v, i, i, v, v, i, i, i, i]
        for fn in (self.lib.cublasCreate_v2, self.lib.cublasSetStream_v2, self.lib.cublasDestroy_v2,
                   self.lib.cublasGemmEx):
            fn.restype = ctypes.c_int
        self.handle = ctypes.c_void_p()  # made on the first GEMM, on the caller's current device

    def gemm_accumulate(self, g: Gemm, dtype: str, alpha: float, up: int, down: int, c: int,
                        stream: int | None) -> None:
        kind = _CUDA_TYPES[dtype]
        a, b = (up, down) if g.a_is_up else (down, up)
        one, scale = ctypes.c_float(1.0), ctypes.c_float(alpha)
        if not self.handle:
            self._check(self.lib.cublasCreate_v2(ctypes.byref(self.handle)), "cublasCreate")
        self._check(self.lib.cublasSetStream_v2(self.handle, stream or 0), "cublasSetStream")
        self._check(self.lib.cublasGemmEx(self.handle, g.trans_a, g.trans_b, g.m, g.n, g.k, ctypes.byref(scale),
                                          a, kind, g.lda, b, kind, g.ldb, ctypes.byref(one), c, kind, g.ldc,
                                          _COMPUTE_32F, _GEMM_DEFAULT), "cublasGemmEx (a LoRA update)")

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status != 0:
            raise CudaError(f"{what} failed with cuBLAS status {status}. Note: expected 0 (CUBLAS_STATUS_SUCCESS). "
                            "Fix: check free GPU memory with nvidia-smi, or apply adapters on the host "
                            "(TRT_DISTRI_LORA_ON_HOST=1)")

    def close(self) -> None:
        if self.handle:
            self.lib.cublasDestroy_v2(self.handle)
            self.handle = ctypes.c_void_p()


def device_target(store, stream: int | None) -> DeviceStoreTarget | None:
    """The GPU target of a CUDA store, or None (the host path) where cuBLAS cannot be loaded or
    TRT_DISTRI_LORA_ON_HOST=1 asks for the host."""
    if os.environ.get("TRT_DISTRI_LORA_ON_HOST") == "1":
        return None
    try:
        return DeviceStoreTarget(store, stream, Cublas())
    except MissingPackageError as exc:
        logging.getLogger(__name__).warning("LoRA updates are computed on the host (slower): %s", exc)
        return None

