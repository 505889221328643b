"""The rank's memory plan (runtime/layout.py): activations packed by lifetime, a gathered area without the own
slot, own stale entries in a small buffer of their own."""
from __future__ import annotations

import sys
from itertools import combinations
from pathlib import Path

import pytest

from trt_distri.config import GNMode, Precision
from trt_distri.manifest import Manifest
from trt_distri.runtime.layout import RankLayout, pack_activations, peer_slot

sys.path.insert(0, str(Path(__file__).parents[1] / "export"))
from export_helpers import export_tiny  # noqa: E402


@pytest.fixture(scope="module")
def manifest(tiny_sdxl, tmp_path_factory) -> Manifest:
    workdir = export_tiny(tiny_sdxl, "tiny-sdxl", tmp_path_factory.mktemp("layout"), 3, 96, 64,
                          GNMode.CORRECTED_ASYNC, Precision.FP16)
    return Manifest.load(workdir)


def _lifetimes(graph_sets: dict) -> dict[str, dict[str, tuple[int, int]]]:
    spans: dict[str, dict[str, tuple[int, int]]] = {}
    for set_name, segments in graph_sets.items():
        for i, seg in enumerate(segments):
            for spec in seg.inputs + seg.outputs:
                if spec.role == "activation":
                    lo, hi = spans.setdefault(spec.name, {}).get(set_name, (i, i))
                    spans[spec.name][set_name] = (min(lo, i), max(hi, i))
    return spans


def test_live_activations_never_share_bytes(manifest):
    offsets, total = pack_activations(manifest.graph_sets)
    layout = RankLayout.from_manifest(manifest, 1)
    spans = _lifetimes(manifest.graph_sets)
    sizes = {s.name: s for seg in manifest.unet_segments() for s in seg.outputs}
    shared = 0
    for a, b in combinations(offsets, 2):
        live_together = any(s in spans[b] and spans[a][s][0] <= spans[b][s][1] and spans[b][s][0] <= spans[a][s][1]
                            for s in spans[a])
        a_end = offsets[a] + sizes[a].nbytes
        b_end = offsets[b] + sizes[b].nbytes
        disjoint = a_end <= offsets[b] or b_end <= offsets[a]
        assert disjoint or not live_together, (a, b)
        shared += not disjoint
    naive = sum(sizes[n].nbytes for n in offsets)
    assert shared > 0 and total < naive  # memory is really reused, and the block is smaller than one buffer each
    assert layout.buffers["activations"] == total


def test_gathered_area_has_no_own_slot(manifest):
    n = manifest.devices
    for rank in range(n):
        layout = RankLayout.from_manifest(manifest, rank)
        assert layout.buffers["gathered"] == (n - 1) * layout.area_bytes
        slots = [s for seg in layout.sets["steady"] for s in seg.slots.values() if s.buffer == "gathered"]
        assert slots and all(s.offset < (n - 1) * layout.area_bytes for s in slots)
        own = [s for seg in layout.sets["steady"] for s in seg.slots.values() if s.buffer == "own"]
        assert own and all(s.offset < layout.buffers["own"] for s in own)  # corrected-async reads its own stats
    assert [peer_slot(1, p) for p in (0, 2)] == [0, 1] and [peer_slot(0, p) for p in (1, 2)] == [0, 1]
    with pytest.raises(ValueError):
        peer_slot(2, 2)
