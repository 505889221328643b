"""runtime/sessions.py: which segments replay CUDA graphs."""
from __future__ import annotations

import types

from trt_distri.runtime.sessions import replayed_segments


def _manifest():
    seg = lambda name: types.SimpleNamespace(name=name)  # noqa: E731
    shared, warm, steady = seg("shared.000"), seg("warmup.000"), seg("steady.000")
    return types.SimpleNamespace(graph_sets={"warmup": (shared, warm), "steady": (shared, steady)}), warm, steady, shared


def test_warmup_segments_replay_graphs_unless_switched_off(monkeypatch):
    manifest, warm, steady, shared = _manifest()
    monkeypatch.delenv("TRT_DISTRI_WARMUP_CUDA_GRAPH", raising=False)
    assert all(s.name in replayed_segments(manifest, True) for s in (warm, steady, shared))
    assert not replayed_segments(manifest, False)
    monkeypatch.setenv("TRT_DISTRI_WARMUP_CUDA_GRAPH", "0")
    assert [s.name in replayed_segments(manifest, True) for s in (warm, steady, shared)] == [False, True, True]
