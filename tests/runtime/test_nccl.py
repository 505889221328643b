"""NcclComm (runtime/nccl.py) against a recording stand-in for NcclLibrary, without a GPU: the calls it makes
(communicator, peer, pointer, byte count, stream, group brackets) are recorded per rank, and the library then moves
the bytes of matched send/recv pairs between host buffers as NCCL would, so the gathered areas can be checked
against the layout written out here (peer j of rank r at slot j for j < r, j - 1 above: no slot for r itself)."""
from __future__ import annotations

import ctypes
from collections import defaultdict
from typing import NamedTuple

import numpy as np
import pytest

from trt_distri.runtime.nccl import NCCL_UINT8, NcclComm


class Call(NamedTuple):
    kind: str  # "send" or "recv"
    ptr: int
    count: int
    dtype: int
    peer: int
    comm: tuple  # (uid, rank)
    stream: int


class RecordingNccl:
    """The NcclLibrary methods NcclComm calls. A communicator handle is (uid, rank); point-to-point calls are kept
    per group (ncclGroupStart .. ncclGroupEnd) and only delivered by `deliver`, once every rank has posted. Every
    range sent or received must lie inside one of the `memory` arrays (host stand-ins of device buffers)."""

    def __init__(self, *memory: np.ndarray) -> None:
        self.memory = [(a.ctypes.data, a.nbytes) for a in memory]
        self.groups: list[list[Call]] = []
        self._open: list[Call] | None = None
        self.destroyed: list[tuple] = []
        self.lib = self  # NcclComm.close calls self.lib.lib.ncclCommDestroy

    def init_rank(self, size: int, uid: bytes, rank: int) -> tuple:
        assert 0 <= rank < size and len(uid) == 128
        return uid, rank

    def ncclGroupStart(self) -> None:
        assert self._open is None, "nested ncclGroupStart"
        self._open = []

    def ncclGroupEnd(self) -> None:
        assert self._open is not None, "ncclGroupEnd without ncclGroupStart"
        self.groups.append(self._open)
        self._open = None

    def ncclSend(self, ptr, count, dtype, peer, comm, stream) -> None:
        self._call("send", ptr, count, dtype, peer, comm, stream)

    def ncclRecv(self, ptr, count, dtype, peer, comm, stream) -> None:
        self._call("recv", ptr, count, dtype, peer, comm, stream)

    def ncclCommDestroy(self, comm) -> None:
        self.destroyed.append(comm)

    def _call(self, kind, ptr, count, dtype, peer, comm, stream) -> None:
        assert self._open is not None, "ncclSend/ncclRecv outside a group: NCCL would deadlock the ranks"
        self._open.append(Call(kind, int(ptr), int(count), dtype, peer, comm, stream))

    def calls(self) -> list[Call]:
        return [call for group in self.groups for call in group]

    def deliver(self) -> None:
        """Match the k-th send from a to b with the k-th recv of b from a on the same communicator (NCCL's order);
        sizes must agree and nothing may be left unmatched, else NCCL would hang."""
        sends, recvs = defaultdict(list), defaultdict(list)
        for kind, ptr, count, dtype, peer, (uid, rank), _ in self.calls():
            assert dtype == NCCL_UINT8
            if kind == "send":
                sends[uid, rank, peer].append((ptr, count))
            else:
                recvs[uid, peer, rank].append((ptr, count))
        assert sends.keys() == recvs.keys(), "a send or a receive without its partner"
        for key, posted in sends.items():
            assert [c for _, c in posted] == [c for _, c in recvs[key]], f"sizes differ on {key}"
            for (src, count), (dst, _) in zip(posted, recvs[key]):
                self._inside(src, count), self._inside(dst, count)
                ctypes.memmove(dst, src, count)

    def _inside(self, ptr: int, count: int) -> None:
        assert any(base <= ptr and ptr + count <= base + size for base, size in self.memory), \
            f"bytes [{ptr:#x}, +{count}) lie outside every buffer"


SLOT = 256  # bytes of one rank's exchange area: the gathered area's slot stride


def _slot(rank: int, peer: int) -> int:
    return [j for j in range(8) if j != rank].index(peer)


@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("start, stop", [(0, SLOT), (64, 96)])
def test_exchange_fills_each_peer_slot_with_that_peers_range(size, start, stop):
    rng = np.random.default_rng(size)
    areas = [rng.integers(0, 255, SLOT, np.uint8) for _ in range(size)]
    gathered = [np.full((size - 1) * SLOT, 0xEE, np.uint8) for _ in range(size)]
    lib = RecordingNccl(*areas, *gathered)
    comms = [NcclComm(lib, None, b"g" * 128, r, size) for r in range(size)]
    for r, comm in enumerate(comms):
        comm.exchange(areas[r].ctypes.data, gathered[r].ctypes.data, SLOT, start, stop, stream=100 + r)
    lib.deliver()
    for r in range(size):
        want = np.full((size - 1, SLOT), 0xEE, np.uint8)
        for j in range(size):
            if j != r:
                want[_slot(r, j), start:stop] = areas[j][start:stop]
        np.testing.assert_array_equal(gathered[r].reshape(size - 1, SLOT), want, err_msg=f"rank {r}")
    # one group per rank, on its own stream and its group communicator, one send and one receive per peer
    assert len(lib.groups) == size
    for r, group in enumerate(lib.groups):
        assert sorted((c.kind, c.peer) for c in group) == \
            sorted((kind, j) for kind in ("send", "recv") for j in range(size) if j != r)
        assert all(c.count == stop - start and c.comm == (b"g" * 128, r) and c.stream == 100 + r for c in group)
        assert all(c.ptr == areas[r].ctypes.data + start for c in group if c.kind == "send")


def test_one_rank_exchanges_nothing():
    lib = RecordingNccl()
    area = np.zeros(SLOT, np.uint8)
    NcclComm(lib, None, b"g" * 128, 0, 1).exchange(area.ctypes.data, 0, SLOT, 0, SLOT, stream=1)
    assert lib.groups == []


def test_swap_with_partner_uses_the_world_communicator():
    """Guidance split, 2 groups of 2: world rank w swaps with w + 2 (mod 4) on the world communicator."""
    size, world = 2, 4
    src = [np.full(16, w, np.uint8) for w in range(world)]
    dst = [np.zeros(16, np.uint8) for _ in range(world)]
    lib = RecordingNccl(*src, *dst)
    comms = [NcclComm(lib, None, b"g" * 128, w % size, size, b"w" * 128, w, world) for w in range(world)]
    for w, comm in enumerate(comms):
        comm.swap_with_partner(src[w].ctypes.data, dst[w].ctypes.data, 16, stream=w)
    lib.deliver()
    assert [int(d[0]) for d in dst] == [2, 3, 0, 1] and all((d == d[0]).all() for d in dst)
    assert all(c.comm[0] == b"w" * 128 for c in lib.calls())
    for comm in comms:
        comm.close()
    assert len(lib.destroyed) == 2 * world and all(c.comm is None and c.world_comm is None for c in comms)
