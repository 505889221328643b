"""One copy of a work directory's weights per device, shared by every ONNX Runtime session of a rank.

Every graph of both graph sets refers to the same `weights.bin` (external data). Left to itself, each ORT session
loads the initializers it uses onto the device, so the warm-up and steady sets held two copies of the UNet (5.1 GB
each for SDXL in fp16). Instead each weight becomes one OrtValue on the device, and every session receives it with
`SessionOptions.add_initializer`, which ORT uses in place when it already lives where the session plans it.

The build records which external weights an engine reads (`engine_weights`, into the engine's metadata), so loading
needs neither onnx nor the graph to know what to hand each session. This module imports only numpy; ONNX Runtime
comes from the caller.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trt_distri.errors import CorruptEngineError


@dataclass(frozen=True)
class WeightRef:
    """Where an engine's external initializer lives in weights.bin."""

    name: str
    offset: int
    length: int
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> list:
        return [self.name, self.offset, self.length, self.dtype, list(self.shape)]

    @classmethod
    def from_json(cls, row: list) -> "WeightRef":
        name, offset, length, dtype, shape = row
        return cls(str(name), int(offset), int(length), str(dtype), tuple(int(d) for d in shape))


def engine_weights(model: Any) -> list[WeightRef]:
    """The external initializers of an ONNX model proto (read at build time, where onnx is loaded)."""
    from onnx import TensorProto, helper

    refs = []
    for init in model.graph.initializer:
        if init.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in init.external_data}
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).name
        refs.append(WeightRef(init.name, int(info.get("offset", 0)), int(info["length"]), dtype, tuple(init.dims)))
    return refs


class SharedWeights:
    """The weights of `path` (weights.bin) as OrtValues on `device` (None: host memory, read in place from the
    mapped file), each created once on first request. Thread-safe: a rank opens its sessions from several
    threads. The owner calls `close()` after its sessions are gone."""

    def __init__(self, ort: Any, path: Path, device: int | None) -> None:
        self.ort, self.path, self.device = ort, Path(path), device
        self._file = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.bytes = 0

    def value(self, ref: WeightRef) -> Any:
        with self._lock:
            if ref.name not in self._values:
                self._values[ref.name] = self._upload(ref)
                self.bytes += ref.length
            return self._values[ref.name]

    def _upload(self, ref: WeightRef) -> Any:
        if ref.offset + ref.length > self._file.size:
            raise CorruptEngineError(f"{self.path} is too short for weight {ref.name!r}. Note: expected at least "
                                     f"{ref.offset + ref.length} bytes, got {self._file.size}. Fix: export the work "
                                     "directory again")
        array = self._file[ref.offset:ref.offset + ref.length].view(ref.dtype).reshape(ref.shape)
        if self.device is None:
            return self.ort.OrtValue.ortvalue_from_numpy(array)
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", self.device)

    def count(self) -> int:
        return len(self._values)

    def close(self) -> None:
        with self._lock:
            self._values.clear()
            self.bytes = 0
