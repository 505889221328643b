"""A PNG writer for (H, W, 3) uint8 RGB arrays with the standard library only (zlib), so that the runtime side
needs no imaging package.

A 2048x2048 image is 12.6 MB of rows; one zlib stream takes 0.3 s of one core for the noise-like images of random
weights (where every request of `trt-distri serve` waits for it), so large images are compressed in independent
chunks on threads (zlib releases the GIL): each chunk is raw deflate ending on a full flush, which makes the chunks
one valid stream when concatenated (pigz's method), wrapped in the zlib header and the whole data's Adler-32.
"""
from __future__ import annotations

import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from trt_distri.errors import ConfigError


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of `image` (H, W, 3) uint8."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"a PNG needs an (H, W, 3) uint8 image. Note: got {image.shape} {image.dtype}")
    h, w, _ = image.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # filter 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", deflate(rows.tobytes()))
            + _chunk(b"IEND", b""))


def deflate(data: bytes, level: int = 6, chunk: int = 1 << 21) -> bytes:
    """The zlib stream of `data` (what zlib.compress gives, byte for byte different but equal once decompressed):
    above `chunk` bytes, compressed a chunk per thread."""
    if len(data) <= chunk:
        return zlib.compress(data, level)
    view = memoryview(data)
    parts = [view[start:start + chunk] for start in range(0, len(data), chunk)]

    def compress(index: int) -> bytes:
        raw = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: no header, no checksum
        last = index == len(parts) - 1
        return raw.compress(parts[index]) + raw.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    with ThreadPoolExecutor(min(len(parts), os.cpu_count() or 1)) as pool:
        body = b"".join(pool.map(compress, range(len(parts))))
    return b"\x78\x9c" + body + struct.pack(">I", zlib.adler32(data) & 0xFFFFFFFF)


def read_png(data: bytes) -> np.ndarray:
    """Read back a PNG written by `png_bytes` (8-bit RGB, filter 0 only); for tests and tools."""
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * 3)
    if rows[:, 0].any():
        raise ConfigError("read_png reads only PNGs without row filters. Note: written by another encoder")
    return rows[:, 1:].reshape(h, w, 3).copy()
