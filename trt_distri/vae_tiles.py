"""VAE decoding of large latents in overlapping tiles, blended, through the exported decoder (no torch).

Why: the decoder's mid-block self-attention runs over every latent pixel. At 3840x3840 that is 480 x 480 = 230,400
tokens, and the exported graph (MatMul, Softmax) materialises a 230,400^2 score matrix: 212 GB in fp32, beyond one
80 GB GPU, before the full-resolution 128-channel activations (7.5 GB each). Tiles of the VAE's native size (SDXL:
128 latent rows = 1024 pixels, 16,384 tokens, a 1 GB score matrix) fit in a few GB.

Tiles overlap by a quarter of their size, as diffusers' `enable_tiling` does; every tile has the same shape (the
last one in a row or column is moved back to end at the border), so a static-shape engine could decode them too.
Where tiles overlap, each pixel is the weighted mean of the tiles covering it, with weights ramping linearly from
the tile's inner edge, so there are no seams.

Cost: the overlap is decoded twice or more (3840 with 1024-pixel tiles: 5 x 5 tiles, 1.78x the pixels of one
decode), and each tile normalises with its own GroupNorm statistics, which can shift colours slightly between
distant tiles (the price diffusers' tiling pays too). Latents that fit in one tile are decoded whole, exactly.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of equal tiles of `tile` covering [0, length) with at least `overlap` shared between
    neighbours; one tile (start 0) when the length fits."""
    if length <= tile:
        return [0]
    stride = max(1, tile - overlap)
    return list(range(0, length - tile, stride)) + [length - tile]


def _ramp(size: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Blending weights along one axis of a tile: linear ramps over `overlap` pixels on sides with a neighbour."""
    x = np.arange(size, dtype=np.float32) + 0.5
    w = np.ones(size, np.float32)
    if overlap > 0 and not first:
        w = np.minimum(w, x / overlap)
    if overlap > 0 and not last:
        w = np.minimum(w, x[::-1] / overlap)
    return w


def decode_tiled(decode: Callable[[np.ndarray], np.ndarray], latents: np.ndarray, tile: int, scale: int,
                 overlap: int | None = None, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Decode (1, C, h, w) latents with `decode` (latent tile -> image tile, `scale` pixels per latent pixel) in
    tiles of at most `tile` x `tile` latent pixels; returns the (1, 3, h*scale, w*scale) image."""
    _, _, h, w = latents.shape
    th, tw = min(tile, h), min(tile, w)
    ov = tile // 4 if overlap is None else overlap
    rows, cols = tile_starts(h, th, ov), tile_starts(w, tw, ov)
    if len(rows) == len(cols) == 1:
        out = decode(latents)
        if progress:
            progress(1, 1)
        return out
    acc = weight = None
    total = len(rows) * len(cols)
    for k, (r, c) in enumerate((r, c) for r in rows for c in cols):
        part = decode(np.ascontiguousarray(latents[:, :, r:r + th, c:c + tw]))
        if acc is None:
            acc = np.zeros(part.shape[:2] + (h * scale, w * scale), np.float32)
            weight = np.zeros((h * scale, w * scale), np.float32)
        wy = _ramp(th * scale, ov * scale, r == 0, r == rows[-1])
        wx = _ramp(tw * scale, ov * scale, c == 0, c == cols[-1])
        win = wy[:, None] * wx[None, :]
        ys, xs = slice(r * scale, (r + th) * scale), slice(c * scale, (c + tw) * scale)
        acc[:, :, ys, xs] += part * win
        weight[ys, xs] += win
        if progress:
            progress(k + 1, total)
    return acc / weight


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8, rounded as diffusers' image processor does."""
    x = np.clip(image[0].transpose(1, 2, 0) / 2 + 0.5, 0.0, 1.0)
    return (x * 255).round().astype(np.uint8)
