"""One rank's denoising loop: segments on the compute stream, exchanges on the communication stream.

Ordering (docs/design.md): after a segment that produced fresh tensors, the communication stream waits for it and
exchanges its byte range; before a segment runs, the compute stream waits for the latest exchange of every
segment whose entries it reads (and of itself: that exchange still reads the area it is about to write). In the
steady set a segment reads what it produced one step earlier, so the wait is for the previous step's exchange,
which had a whole step to finish; in the warm-up set it reads what an earlier segment of this step produced, so
the exchange is synchronous. The same rule serves both; nothing else orders the streams.
"""
from __future__ import annotations

import gc
import logging
import os
import statistics
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from trt_distri.engines.backend import get_backend
from trt_distri.errors import ConfigError, InvalidArgumentError
from trt_distri.manifest import Manifest, Segment, TensorSpec, nbytes
from trt_distri.params import MAX_STEPS
from trt_distri.runtime.comm import Communicator
from trt_distri.runtime.layout import RankLayout, SegmentPlan, Slot
from trt_distri.schedule import LinearSchedule

log = logging.getLogger(__name__)
LOAD_THREADS = int(os.environ.get("TRT_DISTRI_LOAD_THREADS", str(min(8, os.cpu_count() or 4))))


#: Per-call model inputs of this rank's UNet batch (fp32), by graph input name: the manifest's `conditioning`.
Conditioning = dict[str, np.ndarray]


@dataclass
class RunOptions:
    warmup_steps: int = 4  # steps 0..warmup_steps run synchronously
    no_comm: bool = False  # skip every exchange (diagnostic: the paper's "No Comm." baseline)
    group: int = 0  # guidance group (0: uncond, 1: cond) when the guidance split applies
    split: bool = False
    guidance_scale: float = 5.0
    on_step: Callable[[int, int], None] | None = None  # (steps done, total), called by world rank 0 (host runs)
    cuda_graph: bool | None = None  # UNet segments replay CUDA graphs; None: uses_cuda_graph decides


def uses_cuda_graph(option: bool | None, backend: str, reused: bool) -> bool:
    """Whether a GPU rank's UNet sessions replay CUDA graphs: as asked; by default, where the loaded ranks generate
    more than once (`reused`) and the backend `supports_cuda_graph` (ONNX Runtime, TensorRT).
    Measured with ONNX Runtime at 1024 on 2 GPUs (docs/benchmarks.md): warm steps with graphs make 1.45x one GPU
    against 0.99x, 0.7-0.9 s less per 30-step image, but capture adds about 2 s to the first image of a process."""
    if option is not None:
        return option
    return reused and get_backend(backend).capabilities().supports_cuda_graph


@dataclass
class StepTimes:
    sync_ms: list[float] = field(default_factory=list)
    async_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        med = lambda xs: round(statistics.median(xs), 3) if xs else None  # noqa: E731
        first = round(self.sync_ms[0], 3) if self.sync_ms else None  # step 0: includes first-run costs
        return {"sync_step_ms": med(self.sync_ms), "async_step_ms": med(self.async_ms), "first_step_ms": first,
                "sync_steps": len(self.sync_ms), "async_steps": len(self.async_ms)}


def _open_all(open_session, segments: list[Segment], stream: int,
              prepare: Callable[[Segment, object], None]) -> list:
    """Open every segment's session, several at a time: session creation (graph parsing, kernel selection, weight
    upload) is mostly native code, and an SDXL work directory has about 140 sessions per rank. `prepare(segment,
    session)` (binding) runs in the loading thread right after. Running each session once there, so that its
    first-run setup would overlap loading, was tried on 2 x H200 (2026-11-30) and broke: ORT runs of several
    threads on the one compute stream invalidated CUDA-graph captures (cuBLAS failure 14) and crashed a 1-GPU rank
    (SIGSEGV); sessions therefore run only from the rank's own thread."""
    workers = max(1, min(LOAD_THREADS, len(segments)))

    def load(segment: Segment):
        session = open_session(segment, stream)
        prepare(segment, session)
        return session

    with ThreadPoolExecutor(workers, thread_name_prefix="load") as pool:
        return list(pool.map(load, segments))


class RankExecutor:
    """Runs the work directory's graphs for one rank; `device` is runtime.host.HostDevice or a CUDA device."""

    def __init__(self, manifest: Manifest, layout: RankLayout, open_session, device, comm: Communicator,
                 options: RunOptions) -> None:
        """`open_session(segment: Segment, stream: int)` loads one graph's session for this rank's device."""
        self.m, self.layout, self.dev, self.comm, self.opt = manifest, layout, device, comm, options
        self.compute, self.comm_stream = device.stream(), device.stream()
        self._streams = (self.compute, self.comm_stream)
        self.memory = {"context": device.memory_used()}
        self.ptr = {name: device.alloc(size) for name, size in self._buffer_sizes().items()}
        for name in ("zeros", "area", "gathered", "own"):
            device.memset(self.ptr[name], 0, layout.buffers[name], self.compute)
        self.memory["buffers"] = device.memory_used() - self.memory["context"]
        segments = manifest.unet_segments()
        slots = {seg.name: self._unet_slots(seg) for plans in layout.sets.values() for seg in plans}
        slots["step"] = self._step_slots()

        def prepare(segment: Segment, session) -> None:
            self._bind(session, slots["step" if segment is manifest.step else segment.name])

        opened = _open_all(open_session, segments + [manifest.step], self.compute, prepare)
        self.sessions = {s.name: session for s, session in zip(segments, opened)}
        self.sessions["step"] = opened[-1]
        self.memory["sessions"] = device.memory_used() - self.memory["context"] - self.memory["buffers"]
        store = getattr(open_session, "weights", None)  # the rank's one copy of the weights, where shared
        self.memory["weights"] = store.bytes if store is not None else None
        self._make_patcher, self._patcher = getattr(open_session, "patcher", None), None
        self._weights = store  # owned by this rank: closed after its sessions
        self.exchanged: dict[tuple[str, int], object] = {}
        self.times = StepTimes()
        self._events: list[tuple[bool, object, object]] = []
        self._latent_bytes = nbytes(self._step_input("latents").shape, "float32")

    def set_adapters(self, adapters) -> dict:
        """Apply exactly these (adapter, scale) pairs to this rank's weights in place ([]: the base weights);
        between generations only. Returns what was written (engines.lora_apply.WeightPatcher.set)."""
        if self._patcher is None:
            if self._make_patcher is None:
                raise ConfigError("this rank's sessions cannot take LoRA adapters. Note: expected sessions opened "
                                  "by runtime.sessions.session_opener. Fix: load the work directory with it")
            self._patcher = self._make_patcher(list(self.sessions.values()), self.compute)
        return self._patcher.set(adapters)
    def close(self) -> None:
        """Release what this rank opened: its sessions, their shared weights, buffers and streams (idempotent).
        The device and the communicator belong to the caller."""
        sessions, patcher, self.sessions, self._patcher = self.sessions, getattr(self, "_patcher", None), {}, None
        if patcher is not None:
            patcher.close()
        for name in list(sessions):
            getattr(sessions.pop(name), "close", lambda: None)()
        weights, self._weights = getattr(self, "_weights", None), None
        if weights is not None:
            gc.collect()  # sessions sit in reference cycles; the weights they read go only after them
            weights.close()
        ptrs, self.ptr = self.ptr, {}
        for ptr in ptrs.values():
            self.dev.free(ptr)
        streams, self._streams = self._streams, ()
        self.dev.release_events()
        for stream in streams:
            self.dev.destroy_stream(stream)

    def _step_input(self, name: str) -> TensorSpec:
        return self.m.step.input(name)

    # ---- memory ---------------------------------------------------------------------------------------------
    def _buffer_sizes(self) -> dict[str, int]:
        sizes = dict(self.layout.buffers)
        latent = nbytes(self._step_input("latents").shape, "float32")
        sizes.update({k: latent for k in ("latents", "latents_prev", "eps_prev", "latents_next", "eps")})
        sizes["guided_noise"] = nbytes(self._step_input("noise_pred").shape, "float32")
        sizes["gathered_latents"] = self.comm.size * latent  # the group's patches, gathered once per generation
        sizes["coef_table"] = 6 * 4 * MAX_STEPS
        sizes["timestep_table"] = 4 * MAX_STEPS
        return sizes

    def address(self, slot: Slot) -> int:
        return self.ptr[slot.buffer] + slot.offset

    def _step_slots(self) -> dict[str, Slot]:
        slots = dict(self.layout.step.slots)
        slots["sample_next"] = Slot("sample")
        slots["noise_pred"] = Slot("guided_noise" if self.opt.split else "noise_pred")
        return slots

    def _unet_slots(self, seg: SegmentPlan) -> dict[str, Slot]:
        slots = dict(seg.slots)
        if "noise_pred" in slots and self.opt.split:
            slot_bytes = self.layout.buffers["noise_pred"]
            slots["noise_pred"] = Slot("guided_noise", self.opt.group * slot_bytes)
        return slots

    def _bind(self, session, slots: dict[str, Slot]) -> None:
        for name, slot in slots.items():
            session.bind(name, self.address(slot))

    # ---- one generation ---------------------------------------------------------------------------------------
    def generate(self, latents: np.ndarray, cond: Conditioning, schedule: LinearSchedule) -> np.ndarray:
        """Denoise this rank's patch of `latents` (1, C, rows, W), fp32, already scaled by init_noise_sigma."""
        self.times = StepTimes()
        self._upload_inputs(latents, cond, schedule)
        for i, step in enumerate(schedule.steps):
            self.comm.check()
            sync = i <= self.opt.warmup_steps
            if i == self.opt.warmup_steps + 1:
                self.dev.wait(self.compute, self.dev.record(self.comm_stream))  # warm-up exchanges are complete
            start = self.dev.record(self.compute)
            # per-step values are copied into fixed buffers: every session keeps the same bindings all run long
            self.dev.copy(self.ptr["timestep"], self.ptr["timestep_table"] + 4 * i, 4, self.compute)
            self.dev.copy(self.ptr["coef"], self.ptr["coef_table"] + 24 * i, 24, self.compute)
            self._unet("warmup" if sync else "steady", i)
            self._scheduler_step(i)
            if self.opt.on_step is not None and self.comm.rank == 0 and self.opt.group == 0:
                self.opt.on_step(i + 1, len(schedule.steps))
            self._events.append((sync, start, self.dev.record(self.compute)))
        self._collect_times()
        return self._gather(latents.shape)

    def _gather(self, shape) -> np.ndarray:
        """Every patch of the group, joined by rows: gathered once, at the end, into a buffer allocated once."""
        full = self.ptr["gathered_latents"]
        self.comm.all_gather(self.ptr["latents"], full, self._latent_bytes, self.compute)
        patches = self.dev.download(full, (self.comm.size,) + tuple(shape), np.float32, self.compute)
        return np.concatenate(list(patches), axis=2)

    def _upload_inputs(self, latents: np.ndarray, cond: Conditioning, schedule: LinearSchedule) -> None:
        steps = schedule.steps
        if len(steps) > MAX_STEPS:  # the tables below would overflow: trt_distri.params refuses this earlier
            raise InvalidArgumentError(f"invalid steps. Note: expected 1..{MAX_STEPS}, got {len(steps)}")
        batch = self.layout.shapes["sample"][0][0]
        self.dev.upload(self.ptr["latents"], latents.astype(np.float32), self.compute)
        for name in ("latents_prev", "eps_prev"):
            self.dev.memset(self.ptr[name], 0, latents.nbytes, self.compute)
        first = np.repeat(latents * np.float32(steps[0].input_scale), batch, axis=0).astype(np.float32)
        self.dev.upload(self.ptr["sample"], first, self.compute)
        coef = [[s.a, s.d, s.b, s.c, self.opt.guidance_scale,
                 steps[i + 1].input_scale if i + 1 < len(steps) else 1.0] for i, s in enumerate(steps)]
        self.dev.upload(self.ptr["coef_table"], np.asarray(coef, np.float32), self.compute)
        self.dev.upload(self.ptr["timestep_table"], np.asarray([s.timestep for s in steps], np.float32),
                        self.compute)
        for name, value in cond.items():
            self.dev.upload(self.ptr[name], np.ascontiguousarray(value, np.float32), self.compute)

    def _unet(self, set_name: str, i: int) -> None:
        for seg in self.layout.sets[set_name]:
            for w in seg.waits:
                event = self.exchanged.get((set_name, w))
                if event is not None:
                    self.dev.wait(self.compute, event)
            session = self.sessions[seg.name]
            session.run_async(self.compute)
            start, stop = seg.exchange
            if stop > start and not self.opt.no_comm:
                self.dev.wait(self.comm_stream, self.dev.record(self.compute))
                for area_offset, own_offset, size in seg.own:  # this rank's own entries it reads back stale
                    self.dev.copy(self.ptr["own"] + own_offset, self.ptr["area"] + area_offset, size,
                                  self.comm_stream)
                self.comm.exchange(self.ptr["area"], self.ptr["gathered"], self.layout.area_bytes, start, stop,
                                   self.comm_stream)
                self.exchanged[(set_name, seg.index)] = self.dev.record(self.comm_stream)

    def _scheduler_step(self, i: int) -> None:
        if self.opt.split:
            slot = self.layout.buffers["noise_pred"]
            own = self.ptr["guided_noise"] + self.opt.group * slot
            other = self.ptr["guided_noise"] + (1 - self.opt.group) * slot
            self.comm.swap_with_partner(own, other, slot, self.compute)
        self.sessions["step"].run_async(self.compute)
        for dst, src in (("latents_prev", "latents"), ("latents", "latents_next"), ("eps_prev", "eps")):
            self.dev.copy(self.ptr[dst], self.ptr[src], self._latent_bytes, self.compute)

    def _collect_times(self) -> None:
        self.dev.synchronize(self.compute)
        self.dev.synchronize(self.comm_stream)
        for sync, start, end in self._events:
            ms = self.dev.elapsed_ms(start, end)
            if ms is not None:
                (self.times.sync_ms if sync else self.times.async_ms).append(ms)
        self._events.clear()
        self.exchanged.clear()
        self.dev.release_events()
