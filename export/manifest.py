"""The manifest: the contract between export, engines and runtime (docs/design.md). Plain JSON, read without torch."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from trt_distri.errors import ManifestError

FORMAT = "trt-distri/manifest"
VERSION = 1
MANIFEST_FILE = "manifest.json"
_ALIGN = 256


def exchange_layout(outputs: list[dict]) -> dict:
    """Byte offsets of every fresh tensor in a rank's exchange area, in emission order, 256-byte aligned."""
    entries, pos = [], 0
    for out in outputs:
        if out["role"] != "fresh":
            continue
        pos += -pos % _ALIGN
        size = nbytes(out["shape"], out["dtype"])
        entries.append({"name": out["name"], "layer": out["layer"], "role": out["name"].split(".")[0],
                        "shape": out["shape"], "dtype": out["dtype"], "offset": pos, "nbytes": size})
        pos += size
    pos += -pos % _ALIGN
    return {"bytes": pos, "entries": entries}


def exchange_range(segment_outputs: list[dict], layout: dict) -> list[int]:
    """[start, stop) of the exchange area that a segment's fresh outputs occupy ([0, 0] when it has none)."""
    by_name = {e["name"]: e for e in layout["entries"]}
    fresh = [by_name[o["name"]] for o in segment_outputs if o["role"] == "fresh"]
    if not fresh:
        return [0, 0]
    return [min(e["offset"] for e in fresh), max(e["offset"] + e["nbytes"] for e in fresh)]


def nbytes(shape, dtype: str) -> int:
    """Bytes of a dense tensor of `shape` and numpy dtype name `dtype`."""
    size = {"float16": 2, "float32": 4, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}[dtype]
    for d in shape:
        size *= d
    return size


@dataclass
class Manifest:
    """A loaded manifest: `data` is the JSON object, `root` the work directory."""

    root: Path
    data: dict

    @property
    def devices(self) -> int:
        return self.data["plan"]["devices"]

    def segments(self, graph_set: str) -> list[dict]:
        try:
            return self.data["graph_sets"][graph_set]
        except KeyError:
            raise ManifestError(f"{self.root / MANIFEST_FILE} has no graph set {graph_set!r}. Note: expected one of "
                                f"{sorted(self.data['graph_sets'])}") from None

    def graph_path(self, segment: dict) -> Path:
        return self.root / segment["file"]

    def entry(self, name: str) -> dict:
        for e in self.data["exchange"]["entries"]:
            if e["name"] == name:
                return e
        raise ManifestError(f"exchange entry {name!r} is not in {self.root / MANIFEST_FILE}")

    def save(self) -> None:
        path = self.root / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(f"{path} does not exist. Fix: run `trt-distri export ... -o {root}` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON ({e}). Fix: export again with --overwrite") from None
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ManifestError(f"{path} is not a trt-distri manifest of version {VERSION}. Note: expected format "
                                f"{FORMAT!r} v{VERSION}, got {data.get('format')!r} v{data.get('version')}. "
                                "Fix: export again with this version of trt-distri")
        return cls(root, data)
