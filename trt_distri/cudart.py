"""cuda-python's CUDA runtime bindings, imported on first use, and the one check of their results.

runtime.cuda (the runtime's device), the TensorRT engines (engines.trt_memory, engines.trt_session) and
engines.ort_weights (the shared weight block) call CUDA through `runtime()` and `check()`; a failed call is an
error (CudaError unless the caller names another) that says the call, CUDA's error and the fix. This module imports only the standard library until `runtime()` is called.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Any

from trt_distri.errors import CudaError, MissingPackageError, TrtDistriError

_MODULES = ("cuda.bindings.runtime", "cuda.cudart")  # cuda-python >= 12.6, then older releases


@functools.cache
def _load() -> ModuleType | None:
    for name in _MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def available() -> bool:
    """cuda-python's runtime bindings import here."""
    return _load() is not None


def runtime(purpose: str = "the GPU runtime") -> ModuleType:
    """The bindings module, or a MissingPackageError saying that `purpose` needs cuda-python."""
    rt = _load()
    if rt is None:
        raise MissingPackageError(f"{purpose} needs the CUDA runtime bindings of cuda-python, which failed to import. "
                                  "Fix: pip install cuda-python")
    return rt


def check(result: Any, what: str, fix: str = "check the GPU with nvidia-smi",
          error: type[TrtDistriError] = CudaError) -> Any:
    """The value(s) of a cuda-python call's `(status, value...)` (or bare status): None, one value or a tuple. A
    status other than cudaSuccess raises `error` (TensorRT's runs: EngineRunError) naming `what`, CUDA's error and
    `fix`."""
    status, *values = result if isinstance(result, tuple) else (result,)
    if int(status) != 0:
        raise error(f"{what} failed: {_error_name(status)}. Note: expected cudaSuccess. Fix: {fix}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def _error_name(status: Any) -> str:
    rt = _load()
    try:
        name = rt.cudaGetErrorName(status)[1].decode()
        text = rt.cudaGetErrorString(status)[1].decode()
    except Exception:  # a status the bindings cannot describe: its number is all there is
        return f"CUDA error {int(status)}"
    return f"{name} ({text})"
