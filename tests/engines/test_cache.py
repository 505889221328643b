"""engines/cache.py and engines/build.py on a hand-written one-segment work directory, with the ORT backend
(always installed, builds in milliseconds): hits, misses, mismatch text, damaged files, interrupted builds, CLI."""
from __future__ import annotations

import hashlib
import os
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import trt_distri.engines.cache as cache_module
from trt_distri.cli import main
from trt_distri.engines.backend import get_backend
from trt_distri.engines.build import build_workdir
from trt_distri.engines.cache import EngineCache
from trt_distri.engines.trt import BuildOptions  # any backend's cache key holds its options' flags
from trt_distri.errors import CorruptEngineError, EngineCacheError, EngineMismatchError
from trt_distri.manifest import Manifest

from helpers import manifest_json
from test_trt_build import _segment, _tiny_graph


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """manifest.json + graphs/steady.0.onnx + graphs/weights.bin, in the shape of an exported work directory."""
    (tmp_path / "graphs").mkdir()
    _tiny_graph(tmp_path / "graphs" / "steady.0.onnx", np.float16)
    segment = _segment("float16")
    weights = (tmp_path / "graphs" / "weights.bin").read_bytes()
    manifest = manifest_json(
        precision="fp16", graph_sets={"warmup": [{**segment, "name": "warmup.0"}],
                                      "steady": [{**segment, "name": "steady.0"}]},
        weights={"file": "graphs/weights.bin", "bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def _cache(workdir: Path) -> EngineCache:
    return EngineCache(Manifest.load(workdir), get_backend("ort"))


def _segment_named(workdir: Path, name: str):
    return next(s for s in Manifest.load(workdir).segments(name.split(".")[0]) if s.name == name)


def test_identical_segments_are_built_once_then_reused(workdir: Path) -> None:
    first = build_workdir(workdir, "ort")
    # one engine per ONNX Runtime target: the CPU provider's, and the CUDA one with fused kernels
    assert sorted(first.built) == ["steady.0.cpu.onnx", "steady.0.cuda.onnx", "warmup.0.cpu.onnx",
                                   "warmup.0.cuda.onnx"] and not first.reused
    second = build_workdir(workdir, "ort")
    assert not second.built and len(second.reused) == 4


def test_changed_graph_or_flag_rebuilds(workdir: Path) -> None:
    build_workdir(workdir, "ort")
    assert len(build_workdir(workdir, "ort", options=BuildOptions(optimization_level=3)).built) == 4
    graph = workdir / "graphs" / "steady.0.onnx"
    model = onnx.load(str(graph), load_external_data=False)
    model.doc_string = "changed"
    onnx.save(model, str(graph))
    assert len(build_workdir(workdir, "ort", options=BuildOptions(optimization_level=3)).built) == 4


def test_loaded_engine_runs(workdir: Path) -> None:
    build_workdir(workdir, "ort")
    session = _cache(workdir).load(_segment_named(workdir, "steady.0"))
    assert {t.name for t in session.outputs} == {"kv.attn1", "attn1.out"}


def test_mismatch_names_each_field(workdir: Path) -> None:
    build_workdir(workdir, "ort")
    cache = _cache(workdir)
    segment = _segment_named(workdir, "steady.0")
    meta_path = cache.meta_path(cache.path(segment, "cpu"))
    meta = json.loads(meta_path.read_text())
    meta["fields"].update(backend_version="0.1", gpu_arch="8.9")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(EngineMismatchError) as info:
        cache.load(segment)
    message = str(info.value)
    assert "backend_version (engine: 0.1, here: " in message and "gpu_arch (engine: 8.9, here: cpu)" in message
    assert "graph" not in message.split("something else:")[1].split(".")[0]
    assert f"trt-distri build {workdir} --backend ort" in message


def test_corrupted_and_truncated_engines_are_detected(workdir: Path) -> None:
    build_workdir(workdir, "ort")
    cache = _cache(workdir)
    segment = _segment_named(workdir, "steady.0")
    engine = cache.path(segment, "cpu")
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(CorruptEngineError, match="corrupted: its sha256 differs.*Fix: run `trt-distri build"):
        cache.load(segment)
    engine.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptEngineError, match=f"truncated: 100 bytes. Note: expected {len(data)} bytes"):
        cache.load(segment)
    assert len(build_workdir(workdir, "ort").built) == 1  # the damaged one only


def test_interrupted_build_leaves_no_usable_engine(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_workdir(workdir, "ort")
    real = cache_module._atomic_write

    def crash_on_metadata(path: Path, data: bytes) -> None:
        if path.suffix == ".json":
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(cache_module, "_atomic_write", crash_on_metadata)
    with pytest.raises(KeyboardInterrupt):
        build_workdir(workdir, "ort", options=BuildOptions(optimization_level=1))  # a new key: rebuilds
    monkeypatch.undo()
    cache = _cache(workdir)
    with pytest.raises(EngineCacheError, match="metadata \\(the build was interrupted\\) is missing"):
        cache.load(_segment_named(workdir, "warmup.0"))
    assert not list(cache.root.glob(".*partial"))


def test_cli_builds_and_reports_progress(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build", str(workdir), "--backend", "ort"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(workdir / "engines" / "ort")
    # two segments, one graph, built once per ONNX Runtime target (cpu, cuda)
    assert "[1/2] warmup.0 (cpu)" in err and "[2/2] warmup.0 (cuda)" in err and "4 engine(s) built" in err


def test_cli_missing_workdir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["build", str(tmp_path / "none"), "--backend", "ort"]) == 2
    assert "manifest.json does not exist" in capsys.readouterr().err


def test_leftovers_of_a_killed_build_are_removed(workdir: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    root = workdir / "engines" / "ort"
    root.mkdir(parents=True)
    stale = root / f".steady.0.cpu.onnx.{int(dead.stdout)}.partial"
    live = root / f".timing.cache.{os.getpid()}.partial"  # this process: alive
    stale.write_bytes(b"half"), live.write_bytes(b"being written")
    build_workdir(workdir, "ort")
    assert not stale.exists() and live.exists()


def test_a_second_build_waits_for_the_first_and_reuses_its_engines(workdir: Path) -> None:
    import fcntl
    import threading

    root = workdir / "engines" / "ort"
    root.mkdir(parents=True)
    reports = []
    with open(root / ".build.lock", "a+") as held:  # a first build in progress
        fcntl.flock(held, fcntl.LOCK_EX)
        waiting = threading.Thread(target=lambda: reports.append(build_workdir(workdir, "ort")))
        waiting.start()
        waiting.join(2.0)
        assert waiting.is_alive() and not list(root.glob("*.onnx"))  # it waits instead of building too
        first = _build_unlocked(workdir)
        fcntl.flock(held, fcntl.LOCK_UN)
    waiting.join(60)
    assert {name.split(".")[0] for name in first} == {"steady", "warmup"}
    assert not reports[0].built and sorted(reports[0].reused) == sorted(first)


def _build_unlocked(workdir: Path) -> list[str]:
    """What the lock holder builds (the build function without taking the lock)."""
    from trt_distri.engines import build

    report = build.BuildReport()
    cache = _cache(workdir)
    options = cache.backend.build_options(cache.root)  # what build_workdir uses
    build._build(cache.manifest, cache, "ort", build._targets(cache.backend, None), options, report, None)
    return report.built
