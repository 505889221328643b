"""engines/lora_device.py: LoRA updates as in-place GEMMs on the device, checked on the CPU through HostBlas (cuBLAS's
column-major semantics over a numpy buffer) against the host path, and on a GPU with cuBLAS itself."""
from __future__ import annotations

import ctypes
import types

import numpy as np
import pytest

from trt_distri.engines.lora_apply import StoreTarget, WeightPatcher
from trt_distri.engines.lora_device import OP_N, OP_T, DeviceStoreTarget, Gemm, HostBlas
from trt_distri.engines.ort_weights import WeightRef
from trt_distri.lora import Adapter, LowRank

REFS = {"linear.weight": WeightRef("linear.weight", 0, 2 * 8 * 6, "float16", (8, 6)),  # (in, out)
        "conv.weight": WeightRef("conv.weight", 256, 2 * 6 * 4 * 3 * 3, "float16", (6, 4, 3, 3)),
        "wide.weight": WeightRef("wide.weight", 768, 4 * 5 * 7, "float32", (5, 7))}
SHAPES = {"linear.weight": ((3, 8), (6, 3)), "conv.weight": ((3, 4, 3, 3), (6, 3, 1, 1)),
          "wide.weight": ((2, 5), (7, 2))}


def _adapter(seed: int, names=tuple(REFS)) -> Adapter:
    rng = np.random.default_rng(seed)
    return Adapter(f"lora{seed}", {n: LowRank(rng.standard_normal(SHAPES[n][0]).astype(np.float32),
                                              rng.standard_normal(SHAPES[n][1]).astype(np.float32), 0.25)
                                   for n in names}, "peft")


class HostDeviceStore:
    """A shared store's device interface over host memory: the block is `memory[:file size]`, factors go after."""

    device = 0

    def __init__(self, file: np.ndarray) -> None:
        self.file, self.memory = file, np.zeros(1 << 16, np.uint8)
        self.memory[:file.size] = file
        self.next, self.live, self.flushes = 1024, set(), 0

    def base(self, ref: WeightRef) -> np.ndarray:
        return self.file[ref.offset:ref.offset + ref.length].view(ref.dtype).reshape(ref.shape)

    def current(self, ref: WeightRef) -> np.ndarray:
        return self.memory[ref.offset:ref.offset + ref.length].view(ref.dtype).reshape(ref.shape)

    def device_pointer(self, ref: WeightRef) -> int:
        return ref.offset

    def restore(self, ref: WeightRef, stream) -> None:
        self.memory[ref.offset:ref.offset + ref.length] = self.file[ref.offset:ref.offset + ref.length]

    def allocate(self, nbytes: int) -> int:
        ptr, self.next = self.next, self.next + nbytes
        assert self.next <= self.memory.size
        self.live.add(ptr)
        return ptr

    def release(self, ptr: int) -> None:
        self.live.remove(ptr)
        self.next = 1024

    def copy_to_device(self, ptr: int, array: np.ndarray, stream) -> None:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self.memory[ptr:ptr + data.size] = data

    def flush(self, stream) -> None:
        self.flushes += 1


@pytest.fixture
def file() -> np.ndarray:
    rng = np.random.default_rng(0)
    data = np.zeros(768 + 140, np.uint8)
    data[:96] = rng.standard_normal(48).astype(np.float16).view(np.uint8)
    data[256:256 + 432] = rng.standard_normal(216).astype(np.float16).view(np.uint8)
    data[768:] = rng.standard_normal(35).astype(np.float32).view(np.uint8)
    return data


def _put(memory: np.ndarray, ptr: int, matrix: np.ndarray) -> None:
    """`matrix` stored column-major (float32) at `ptr`."""
    data = np.asarray(matrix, np.float32).ravel(order="F").view(np.uint8)
    memory[ptr:ptr + data.size] = data


@pytest.mark.parametrize("trans_a", [OP_N, OP_T])
def test_host_blas_follows_cublas_column_major_definition(trans_a):
    """C (m x n, ldc) += alpha * op(A) @ op(B), every matrix column-major: checked with hand-laid-out matrices."""
    rng = np.random.default_rng(3)
    a, b, c = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    memory = np.zeros(4096, np.uint8)
    _put(memory, 0, a if trans_a == OP_N else a.T)  # op T reads A stored as (3 x 4)
    _put(memory, 1024, b.T)  # B stored (5 x 3), used with op T
    _put(memory, 2048, c)
    lda = 4 if trans_a == OP_N else 3
    HostBlas(memory).gemm_accumulate(Gemm(trans_a, OP_T, 4, 5, 3, True, lda, 5, 4), "float32", 0.5, 0, 1024, 2048,
                                     None)
    got = memory[2048:2048 + 80].view(np.float32).reshape(5, 4).T
    np.testing.assert_allclose(got, c + 0.5 * a @ b, rtol=1e-5)


def test_device_updates_equal_the_host_path_and_clear_restores_bit_for_bit(file):
    store = HostDeviceStore(file)
    blas = HostBlas(store.memory)
    device = WeightPatcher(REFS, store.base, DeviceStoreTarget(store, None, blas))
    host = WeightPatcher(REFS, store.base, StoreTarget(store, None))  # only its `value` is used
    one, two = _adapter(1), _adapter(2, names=("linear.weight",))
    for adapters in ([(one, 1.0)], [(one, 0.7), (two, -0.4)], [(two, 1.5)]):
        device.set(adapters)
        for name, ref in REFS.items():
            expected = host.value(name, adapters)
            tol = 1e-5 if ref.dtype == "float32" else 2e-2  # factors in the weight's dtype, one rounding per adapter
            np.testing.assert_allclose(store.current(ref).astype(np.float32), expected.astype(np.float32),
                                       rtol=tol, atol=tol, err_msg=f"{name} with {len(adapters)} adapter(s)")
    assert blas.calls == 3 + 4 + 1 and not store.live  # one GEMM per (weight, adapter); factors freed
    device.clear()
    assert store.memory[:file.size].tobytes() == file.tobytes()
    device.close()
    assert blas.closed


@pytest.mark.gpu
def test_cublas_updates_a_cuda_store_like_the_host_path(tmp_path, file):
    import onnxruntime as ort

    from trt_distri.cudart import runtime
    from trt_distri.engines.lora_device import Cublas
    from trt_distri.engines.ort_weights import SharedWeights

    path = tmp_path / "weights.bin"
    path.write_bytes(file.tobytes())
    store = SharedWeights(ort, path, 0)
    rt = runtime()
    try:
        device = WeightPatcher(REFS, store.base, DeviceStoreTarget(store, None, Cublas()))
        host = WeightPatcher(REFS, store.base, StoreTarget(store, None))
        adapters = [(_adapter(1), 0.7), (_adapter(2, names=("linear.weight",)), -0.4)]
        device.set(adapters)

        def read(ref: WeightRef) -> np.ndarray:
            out = np.empty(ref.length, np.uint8)
            rt.cudaMemcpy(out.ctypes.data, store.device_pointer(ref), ref.length,
                          rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            return out.view(ref.dtype).reshape(ref.shape)

        for name, ref in REFS.items():
            tol = 1e-5 if ref.dtype == "float32" else 2e-2
            np.testing.assert_allclose(read(ref).astype(np.float32), host.value(name, adapters).astype(np.float32),
                                       rtol=tol, atol=tol, err_msg=name)
        device.clear()
        assert all(read(ref).tobytes() == store.base(ref).tobytes() for ref in REFS.values())
        device.close()
    finally:
        store.close()


class _HostCudart:
    """The cuda-python runtime calls the shared store's device block makes, over host memory (pointers are real
    host addresses); `pin_fails` makes cudaMallocHost fail as a host without that much lockable memory would."""

    cudaMemcpyKind = types.SimpleNamespace(cudaMemcpyHostToDevice=1)

    def __init__(self, pin_fails: bool) -> None:
        self.pin_fails, self.buffers, self.pinned = pin_fails, [], 0

    def _alloc(self, nbytes: int) -> int:
        self.buffers.append(np.zeros(nbytes, np.uint8))
        return self.buffers[-1].ctypes.data

    def cudaSetDevice(self, device):
        return (0,)

    def cudaMalloc(self, nbytes):
        return 0, self._alloc(nbytes)

    def cudaMallocHost(self, nbytes):
        if self.pin_fails:
            return 2, None  # cudaErrorMemoryAllocation
        self.pinned += 1
        return 0, self._alloc(nbytes)

    def cudaMemcpy(self, dst, src, nbytes, kind):
        ctypes.memmove(dst, src, nbytes)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        return self.cudaMemcpy(dst, src, nbytes, kind)

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaFree(self, ptr):
        return (0,)

    def cudaFreeHost(self, ptr):
        return (0,)


@pytest.mark.parametrize("pin_fails", [False, True])
def test_restore_reads_a_pinned_copy_or_else_the_file(monkeypatch, file, pin_fails):
    from trt_distri.engines import ort_weights

    rt = _HostCudart(pin_fails)
    monkeypatch.setattr(ort_weights, "cuda_runtime", lambda purpose: rt)
    block = ort_weights._DeviceBlock(0, file)
    device = np.ctypeslib.as_array((ctypes.c_uint8 * file.size).from_address(block.ptr))
    assert device.tobytes() == file.tobytes()
    device[:] = 7  # what an update wrote
    block.restore(256, 432, None)
    block.sync(None)
    assert device[256:688].tobytes() == file[256:688].tobytes() and (device[:256] == 7).all()
    assert (rt.pinned, block.mirror == -1) == ((0, True) if pin_fails else (1, False))
    block.free()
    assert block.mirror == 0 and block.ptr == 0
