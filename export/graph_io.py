"""Write segment graphs as ONNX files whose weights live once in a shared `weights.bin` (external data)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

WEIGHTS_FILE = "weights.bin"
_ALIGN = 64
IR_VERSION = 10  # ONNX Runtime 1.31 reads IR <= 13; 10 is what opset 23 needs


def write_weights(weights: dict[str, gs.Constant], folder: Path) -> tuple[dict[str, tuple[int, int]], dict]:
    """Write every weight once; returns name -> (offset, length) and the file's summary for the manifest."""
    offsets: dict[str, tuple[int, int]] = {}
    digest = hashlib.sha256()
    pos = 0
    with open(folder / WEIGHTS_FILE, "wb") as f:
        for name, const in weights.items():
            data = np.ascontiguousarray(const.values).tobytes()
            pad = -pos % _ALIGN
            if pad:
                f.write(b"\0" * pad)
                digest.update(b"\0" * pad)
                pos += pad
            f.write(data)
            digest.update(data)
            offsets[name] = (pos, len(data))
            pos += len(data)
    return offsets, {"file": WEIGHTS_FILE, "bytes": pos, "sha256": digest.hexdigest()}


def to_model(graph: gs.Graph, offsets: dict[str, tuple[int, int]]) -> onnx.ModelProto:
    """Export `graph`; initializers that are shared weights point into weights.bin instead of holding data."""
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = IR_VERSION
    model.producer_name = "trt-distri"
    for init in model.graph.initializer:
        if init.name in offsets:
            offset, length = offsets[init.name]
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.EXTERNAL
            del init.external_data[:]
            for key, value in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
    return model


def save_model(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())
