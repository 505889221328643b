"""The GPU runtime's rank processes with host stand-ins for CUDA and NCCL (importable by spawned processes):
everything of runtime.gpu but the device, the communicator and ORT's provider runs on the CPU."""
from __future__ import annotations

from trt_distri.runtime.comm import LocalComm, LocalGroup
from trt_distri.runtime.gpu import GpuRankPool, RankServer, serve_rank
from trt_distri.runtime.host import HostDevice
from trt_distri.runtime.sessions import session_opener


class HostStandIn(HostDevice):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index


class HostRankServer(RankServer):
    def open_device(self, index: int):
        return HostStandIn(index)

    def join(self, ids, group, rank, topo):
        return LocalComm(LocalGroup(topo.devices), self.world_rank, topo.devices, self.device)

    def session_opener(self, manifest, backend, index, cuda_graph):
        assert cuda_graph in (True, False)  # resolved by the pool before the processes start
        return session_opener(manifest, backend, None, self.device)


def serve_host_rank(spec):
    return serve_rank(spec, HostRankServer)


class HostRankPool(GpuRankPool):
    serve = staticmethod(serve_host_rank)


class FakeNccl:
    def unique_id(self) -> bytes:
        return b"\0" * 128
