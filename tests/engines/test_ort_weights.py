"""One copy of the weights per rank (engines/ort_weights.py): every ONNX Runtime session of both graph sets
reads its weights from one store, created once per weight, and computes exactly what a session that loads its own
copy computes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_distri.config import GNMode, Precision
from trt_distri.engines.backend import get_backend
from trt_distri.engines.build import build_workdir
from trt_distri.engines.cache import EngineCache
from trt_distri.errors import CorruptEngineError
from trt_distri.manifest import Manifest

sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
from export_helpers import export_tiny  # noqa: E402


@pytest.fixture(scope="module")
def built(tiny_sdxl, tmp_path_factory):
    workdir = export_tiny(tiny_sdxl, "tiny-sdxl", tmp_path_factory.mktemp("weights"), 2, 64, 64,
                          GNMode.CORRECTED_ASYNC, Precision.FP16)
    build_workdir(workdir, "ort")
    return Manifest.load(workdir)


def _store(manifest: Manifest):
    return get_backend("ort").shared_weight_store(manifest.root / manifest.weights.file, None)


def test_both_graph_sets_share_one_copy(built):
    cache, store = EngineCache(built, get_backend("ort")), _store(built)
    segments = built.segments("warmup") + built.segments("steady")
    sessions = [cache.load(s, weights=store) for s in segments]
    used = {name for s in segments for name, *_ in json.loads(cache.meta_path(cache.path(s, "cpu")).read_text())["weights"]}
    assert store.count() == len(used) > 0  # each weight once, although both sets read (almost) all of them
    assert store.bytes <= built.weights.bytes
    assert all(s.weights is store for s in sessions if s.weights is not None)


def test_shared_weights_compute_what_own_copies_do(built):
    cache, store = EngineCache(built, get_backend("ort")), _store(built)
    segment = max(built.segments("steady"), key=lambda s: len(s.inputs))
    shared, own = cache.load(segment, weights=store), cache.load(segment)
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in own.inputs}
    for name, value in own.run_host(feeds).items():
        # on the CPU, sessions over the shared store run without pre-packed weights and the NCHWc layout (both
        # copy weights, which LoRA writes would miss): other kernels, so the last bit of a sum may differ
        np.testing.assert_allclose(shared.run_host(feeds)[name], value, rtol=1e-3, atol=1e-4)  # fp16 graph


def test_a_short_weights_file_is_named(built, tmp_path):
    short = tmp_path / "weights.bin"
    short.write_bytes((built.root / built.weights.file).read_bytes()[:1000])
    cache = EngineCache(built, get_backend("ort"))
    store = get_backend("ort").shared_weight_store(short, None)
    segment = built.segments("steady")[-1]
    with pytest.raises(CorruptEngineError, match="too short for weight .* Fix: export the work directory again"):
        cache.load(segment, weights=store)


def test_dlpack_view_reads_the_bytes_in_place(monkeypatch):
    """The DLPack structure handed to ORT for a CUDA weight, read here by ORT's CPU build (device type kDLCPU):
    shape, dtype and data pointer are what ORT sees, and add_initializer takes it (ORT does not own it)."""
    import onnxruntime as ort

    from trt_distri.engines import ort_weights

    monkeypatch.setattr(ort_weights, "_KDL_CUDA", 1)
    data = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float16)
    capsule, keep = ort_weights._dlpack_capsule(data.ctypes.data, 0, "float16", data.shape)
    value = ort.OrtValue.from_dlpack(capsule)
    np.testing.assert_array_equal(value.numpy(), data)
    data[0, 0] = 7.0
    assert value.numpy()[0, 0] == 7.0  # a view, not a copy
    ort.SessionOptions().add_initializer("w", value)
