"""trt_distri/png.py: the PNG writer, whole and with its data compressed in chunks on threads."""
from __future__ import annotations

import io
import zlib

import numpy as np
import pytest

from trt_distri.png import deflate, png_bytes, read_png


@pytest.mark.parametrize("size", [(64, 48), (1100, 700)])  # one zlib stream; 2.3 MB of rows: two chunks
def test_png_round_trips_and_other_readers_read_it(size):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    image[: size[0] // 2] = 200  # compressible and incompressible parts
    data = png_bytes(image)
    np.testing.assert_array_equal(read_png(data), image)
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), image)


def test_chunked_deflate_is_one_valid_zlib_stream():
    data = np.random.default_rng(1).integers(0, 4, 5_000_123, dtype=np.uint8).tobytes()
    out = deflate(data, chunk=1 << 20)
    assert zlib.decompress(out) == data  # header, every chunk's boundary and the Adler-32 all check
    assert len(out) < len(data) // 2
    broken = out[:-1] + bytes([out[-1] ^ 1])
    with pytest.raises(zlib.error):
        zlib.decompress(broken)
