"""Run an exported work directory for n ranks in one process with ONNX Runtime, driven only by the manifest.

Memory is laid out as the distributed runtime lays it out (docs/design.md): each rank writes its fresh tensors into
its exchange area; exchanging a segment copies that segment's byte range of every rank's area into slot j of every
rank's gathered area; stale inputs are read from the gathered area (or zeros for a border halo). Ranks run each
segment in turn, then the segment is exchanged, which is the order the runtime's streams and events enforce.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.export.plan import PatchPlan
from trt_distri.export.unet_check import check_call
from trt_distri.manifest import Manifest, Role, Segment, TensorSpec


@dataclass
class _Rank:
    area: np.ndarray  # uint8, this rank's fresh tensors
    gathered: np.ndarray  # uint8, n slots of every rank's area
    values: dict[str, np.ndarray] = field(default_factory=dict)


class Simulator:
    """Callable like a UNet on full latents: splits rows into patches, runs every rank, joins the outputs."""

    def __init__(self, workdir, providers=("CPUExecutionProvider",)):
        self.manifest = Manifest.load(workdir)
        self.n = self.manifest.devices
        self.bytes = self.manifest.exchange.bytes
        self.entries = self.manifest.exchange.by_name()
        self.providers = list(providers)
        self._sessions: dict[str, object] = {}
        self.ranks = [_Rank(np.zeros(self.bytes, np.uint8), np.zeros(self.n * self.bytes, np.uint8))
                      for _ in range(self.n)]
        self.synced = False

    @property
    def plan(self) -> PatchPlan:
        return PatchPlan.from_manifest(self.manifest.plan)

    def __call__(self, sample, timestep, encoder_hidden_states, added_cond_kwargs=None, *, sync: bool,
                 **unet_kwargs) -> np.ndarray:
        check_call(**unet_kwargs)
        if not sync and not self.synced:
            raise ConfigError("an asynchronous step came before any synchronous one: the stale buffers hold nothing "
                              "yet. Fix: run at least the first step with sync=True (warm-up)")
        sample = np.asarray(sample, np.float32)
        rows = sample.shape[2] // self.n
        shared = {"timestep": np.asarray(timestep, np.float32).reshape(-1)[:1],
                  "encoder_hidden_states": np.asarray(encoder_hidden_states, np.float32)}
        for key, value in (added_cond_kwargs or {}).items():
            shared[key] = np.asarray(value, np.float32)
        for r, rank in enumerate(self.ranks):
            rank.values = {**shared, "sample": np.ascontiguousarray(sample[:, :, r * rows:(r + 1) * rows])}
        for segment in self.manifest.segments("warmup" if sync else "steady"):
            for r in range(self.n):
                self._run(segment, r)
            self._exchange(segment)
        self.synced = True
        return np.concatenate([rank.values["noise_pred"] for rank in self.ranks], axis=2)

    def _session(self, segment: Segment):
        import onnxruntime as ort

        if segment.name not in self._sessions:
            path = str(self.manifest.graph_path(segment))
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # many small sessions
            self._sessions[segment.name] = ort.InferenceSession(path, options, providers=self.providers)
        return self._sessions[segment.name]

    def _run(self, segment: Segment, r: int) -> None:
        rank = self.ranks[r]
        feeds = {i.name: self._stale(i, r) if i.role == Role.STALE else rank.values[i.name] for i in segment.inputs}
        outs = self._session(segment).run([o.name for o in segment.outputs], feeds)
        for spec, value in zip(segment.outputs, outs):
            if spec.role == Role.FRESH:
                entry = self.entries[spec.name]
                rank.area[entry.offset:entry.offset + entry.nbytes] = np.ascontiguousarray(value).view(np.uint8).ravel()
            else:
                rank.values[spec.name] = value

    def _stale(self, spec: TensorSpec, r: int) -> np.ndarray:
        src = spec.source
        entry = self.entries[src.entry]
        slot = r + src.peer
        if src.wrap:
            slot %= self.n
        elif not 0 <= slot < self.n:
            return np.zeros(spec.shape, spec.dtype)
        start = slot * self.bytes + entry.offset
        raw = self.ranks[r].gathered[start:start + entry.nbytes]
        return raw.view(entry.dtype).reshape(entry.shape)

    def _exchange(self, segment: Segment) -> None:
        start, stop = segment.exchange_range
        if start == stop:
            return
        for j, src in enumerate(self.ranks):
            chunk = src.area[start:stop]
            for dst in self.ranks:
                dst.gathered[j * self.bytes + start:j * self.bytes + stop] = chunk
