"""float32 arithmetic as torch's x86 CPU build performs it, for results equal to torch's bit for bit.

torch's CPU kernels are compiled with FMA enabled and GCC's default floating-point contraction, so a multiply
followed by an add in its C++ often runs as one fused multiply-add (rounded once). `fma` is that operation on numpy
float32 arrays; `linspace` is torch.linspace(start, end, steps, dtype=float32) on the CPU.
"""
from __future__ import annotations

import numpy as np


def fma(a, b, c) -> np.ndarray:
    """a * b + c rounded once to float32. The float32 product is exact in float64; the float64 sum's rounding error
    is recovered exactly (two-sum) and breaks the ties that rounding twice (to float64, then float32) gets wrong."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    product = a * b
    total = product + c
    virtual = total - product
    error = (product - (total - virtual)) + (c - virtual)
    halfway = (total.view(np.uint64) & np.uint64(0x1FFFFFFF)) == np.uint64(0x10000000)  # dropped bits: 1000...0
    nudged = np.where(halfway & (error != 0), np.nextafter(total, total + error), total)
    return nudged.astype(np.float32)


def linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32 on the CPU: the first half counts up from start, the second half down from end, each
    value one fused multiply-add of the float32 step."""
    lo, hi = np.float32(start), np.float32(end)
    if steps == 1:
        return np.asarray([lo], np.float32)
    step = np.float32((hi - lo) / np.float32(steps - 1))
    index = np.arange(steps)
    up = fma(step, index.astype(np.float32), lo)
    down = fma(-step, (steps - 1 - index).astype(np.float32), hi)
    return np.where(index < steps // 2, up, down).astype(np.float32)
