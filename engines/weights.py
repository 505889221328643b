"""The work directory's shared weights file (graphs/weights.bin) checked against the manifest's sha256.

A changed byte in the weights changes the image silently (or makes it black), and a truncated file fails deep inside
a backend, so: `build` hashes the whole file and refuses a mismatch; loading (runtime.sessions) compares size and
modification time with what the last full check recorded (`engines/weights.json`) and hashes the whole file again
only when they differ (or nothing was recorded). Either way a mismatch names the file and the fix.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from trt_distri.engines.cache import sha256_file
from trt_distri.errors import ManifestError
from trt_distri.manifest import Manifest

RECORD = Path("engines") / "weights.json"


def verify_weights(manifest: Manifest, full: bool = False) -> None:
    """Raise ManifestError unless the weights file matches the manifest; `full`: always hash the whole file."""
    expected = manifest.weights
    path = manifest.root / expected.file
    try:
        stat = path.stat()
    except OSError:
        raise ManifestError(f"{path} does not exist. Note: expected the weights written by `trt-distri export`. "
                            f"{_fix(manifest)}") from None
    seen = {"file": expected.file, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected.sha256}
    if not full and _recorded(manifest.root) == seen:
        return
    if stat.st_size != expected.bytes:
        state = "truncated" if stat.st_size < expected.bytes else "longer than exported"
        raise ManifestError(f"{path} is {state}: {stat.st_size} bytes. Note: expected {expected.bytes} bytes "
                            f"(the manifest's). {_fix(manifest)}")
    digest = sha256_file(path)
    if digest != expected.sha256:
        raise ManifestError(f"{path} was changed after export: its sha256 differs from the manifest's. Note: "
                            f"expected {expected.sha256[:16]}..., got {digest[:16]}... {_fix(manifest)}")
    _record(manifest.root, seen)


def _fix(manifest: Manifest) -> str:
    return (f"Fix: export again (`trt-distri export ... -o {manifest.root} --overwrite`), or restore the work "
            "directory from a copy")


def _recorded(root: Path) -> dict | None:
    try:
        return json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _record(root: Path, seen: dict) -> None:
    """Remember a full check (best effort: a read-only work directory is checked in full every time)."""
    path = root / RECORD
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(exist_ok=True)
        tmp.write_text(json.dumps(seen))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
