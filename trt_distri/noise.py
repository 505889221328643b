"""Initial noise without torch, bit-identical to `torch.randn(shape, generator=torch.Generator().manual_seed(seed))`
on an x86 CPU (float32), so that a seed gives diffusers' image.

What torch does (ATen's CPU generator and normal kernel; facts, re-implemented here):
- The generator is a plain mt19937 seeded with the seed's low 32 bits (init_genrand). Its 32-bit outputs come from
  numpy's MT19937 bit generator, given the same state.
- A float uniform is the low 24 bits of one output times 2**-24; a double uniform takes the low 53 bits of
  (first output << 32 | second output) times 2**-53.
- Tensors of 16 or more elements: every element first gets a float uniform; then each block of 16 is turned into
  normals by Box-Muller on the pairs (j, j + 8): radius sqrt(-2 log(1 - u_j)), angle 2 pi u_{j+8}, cos to j and sin
  to j + 8. When the size is not a multiple of 16 the last 16 elements are drawn again (16 new uniforms) and
  transformed as one more block. On CPUs with AVX2 (torch's x86 builds run this kernel's AVX2 version on AVX-512
  CPUs too) log, sin and cos are the cephes-style float32 polynomials of avx_mathfun, which
  `_log_ps` and `_sincos_ps` evaluate with the same float32 operations in the same order, including the
  multiply-adds that torch's compiler fused into single-rounding FMAs (found by comparing with torch bit for bit).
  Without AVX2 (e.g. ARM, or ATEN_CPU_CAPABILITY=default) torch calls libm instead, and about a third of the values
  differ from the AVX2 ones in their last bits; this module follows the x86 build, as diffusers users get it.
- Smaller tensors: each element is one double-precision Box-Muller sample (two double uniforms u1, u2, radius
  sqrt(-2 log1p(-u2)), angle 2 pi u1; the cosine is returned and the sine is kept for the next element), rounded to
  float32.
"""
from __future__ import annotations

import math

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.float32 import fma

_N, _INIT_MULT = 624, 1812433253
_VECTOR_MIN = 16  # torch's vectorized fill needs at least one block of 16


def randn(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal float32 noise of `shape`, equal bit for bit to torch.randn with a CPU generator seeded by
    `seed` (0 <= seed < 2**64)."""
    if not 0 <= seed < 2**64:
        raise ConfigError(f"seed out of range. Note: expected 0..2**64-1, got {seed}")
    shape = tuple(int(d) for d in shape)
    count = math.prod(shape)
    stream = _Mt19937(seed)
    if count >= _VECTOR_MIN:
        return _vectorized(stream, count).reshape(shape)
    return _scalar(stream, count).reshape(shape)


class _Mt19937:
    """torch's mt19937 stream: numpy's MT19937 bit generator set to init_genrand(seed & 0xffffffff)."""

    def __init__(self, seed: int) -> None:
        key = np.empty(_N, np.uint32)
        key[0] = value = seed & 0xFFFFFFFF
        for j in range(1, _N):
            value = (_INIT_MULT * (value ^ (value >> 30)) + j) & 0xFFFFFFFF
            key[j] = value
        self._bits = np.random.MT19937(0)  # any seed: the state is replaced
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": _N}}

    def take(self, count: int) -> np.ndarray:
        """The next `count` 32-bit outputs (uint32)."""
        return self._bits.random_raw(count).astype(np.uint32)


def _float_uniforms(words: np.ndarray) -> np.ndarray:
    return (words & np.uint32(0xFFFFFF)).astype(np.float32) * np.float32(2.0**-24)


def _vectorized(stream: _Mt19937, count: int) -> np.ndarray:
    data = _float_uniforms(stream.take(count))
    full = count - count % 16
    data[:full] = _box_muller_16(data[:full].reshape(-1, 16)).reshape(-1)
    if count % 16:
        data[count - 16:] = _box_muller_16(_float_uniforms(stream.take(16)).reshape(1, 16)).reshape(-1)
    return data


def _box_muller_16(blocks: np.ndarray) -> np.ndarray:
    """Blocks (B, 16) of float uniforms -> normals, pairing column j with column j + 8 (float32 throughout)."""
    u1 = np.float32(1.0) - blocks[:, :8]
    theta = np.float32(2.0 * math.pi) * blocks[:, 8:]
    radius = np.sqrt(np.float32(-2.0) * _log_ps(u1))
    sin, cos = _sincos_ps(theta)
    # torch finishes with fma(n, std, mean) = n * 1 + 0: exact, except that -0 becomes +0
    return np.concatenate([radius * cos, radius * sin], axis=1) + np.float32(0.0)


def _f32(*values: float) -> tuple[np.float32, ...]:
    return tuple(np.float32(v) for v in values)


_LOG_P = _f32(7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
              -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)
_LOG_Q1, _LOG_Q2, _SQRT_HALF, _HALF, _ONE = _f32(-2.12194440e-4, 0.693359375, 0.707106781186547524, 0.5, 1.0)


def _log_ps(x: np.ndarray) -> np.ndarray:
    """Natural log of positive float32 values as avx_mathfun's log256_ps computes it (cephes logf)."""
    x = np.maximum(x, np.float32(np.finfo(np.float32).tiny))
    bits = x.view(np.int32)
    e = ((bits >> 23) - 127).astype(np.float32) + _ONE
    x = ((bits & ~0x7F800000) | np.float32(0.5).view(np.int32)).view(np.float32)  # mantissa in [0.5, 1)
    small = x < _SQRT_HALF
    tmp = np.where(small, x, np.float32(0.0))
    x = x - _ONE
    e = e - np.where(small, _ONE, np.float32(0.0))
    x = x + tmp
    z = x * x
    y = _LOG_P[0]
    for p in _LOG_P[1:]:
        y = fma(y, x, p)
    y = fma(y * x, z, e * _LOG_Q1)
    y = fma(-z, _HALF, y)
    return fma(e, _LOG_Q2, x + y)


_DP = _f32(-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8)
_SIN_P = _f32(-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1)
_COS_P = _f32(2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2)
_FOUR_OVER_PI = np.float32(1.27323954473516)
_SIGN = np.int32(-2**31)


def _sincos_ps(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos) of float32 values as avx_mathfun's sincos256_ps computes them (cephes sinf/cosf)."""
    sign_sin = x.view(np.int32) & _SIGN
    x = np.abs(x)
    j = (x * _FOUR_OVER_PI).astype(np.int32)  # truncation, as cvttps
    j = (j + 1) & ~1
    y = j.astype(np.float32)
    sign_sin = sign_sin ^ ((j & 4) << 29)
    sign_cos = (~(j - 2) & 4) << 29
    first_poly = (j & 2) == 0
    for dp in _DP:
        x = fma(y, dp, x)
    z = x * x
    cos_poly = _COS_P[0]
    for p in _COS_P[1:]:
        cos_poly = fma(cos_poly, z, p)
    cos_poly = fma(cos_poly * z, z, -(z * _HALF)) + _ONE
    sin_poly = _SIN_P[0]
    for p in _SIN_P[1:]:
        sin_poly = fma(sin_poly, z, p)
    sin_poly = fma(sin_poly * z, x, x)
    zero = np.float32(0.0)
    sin = np.where(first_poly, zero, cos_poly) + np.where(first_poly, sin_poly, zero)
    cos = np.where(first_poly, cos_poly, zero) + np.where(first_poly, zero, sin_poly)
    return (sin.view(np.int32) ^ sign_sin).view(np.float32), (cos.view(np.int32) ^ sign_cos).view(np.float32)


def _scalar(stream: _Mt19937, count: int) -> np.ndarray:
    """torch's per-element path: double Box-Muller pairs (cos first, then the cached sin), rounded to float32."""
    pairs = (count + 1) // 2
    words = stream.take(4 * pairs).astype(np.uint64).reshape(pairs, 2, 2)
    doubles = ((words[..., 0] << np.uint64(32)) | words[..., 1]) & np.uint64((1 << 53) - 1)
    out = []
    for u1_bits, u2_bits in doubles.tolist():
        u1, u2 = u1_bits * 2.0**-53, u2_bits * 2.0**-53
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        out += [radius * math.cos(theta), radius * math.sin(theta)]
    return np.asarray(out[:count], np.float32)
