"""Read a .safetensors file into numpy arrays, with numpy alone (the serving path has no torch or safetensors).

The format: an 8-byte little-endian header length, a JSON header (tensor name -> dtype, shape, [begin, end) byte
offsets into the data that follows; `__metadata__` -> string pairs), then the data. bfloat16 tensors (numpy has no
such type) come back as float32, exactly (a bfloat16 is the upper half of a float32).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from trt_distri.errors import ConfigError

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U8": "u1", "BOOL": "?"}
_MAX_HEADER = 100 << 20


def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of the file at `path`; tensors are read-only views of a memory map (bf16: copies)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist. Fix: pass the path of a .safetensors file")
    data = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else np.zeros(0, np.uint8)
    header, start = _header(path, data)
    metadata = header.pop("__metadata__", None) or {}
    tensors = {name: _tensor(path, data, start, name, info) for name, info in header.items()}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def _header(path: Path, data: np.ndarray) -> tuple[dict, int]:
    bad = f"{path} is not a safetensors file"
    if data.size < 8:
        raise ConfigError(f"{bad}: it is {data.size} bytes long. Note: expected an 8-byte header length first. "
                          "Fix: pass a .safetensors file (a .ckpt/.pt LoRA must be converted first)")
    size = int(data[:8].view("<u8")[0])
    if size > min(_MAX_HEADER, data.size - 8):
        raise ConfigError(f"{bad}: its header would be {size} bytes. Note: expected at most "
                          f"{min(_MAX_HEADER, data.size - 8)}. Fix: pass a .safetensors file (a .ckpt/.pt LoRA "
                          "must be converted first)")
    try:
        header = json.loads(bytes(data[8:8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{bad}: its header is not JSON ({exc}). Fix: pass a .safetensors file") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{bad}: its header is a {type(header).__name__}. Note: expected a JSON object")
    return header, 8 + size


def _tensor(path: Path, data: np.ndarray, start: int, name: str, info) -> np.ndarray:
    try:
        kind, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: tensor {name!r} has a damaged header entry {info!r}. Note: expected dtype, "
                          "shape and data_offsets") from None
    if kind not in _DTYPES and kind != "BF16":
        raise ConfigError(f"{path}: tensor {name!r} has the unsupported dtype {kind}. Note: expected one of "
                          f"{', '.join([*_DTYPES, 'BF16'])}")
    itemsize = 2 if kind == "BF16" else np.dtype(_DTYPES[kind]).itemsize
    count = int(np.prod(shape, dtype=np.int64))
    if not 0 <= begin <= end <= data.size - start or end - begin != count * itemsize:
        raise ConfigError(f"{path} is truncated or damaged: tensor {name!r} ({kind} {list(shape)}) lies at bytes "
                          f"[{begin}, {end}) of {data.size - start}. Fix: download or save the file again")
    raw = data[start + begin:start + end]
    if kind == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    return raw.view(_DTYPES[kind]).reshape(shape)
