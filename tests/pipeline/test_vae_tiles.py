"""Tiled VAE decoding: tile placement, exact blending of a position-independent decoder, the real tiny VAE."""
from __future__ import annotations

import numpy as np
import pytest

from trt_distri.vae_tiles import decode_tiled, tile_starts


@pytest.mark.parametrize("length, tile, overlap", [(480, 128, 32), (100, 32, 8), (32, 32, 8), (20, 32, 8),
                                                   (33, 32, 8)])
def test_tiles_cover_with_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_3840_sdxl_needs_25_tiles():
    assert len(tile_starts(480, 128, 32)) == 5


def _pixelwise(z: np.ndarray) -> np.ndarray:
    """A stand-in decoder whose output at a pixel depends only on the latent under it (x4 nearest)."""
    rgb = np.tanh(z[:, :3] * 0.7 + z[:, 3:4])
    return rgb.repeat(4, axis=2).repeat(4, axis=3)


def test_blending_is_exact_for_a_position_independent_decoder():
    z = np.random.default_rng(0).standard_normal((1, 4, 45, 70)).astype(np.float32)
    calls = []
    tiled = decode_tiled(lambda x: calls.append(x.shape) or _pixelwise(x), z, tile=16, scale=4)
    assert len(calls) > 1 and all(s == (1, 4, 16, 16) for s in calls)  # every tile has the same shape
    np.testing.assert_allclose(tiled, _pixelwise(z), rtol=0, atol=1e-6)


def test_tiny_vae_tiled_is_close_to_whole(workdir):
    from trt_distri.pipeline import decode_latents, load_manifest

    work = workdir("tiny-sd")
    data = load_manifest(work)
    z = np.random.default_rng(1).standard_normal((1, 4, 48, 48)).astype(np.float32)
    whole = decode_latents(work, data, z, tile=48).astype(np.float64)
    tiled = decode_latents(work, data, z, tile=24).astype(np.float64)
    mse = np.mean((whole - tiled) ** 2)
    assert whole.shape == tiled.shape == (384, 384, 3)
    assert 10 * np.log10(255 ** 2 / mse) > 25  # GroupNorm statistics differ per tile: close, not equal
