"""NCCL in two layers: a thin ctypes binding faithful to the C API, then the runtime's communicator on top.

Why ctypes and not a Python package: the runtime must import without torch, and libnccl is already on every GPU
host (inside the nvidia-nccl wheel that PyTorch or nccl4py brings, or the system's). Every collective takes an
explicit stream, so communication runs on the runtime's own communication stream, apart from compute.
"""
from __future__ import annotations

import ctypes
import os

from trt_distri.errors import TrtDistriError
from trt_distri.native import load_first, wheel_libraries
from trt_distri.runtime.comm import Communicator, RankFailedError
from trt_distri.runtime.layout import peer_slot

NCCL_UINT8 = 1  # ncclUint8 in ncclDataType_t
UNIQUE_ID_BYTES = 128


class NcclError(TrtDistriError):
    """An NCCL call failed."""


class UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * UNIQUE_ID_BYTES)]


def _candidates() -> list[str]:
    found = [os.environ["TRT_DISTRI_NCCL_LIBRARY"]] if os.environ.get("TRT_DISTRI_NCCL_LIBRARY") else []
    # the nvidia-nccl-cu12/cu13 wheels (PyTorch's, nccl4py's)
    found += wheel_libraries(os.path.join("nccl*", "lib", "libnccl.so*"))
    return found + ["libnccl.so.2", "libnccl.so"]


class NcclLibrary:
    """The C functions the runtime uses, with their signatures."""

    _SIGNATURES = {
        "ncclGetVersion": [ctypes.POINTER(ctypes.c_int)],
        "ncclGetUniqueId": [ctypes.POINTER(UniqueId)],
        "ncclCommInitRank": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, UniqueId, ctypes.c_int],
        "ncclAllGather": [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p,
                          ctypes.c_void_p],
        "ncclSend": [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p],
        "ncclRecv": [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p],
        "ncclGroupStart": [],
        "ncclGroupEnd": [],
        "ncclCommDestroy": [ctypes.c_void_p],
    }

    def __init__(self) -> None:
        self.lib, self.path = load_first(_candidates(), "libnccl",
                                         "pip install nvidia-nccl-cu13 (or set TRT_DISTRI_NCCL_LIBRARY)")
        for name, args in self._SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        self.lib.ncclGetErrorString.argtypes, self.lib.ncclGetErrorString.restype = [ctypes.c_int], ctypes.c_char_p

    def check(self, result: int, what: str) -> None:
        if result != 0:
            raise NcclError(f"{what} failed: {self.lib.ncclGetErrorString(result).decode()} (ncclResult {result})")

    def __getattr__(self, name: str):
        fn = getattr(self.lib, name)
        return lambda *args: self.check(fn(*args), name)

    def version(self) -> int:
        v = ctypes.c_int()
        self.check(self.lib.ncclGetVersion(ctypes.byref(v)), "ncclGetVersion")
        return v.value

    def unique_id(self) -> bytes:
        uid = UniqueId()
        self.check(self.lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        return bytes(uid.internal)

    def init_rank(self, size: int, uid: bytes, rank: int) -> ctypes.c_void_p:
        comm, u = ctypes.c_void_p(), UniqueId()
        ctypes.memmove(u.internal, uid, UNIQUE_ID_BYTES)
        self.check(self.lib.ncclCommInitRank(ctypes.byref(comm), size, u, rank), "ncclCommInitRank")
        return comm


class NcclComm(Communicator):
    """The patch group's communicator, plus a world communicator for the guidance partner when groups = 2."""

    def __init__(self, lib: NcclLibrary, device, group_uid: bytes, rank: int, size: int,
                 world_uid: bytes | None = None, world_rank: int = 0, world: int = 1) -> None:
        self.lib, self.device, self.rank, self.size = lib, device, rank, size
        self.comm = lib.init_rank(size, group_uid, rank)
        self.world_rank, self.world = world_rank, world
        self.world_comm = lib.init_rank(world, world_uid, world_rank) if world_uid and world > size else None

    def exchange(self, area: int, gathered: int, slot_bytes: int, start: int, stop: int, stream: int) -> None:
        n = stop - start
        if self.size == 1:
            return
        self.lib.ncclGroupStart()
        for peer in range(self.size):
            if peer != self.rank:
                self.lib.ncclSend(area + start, n, NCCL_UINT8, peer, self.comm, stream)
                self.lib.ncclRecv(gathered + peer_slot(self.rank, peer) * slot_bytes + start, n, NCCL_UINT8, peer,
                                  self.comm, stream)
        self.lib.ncclGroupEnd()

    def all_gather(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        self.lib.ncclAllGather(src, dst, nbytes, NCCL_UINT8, self.comm, stream)

    def swap_with_partner(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        if self.world_comm is None:
            raise RankFailedError("the guidance split needs a world communicator; none was created")
        partner = (self.world_rank + self.size) % self.world
        self.lib.ncclGroupStart()
        self.lib.ncclSend(src, nbytes, NCCL_UINT8, partner, self.world_comm, stream)
        self.lib.ncclRecv(dst, nbytes, NCCL_UINT8, partner, self.world_comm, stream)
        self.lib.ncclGroupEnd()

    def close(self) -> None:
        for comm in (self.comm, self.world_comm):
            if comm is not None:
                self.lib.lib.ncclCommDestroy(comm)
        self.comm = self.world_comm = None
