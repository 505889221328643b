"""Owners free what they allocate: a rank's close() returns every buffer, stream and session (counted by a host
stand-in for the CUDA device), a generation allocates nothing, and a launched rank frees its rank after each
generation. On a GPU, benchmarks/release_check.py measures device memory over create/generate/close cycles."""
from __future__ import annotations

import numpy as np
import pytest
from host_ranks import FakeNccl, HostRankServer, HostStandIn
from test_local_runtime import WARMUP, _export, _inputs

import trt_distri.runtime.gpu as gpu
from trt_distri.manifest import Manifest
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.gpu import Request
from trt_distri.runtime.launch import WorkerSpec
from trt_distri.runtime.local import LocalRanks, run_local


class CountingDevice(HostStandIn):
    """Host memory that counts what is held: live allocations and streams, events recorded and released."""

    devices: list["CountingDevice"] = []

    def __init__(self, index: int = 0) -> None:
        super().__init__(index)
        self.live, self.streams, self.allocations, self.closed = set(), set(), 0, False
        CountingDevice.devices.append(self)

    def alloc(self, nbytes: int) -> int:
        ptr = super().alloc(nbytes)
        self.live.add(ptr)
        self.allocations += 1
        return ptr

    def free(self, ptr: int) -> None:
        self.live.discard(ptr)
        super().free(ptr)

    def stream(self) -> int:
        handle = 1000 + len(self.streams) + self.allocations
        self.streams.add(handle)
        return handle

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def close(self) -> None:
        self.closed = True
        super().close()


class CountingSession:
    opened = closed = 0

    def __init__(self, session) -> None:
        self.session = session
        self.inputs, self.outputs = session.inputs, session.outputs
        CountingSession.opened += 1

    def bind(self, name, ptr):
        self.session.bind(name, ptr)

    def run_async(self, stream=0):
        self.session.run_async(0)

    def close(self):
        CountingSession.closed += 1


class CountingRankServer(HostRankServer):
    def open_device(self, index: int):
        return CountingDevice(index)

    def session_opener(self, workdir, backend, index, cuda_graph):
        opener = super().session_opener(workdir, backend, index, cuda_graph)
        return lambda segment, stream: CountingSession(opener(segment, stream))


@pytest.fixture
def counted(tiny_sd, tmp_path, monkeypatch):
    CountingDevice.devices, CountingSession.opened, CountingSession.closed = [], 0, 0
    monkeypatch.setattr(gpu, "NcclLibrary", FakeNccl)
    work = _export(tiny_sd, "tiny-sd", tmp_path, 1)
    _, _, inputs = _inputs(tiny_sd, "tiny-sd")
    return work, inputs


def test_rank_server_close_frees_everything_and_generations_allocate_nothing(counted):
    work, inputs = counted
    server = CountingRankServer(WorkerSpec(0, 0, {"workdir": str(work), "backend": "ort", "ids": [b"", b""],
                                                  "cuda_graph": False}))
    device = server.device
    request = Request(inputs, RunOptions(warmup_steps=WARMUP))
    first = server(request)["latents"]
    held = (device.allocations, len(device.live), len(device.streams))
    second = server(request)["latents"]
    assert (device.allocations, len(device.live), len(device.streams)) == held  # nothing per generation
    assert np.array_equal(first, second)
    server.close()
    assert not device.live and not device.streams and device.closed
    assert CountingSession.opened > 0 and CountingSession.closed == CountingSession.opened


def test_a_launched_rank_frees_its_rank_after_each_generation(counted, tmp_path, monkeypatch):
    work, inputs = counted
    monkeypatch.setattr(gpu, "RankServer", CountingRankServer)
    for generation in range(2):
        directory = tmp_path / f"generation-{generation}"
        directory.mkdir()
        latents, _ = gpu.run_launched_rank(work, inputs, RunOptions(warmup_steps=WARMUP), directory,
                                           world_rank=0, gpu=0)
        assert latents is not None
    assert len(CountingDevice.devices) == 2
    assert all(not d.live and not d.streams and d.closed for d in CountingDevice.devices)
    assert CountingSession.closed == CountingSession.opened


def test_cpu_ranks_close_releases_their_sessions_and_buffers(counted):
    work, inputs = counted
    expected, _ = run_local(work, inputs, RunOptions(warmup_steps=WARMUP))
    ranks = LocalRanks(Manifest.load(work))
    executors = list(ranks.executors)
    assert np.array_equal(ranks.run(inputs, RunOptions(warmup_steps=WARMUP)), expected)
    ranks.close()
    assert all(not ex.sessions and not ex.ptr and not ex.dev._buffers for ex in executors)
