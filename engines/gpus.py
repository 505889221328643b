"""The machine's CUDA GPUs as `nvidia-smi` lists them (index, name, compute capability), without CUDA bindings.

Indices are nvidia-smi's, which order GPUs by PCI bus; workers set CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA
numbers them the same way.
"""
from __future__ import annotations

import functools
import shutil
import subprocess
from dataclasses import dataclass

from trt_distri.errors import ConfigError


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str  # "9.0"


@functools.cache
def list_gpus() -> tuple[Gpu, ...]:
    """Every GPU nvidia-smi lists; empty when it is absent or fails (no driver)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    query = [smi, "--query-gpu=index,name,compute_cap", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    rows = [[field.strip() for field in line.split(",")] for line in out.splitlines() if line.strip()]
    return tuple(Gpu(int(index), name, cap) for index, name, cap in rows)


def compute_capability(device: int) -> str:
    """Compute capability ("9.0") of GPU `device`."""
    for gpu in list_gpus():
        if gpu.index == device:
            return gpu.compute_capability
    raise ConfigError(f"no CUDA GPU {device} on this machine. Note: expected one of "
                      f"{[g.index for g in list_gpus()] or 'none (nvidia-smi lists no GPU)'}, got {device}")
