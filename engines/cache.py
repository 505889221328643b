"""The engine cache of a work directory: `engines/<backend>/<segment>.<arch><suffix>` plus metadata beside it.

An engine's key is a set of named fields (graph, manifest entry, weights, backend and version, GPU compute
capability, shapes, precision, builder flags); the metadata JSON (`<engine>.json`) stores them with the engine's
size and sha256. A build reuses an engine whose whole key matches. Loading compares the fields that describe the
machine and the manifest (not the builder flags, which the runtime does not know) and names each one that
differs; it then checks size and checksum, so a truncated or damaged file is caught before TensorRT reads it.

Writes are atomic: the old metadata is removed first, the engine and then its metadata are written to temp files
and renamed into place. An interrupted build therefore leaves an engine without metadata (or none), which loading
reports as "not built" with the command that builds it. Every rank runs the same graphs, so one engine per
segment and GPU architecture serves every rank ("any" where engines are portable).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from trt_distri.engines.backend import Backend, BackendBuildOptions, LoadOptions, Session, TensorInfo
from trt_distri.engines.ort_weights import WeightRef
from trt_distri.errors import CorruptEngineError, EngineCacheError, EngineMismatchError
from trt_distri.manifest import Manifest, Segment

FORMAT = "trt-distri/engine"
VERSION = 1
#: Key fields a built engine must match at load time (the rest, the builder flags, only decide a rebuild).
LOAD_FIELDS = ("graph", "segment", "weights", "backend", "backend_version", "gpu_arch", "shapes", "precision")
_CHUNK = 1 << 24


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks (engines and weights are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class EngineKey:
    """Named key fields; `digest` hashes them all."""

    fields: dict[str, str]

    @property
    def digest(self) -> str:
        return _sha256_json(self.fields)

    def differences(self, other: dict[str, str], names: tuple[str, ...]) -> list[str]:
        """`field (engine: X, here: Y)` for every field of `names` that differs from `other` (the engine's)."""
        return [f"{n} (engine: {other.get(n, 'absent')}, here: {self.fields.get(n)})" for n in names
                if other.get(n) != self.fields.get(n)]


def engine_key(manifest: Manifest, segment: Segment, backend: Backend, arch: str,
               options: BackendBuildOptions) -> EngineKey:
    """The key of `segment` built by `backend` for GPU architecture `arch` ("9.0", or "any") with `options`."""
    io = {k: [{"name": e.name, "role": e.role.value, "shape": list(e.shape), "dtype": e.dtype}
              for e in getattr(segment, k)] for k in ("inputs", "outputs")}
    shapes = ",".join(f"{e.name}:{'x'.join(map(str, e.shape))}" for e in segment.inputs + segment.outputs)
    return EngineKey({
        "graph": sha256_file(manifest.graph_path(segment)),
        "segment": _sha256_json(io),
        "weights": manifest.weights.sha256,
        "backend": backend.name,
        "backend_version": backend.version(),
        "gpu_arch": arch,
        "shapes": hashlib.sha256(shapes.encode()).hexdigest()[:16],
        "precision": manifest.precision,
        "flags": _sha256_json({**options.flags(), **backend.build_flags()})[:16],
    })


class EngineCache:
    """Engines of one backend in a work directory."""

    def __init__(self, manifest: Manifest, backend: Backend) -> None:
        self.manifest, self.backend = manifest, backend
        self.root = manifest.root / "engines" / backend.name

    def path(self, segment: Segment, arch: str) -> Path:
        tag = "sm" + arch.replace(".", "") if arch[0].isdigit() else arch  # "any", or ORT's "cpu" / "cuda"
        return self.root / f"{segment.name}.{tag}{self.backend.capabilities().engine_suffix}"

    @staticmethod
    def meta_path(engine: Path) -> Path:
        return engine.with_name(engine.name + ".json")

    def rebuild_hint(self) -> str:
        return f"Fix: run `trt-distri build {self.manifest.root} --backend {self.backend.name}`"

    def is_fresh(self, engine: Path, key: EngineKey) -> bool:
        """True when `engine` exists, its metadata holds `key`, and size and checksum match."""
        try:
            meta = self._read_meta(engine)
            self._check_file(engine, meta)
        except EngineCacheError:
            return False
        return meta["key"] == key.digest

    def write(self, engine: Path, data: bytes, key: EngineKey, io: list[TensorInfo], segment: Segment,
              stripped: bool = False, weights: list | None = None) -> None:
        """Store `data` at `engine` and its metadata beside it, atomically (module docstring). `stripped`: the
        engine holds no weights and is refitted from the segment's graph when loaded."""
        engine.parent.mkdir(parents=True, exist_ok=True)
        self.meta_path(engine).unlink(missing_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "segment": segment.name, "key": key.digest,
                "fields": key.fields, "stripped": stripped, "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "io": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "is_input": t.is_input} for t in io],
                "weights": [w.to_json() for w in weights or []]}
        _atomic_write(engine, data)
        _atomic_write(self.meta_path(engine), json.dumps(meta, indent=1).encode())

    def verify(self, segment: Segment, arch: str) -> tuple[Path, dict]:
        """The engine of `segment` for `arch` and its metadata, after checking key fields, size and checksum."""
        engine = self.path(segment, arch)
        meta = self._read_meta(engine)
        expected = engine_key(self.manifest, segment, self.backend, arch, self.backend.build_options())
        differences = expected.differences(meta.get("fields", {}), LOAD_FIELDS)
        if differences:
            raise EngineMismatchError(
                f"engine {engine} was built for something else: {'; '.join(differences)}. Note: expected an engine "
                f"built from this manifest's graph on this machine. {self.rebuild_hint()}")
        self._check_file(engine, meta)
        return engine, meta

    def load(self, segment: Segment, options: LoadOptions = LoadOptions(), weights=None) -> Session:
        """Verify, then load the engine of `segment` through the backend (`weights_dir`, `refit_from` and
        `shared_weights` are filled in here). `weights`: the rank's `Backend.shared_weight_store`, handed the
        weights this engine reads (its metadata lists them)."""
        engine, meta = self.verify(segment, self.backend.device_arch(options.device))
        graph = self.manifest.graph_path(segment)
        refs = [WeightRef.from_json(r) for r in meta.get("weights", [])]
        return self.backend.load(engine, replace(
            options, weights_dir=graph.parent, refit_from=graph if meta.get("stripped") else None,
            shared_weights=(weights, refs) if weights is not None and refs else None))

    def _read_meta(self, engine: Path) -> dict:
        meta_path = self.meta_path(engine)
        if not engine.is_file() or not meta_path.is_file():
            what = "engine" if not engine.is_file() else "metadata (the build was interrupted)"
            raise EngineCacheError(f"no usable engine at {engine}: its {what} is missing. Note: expected "
                                   f"{engine.name} and {meta_path.name} written by a finished build. "
                                   f"{self.rebuild_hint()}")
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise CorruptEngineError(f"{meta_path} is not valid JSON ({exc}). {self.rebuild_hint()}") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise EngineMismatchError(f"{meta_path} is not {FORMAT} metadata v{VERSION}. Note: got "
                                      f"{meta.get('format')!r} v{meta.get('version')}. {self.rebuild_hint()}")
        return meta

    def _check_file(self, engine: Path, meta: dict) -> None:
        size = engine.stat().st_size
        if size != meta["bytes"]:
            state = "truncated" if size < meta["bytes"] else "longer than written"
            raise CorruptEngineError(f"engine {engine} is {state}: {size} bytes. Note: expected {meta['bytes']} "
                                     f"bytes (its metadata). {self.rebuild_hint()}")
        digest = sha256_file(engine)
        if digest != meta["sha256"]:
            raise CorruptEngineError(f"engine {engine} is corrupted: its sha256 differs from its metadata. Note: "
                                     f"expected {meta['sha256'][:16]}..., got {digest[:16]}... "
                                     f"{self.rebuild_hint()}")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
