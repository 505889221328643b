"""Shared libraries the runtime calls through ctypes (libnccl, libcublas): the first of a list of candidates that
loads, or one error that names what was tried and the fix."""
from __future__ import annotations

import ctypes
import glob
import os
import sys

from trt_distri.errors import MissingPackageError


def wheel_libraries(pattern: str, newest_first: bool = False) -> list[str]:
    """Files matching `nvidia/<pattern>` under each sys.path entry in turn (NVIDIA's pip wheels), sorted by name
    within an entry (descending with `newest_first`: libX.so.13 before libX.so.12)."""
    return [path for root in sys.path
            for path in sorted(glob.glob(os.path.join(root, "nvidia", pattern)), reverse=newest_first)]


def load_first(candidates: list[str], what: str, fix: str) -> tuple[ctypes.CDLL, str]:
    """(the library, its path) of the first candidate that loads; MissingPackageError naming the last tried."""
    errors = []
    for path in candidates:
        try:
            return ctypes.CDLL(path), path
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    raise MissingPackageError(f"{what} could not be loaded. Note: tried " + "; ".join(errors[-3:]) + f". Fix: {fix}")
