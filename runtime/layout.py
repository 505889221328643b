"""Where every tensor of a rank lives, computed from the manifest alone (no torch, no onnx).

Memory of one rank: the exchange area; the gathered area, one slot per *peer* (n - 1: a rank never receives its
own area); a small `own` buffer with copies of the few own entries a rank reads back stale (GroupNorm statistics
in corrected-async mode); a zero buffer for border halos; one buffer per model input; one `activations` block in
which every cross-segment activation has an offset, activations whose lifetimes (the segments from producer to
last reader, in either graph set) do not overlap sharing memory; the latents state and the step graph's buffers.
Every segment input and output is resolved to an address (`Slot`), so binding a session is a loop over names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from trt_distri.errors import ConfigError
from trt_distri.manifest import ALIGN, ExchangeEntry, Manifest, Role, Segment, TensorSpec


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
    own: list[tuple[int, int, int]]  # (area offset, `own` buffer offset, bytes): copied for this rank to read back
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
    read_own: dict[str, int] = field(default_factory=dict)  # own entry read back -> offset in the `own` buffer
    activations: dict[str, int] = field(default_factory=dict)  # activation -> offset in the `activations` block

    @classmethod
    def from_manifest(cls, manifest: Manifest, rank: int) -> "RankLayout":
        n = manifest.devices
        if not 0 <= rank < n:
            raise ConfigError(f"patch rank {rank} does not exist: the work directory splits the image into {n} "
                              f"patch(es). Note: expected a rank in 0..{n - 1}, got {rank}. Fix: pass a rank below {n},"
                              " or export for more GPUs")
        layout = cls(rank, n, manifest.exchange.bytes)
        layout.buffers.update({"area": layout.area_bytes, "gathered": max((n - 1) * layout.area_bytes, ALIGN)})
        entries = manifest.exchange.by_name()
        own = sorted({i.source.entry for seg in manifest.unet_segments() for i in seg.inputs
                      if i.role == Role.STALE and i.source.peer == 0},
                     key=lambda name: entries[name].offset)
        layout.read_own, layout.buffers["own"] = _pack_in_order([(name, entries[name].nbytes) for name in own])
        layout.buffers["zeros"] = max([e.nbytes for e in entries.values()] + [ALIGN])
        layout.activations, layout.buffers["activations"] = pack_activations(manifest.graph_sets)
        for set_name, segments in manifest.graph_sets.items():
            layout.sets[set_name] = [layout._plan(seg, i, segments, entries) for i, seg in enumerate(segments)]
        layout.step = layout._plan(manifest.step, 0, (manifest.step,), entries)
        return layout

    def _plan(self, seg: Segment, index: int, segments: tuple[Segment, ...],
              entries: dict[str, ExchangeEntry]) -> SegmentPlan:
        producer = {o.name: i for i, s in enumerate(segments) for o in s.outputs if o.role == Role.FRESH}
        slots, waits = {}, set()
        for spec in seg.inputs + seg.outputs:
            self.shapes[spec.name] = (list(spec.shape), spec.dtype)
            if spec.role == Role.STALE:
                slots[spec.name] = self._stale_slot(spec, entries)
                if spec.source.entry in producer:
                    waits.add(producer[spec.source.entry])
            elif spec.role == Role.FRESH:
                slots[spec.name] = Slot("area", entries[spec.name].offset)
            elif spec.role == Role.ACTIVATION:
                slots[spec.name] = Slot("activations", self.activations[spec.name])
            else:
                self.buffers.setdefault(spec.name, spec.nbytes)
                slots[spec.name] = Slot(spec.name)
        start, stop = seg.exchange_range
        if stop > start:
            waits.add(index)  # its previous exchange still reads the area this run writes
        own = [(entries[o.name].offset, self.read_own[o.name], entries[o.name].nbytes)
               for o in seg.outputs if o.name in self.read_own]
        return SegmentPlan(seg.name, seg.file, index, slots, (start, stop), own, sorted(waits))

    def _stale_slot(self, spec: TensorSpec, entries: dict[str, ExchangeEntry]) -> Slot:
        src = spec.source
        peer = self.rank + src.peer
        if src.wrap:
            peer %= self.devices
        elif not 0 <= peer < self.devices:
            return Slot("zeros")
        if peer == self.rank:
            return Slot("own", self.read_own[src.entry])
        return Slot("gathered", peer_slot(self.rank, peer) * self.area_bytes + entries[src.entry].offset)


def peer_slot(rank: int, peer: int) -> int:
    """The slot of `peer`'s area in `rank`'s gathered area, which has none for `rank` itself."""
    if peer == rank:
        raise ValueError(f"rank {rank} has no slot for itself in its gathered area")
    return peer if peer < rank else peer - 1


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _pack_in_order(items: list[tuple[str, int]]) -> tuple[dict[str, int], int]:
    offsets, pos = {}, 0
    for name, size in items:
        offsets[name] = pos
        pos += _align(size)
    return offsets, max(pos, ALIGN)


def pack_activations(graph_sets: dict[str, tuple[Segment, ...]]) -> tuple[dict[str, int], int]:
    """Offsets of every cross-segment activation in one block, and the block's size. An activation lives from
    its producer to its last reader, inclusive, in each graph set that has it; two whose lifetimes overlap in some
    set get disjoint bytes, the others may share. Largest first, each at the lowest offset that fits (a
    segment's inputs and outputs never share memory, so a session may read one while writing another)."""
    lives: dict[str, dict[str, list[int]]] = {}
    sizes: dict[str, int] = {}
    for set_name, segments in graph_sets.items():
        for i, seg in enumerate(segments):
            for spec in seg.inputs + seg.outputs:
                if spec.role == Role.ACTIVATION:
                    span = lives.setdefault(spec.name, {}).setdefault(set_name, [i, i])
                    span[0], span[1] = min(span[0], i), max(span[1], i)
                    sizes[spec.name] = _align(spec.nbytes)

    def overlap(a: str, b: str) -> bool:
        return any(s in lives[b] and lives[a][s][0] <= lives[b][s][1] and lives[b][s][0] <= lives[a][s][1]
                   for s in lives[a])

    offsets: dict[str, int] = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        taken = sorted((offsets[o], offsets[o] + sizes[o]) for o in offsets if overlap(name, o))
        pos = 0
        for lo, hi in taken:
            if pos + sizes[name] <= lo:
                break
            pos = max(pos, hi)
        offsets[name] = pos
    return offsets, max([offsets[n] + sizes[n] for n in offsets] + [ALIGN])
