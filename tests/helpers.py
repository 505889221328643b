"""Helpers shared by tests (importable as `from helpers import rel_err`; also the `rel_err` fixture)."""
from __future__ import annotations

import math

import numpy as np


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device and dtype
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (Frobenius) as a float, for numpy arrays and torch tensors of the same shape."""
    a, b = _to_numpy(a), _to_numpy(b)
    if a.shape != b.shape:
        raise ValueError(f"rel_err needs equal shapes. Note: got {a.shape} and {b.shape}")
    diff, ref = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref
