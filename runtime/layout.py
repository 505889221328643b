"""Where every tensor of a rank lives, computed from the manifest alone (no torch, no onnx).

Memory of one rank: the exchange area, the gathered area (n slots), a zero buffer for border halos, one buffer per
model input and cross-segment activation, the latents state and the step graph's buffers. Every segment input and
output is resolved to an address (`Slot`), so binding a session is a loop over names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trt_distri.errors import ConfigError
from trt_distri.export.manifest import nbytes

_ALIGN = 256


@dataclass(frozen=True)
class Slot:
    buffer: str  # "area", "gathered", "zeros", or a named buffer
    offset: int = 0


@dataclass
class SegmentPlan:
    name: str
    file: str
    index: int
    slots: dict[str, Slot]  # every input and output name -> address
    exchange: tuple[int, int]  # byte range of the exchange area this segment produces
    own: list[tuple[int, int]]  # parts of that range that this rank itself reads back (from its own slot)
    waits: list[int]  # indices (same set) whose latest exchange must be complete before this segment runs


@dataclass
class RankLayout:
    """Addresses for patch rank `rank` of `devices`; `buffers` gives the size of every named buffer."""

    rank: int
    devices: int
    area_bytes: int
    buffers: dict[str, int] = field(default_factory=dict)
    sets: dict[str, list[SegmentPlan]] = field(default_factory=dict)
    step: SegmentPlan | None = None
    shapes: dict[str, tuple[list[int], str]] = field(default_factory=dict)
    read_own: set[str] = field(default_factory=set)

    @classmethod
    def from_manifest(cls, data: dict, rank: int) -> "RankLayout":
        n = data["plan"]["devices"]
        if not 0 <= rank < n:
            raise ConfigError(f"patch rank {rank} does not exist: the work directory splits the image into {n} "
                              f"patch(es). Note: expected a rank in 0..{n - 1}, got {rank}. Fix: pass a rank below {n},"
                              " or export for more GPUs")
        layout = cls(rank, n, data["exchange"]["bytes"])
        layout.buffers.update({"area": layout.area_bytes, "gathered": n * layout.area_bytes})
        entries = {e["name"]: e for e in data["exchange"]["entries"]}
        layout.read_own = {i["source"]["entry"] for segs in data["graph_sets"].values() for seg in segs
                           for i in seg["inputs"] if i["role"] == "stale" and i["source"]["peer"] == 0}
        layout.buffers["zeros"] = max([e["nbytes"] for e in entries.values()] + [_ALIGN])
        for set_name, segments in data["graph_sets"].items():
            layout.sets[set_name] = [layout._plan(seg, i, segments, entries) for i, seg in enumerate(segments)]
        layout.step = layout._plan(data["step"], 0, [data["step"]], entries)
        return layout

    def _plan(self, seg: dict, index: int, segments: list[dict], entries: dict) -> SegmentPlan:
        producer = {o["name"]: i for i, s in enumerate(segments) for o in s["outputs"] if o["role"] == "fresh"}
        slots, waits = {}, set()
        for spec in seg["inputs"] + seg["outputs"]:
            self.shapes[spec["name"]] = (spec["shape"], spec["dtype"])
            if spec["role"] == "stale":
                slots[spec["name"]] = self._stale_slot(spec, entries)
                if spec["source"]["entry"] in producer:
                    waits.add(producer[spec["source"]["entry"]])
            elif spec["role"] == "fresh":
                slots[spec["name"]] = Slot("area", entries[spec["name"]]["offset"])
            else:
                self.buffers.setdefault(spec["name"], nbytes(spec["shape"], spec["dtype"]))
                slots[spec["name"]] = Slot(spec["name"])
        start, stop = seg.get("exchange_range", (0, 0))
        if stop > start:
            waits.add(index)  # its previous exchange still reads the area this run writes
        own = [(entries[o["name"]]["offset"], entries[o["name"]]["offset"] + entries[o["name"]]["nbytes"])
               for o in seg["outputs"] if o["name"] in self.read_own]
        return SegmentPlan(seg["name"], seg["file"], index, slots, (start, stop), own, sorted(waits))

    def _stale_slot(self, spec: dict, entries: dict) -> Slot:
        src = spec["source"]
        slot = self.rank + src["peer"]
        if src["wrap"]:
            slot %= self.devices
        elif not 0 <= slot < self.devices:
            return Slot("zeros")
        return Slot("gathered", slot * self.area_bytes + entries[src["entry"]]["offset"])
