"""The one check of CUDA runtime results (trt_distri.cudart), with a stand-in for cuda-python's status enum, and
the default device that follows the one GPU count (engines.gpus.list_gpus)."""
from __future__ import annotations

import enum
from types import SimpleNamespace

import pytest

from trt_distri import cudart
from trt_distri.engines import gpus, trt_memory
from trt_distri.errors import CudaError, EngineRunError, MissingPackageError
from trt_distri.pipeline import default_device


class Status(enum.IntEnum):  # cuda-python's cudaError_t is an int enum as well
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


FAKE_RT = SimpleNamespace(cudaGetErrorName=lambda s: (Status.cudaSuccess, s.name.encode()),
                          cudaGetErrorString=lambda s: (Status.cudaSuccess, b"out of memory"))


@pytest.mark.parametrize("result, value", [
    ((Status.cudaSuccess, 7), 7), ((Status.cudaSuccess, 1, 2), (1, 2)), ((Status.cudaSuccess,), None),
    (Status.cudaSuccess, None),
])
def test_success_gives_the_values(result, value):
    assert cudart.check(result, "call") == value


def test_a_failure_names_the_call_the_error_and_the_fix(monkeypatch):
    monkeypatch.setattr(cudart, "_load", lambda: FAKE_RT)
    with pytest.raises(CudaError, match=r"^cudaMalloc\(8 bytes\) on GPU 1 failed: cudaErrorMemoryAllocation "
                                        r"\(out of memory\)\. Note: expected cudaSuccess\. Fix: free memory$"):
        cudart.check((Status.cudaErrorMemoryAllocation, 0), "cudaMalloc(8 bytes) on GPU 1", "free memory")


def test_the_caller_may_name_the_error_type(monkeypatch):
    """TensorRT's runs (engines.trt_memory.check) raise EngineRunError through the same check."""
    monkeypatch.setattr(cudart, "_load", lambda: FAKE_RT)
    with pytest.raises(EngineRunError, match="cudaGraphLaunch failed: cudaErrorMemoryAllocation"):
        trt_memory.check((Status.cudaErrorMemoryAllocation,), "cudaGraphLaunch")


def test_an_error_the_bindings_cannot_name_gives_its_number(monkeypatch):
    monkeypatch.setattr(cudart, "_load", lambda: SimpleNamespace())
    with pytest.raises(CudaError, match="cudaSetDevice failed: CUDA error 2. Note"):
        cudart.check(Status.cudaErrorMemoryAllocation, "cudaSetDevice")


def test_missing_bindings_name_the_package_and_the_purpose(monkeypatch):
    monkeypatch.setattr(cudart, "_load", lambda: None)
    assert not cudart.available()
    with pytest.raises(MissingPackageError, match="sharing weights needs .*cuda-python.*pip install cuda-python"):
        cudart.runtime("sharing weights")


@pytest.mark.parametrize("listed, bindings, device", [
    ((), True, "cpu"), ((gpus.Gpu(0, "H200", "9.0"),), False, "cpu"), ((gpus.Gpu(0, "H200", "9.0"),), True, "cuda"),
])
def test_default_device_needs_a_listed_gpu_and_the_bindings(monkeypatch, listed, bindings, device):
    monkeypatch.setattr(gpus, "list_gpus", lambda: listed)
    monkeypatch.setattr(cudart, "_load", lambda: FAKE_RT if bindings else None)
    assert default_device() == device
