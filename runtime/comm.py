"""What the executor asks of a communicator, and the in-process one used on CPUs.

A communicator connects the ranks that share one image (a *patch group*); with the guidance split, a rank also
has a *partner*: the rank of the other group that owns the same patch. Every call takes the stream it is ordered
on (a no-op on the host), like NCCL's.

`exchange` is the one collective of the method (docs/design.md): bytes [start, stop) of every rank's exchange
area land in every other rank's gathered area, in the slot `layout.peer_slot(that rank, sender)` (slot stride
`slot_bytes`; a gathered area has no slot for its own rank).
"""
from __future__ import annotations

import abc
import threading

from trt_distri.errors import TrtDistriError
from trt_distri.runtime.layout import peer_slot


class RankFailedError(TrtDistriError):
    """Another rank stopped (an error, a kill, Ctrl-C); this one stopped too instead of waiting forever."""


class Communicator(abc.ABC):
    rank: int
    size: int

    @abc.abstractmethod
    def exchange(self, area: int, gathered: int, slot_bytes: int, start: int, stop: int, stream: int) -> None:
        """Every peer's slot in `gathered` receives that peer's bytes [start, stop)."""

    @abc.abstractmethod
    def all_gather(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        """dst (size x nbytes, in rank order) receives every rank's src."""

    @abc.abstractmethod
    def swap_with_partner(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        """Send src to the partner rank and receive the partner's into dst (guidance split only)."""

    def check(self) -> None:
        """Raise RankFailedError when the group was aborted (called once per step: a rank stops between steps)."""

    def close(self) -> None:
        """Release resources."""


class LocalGroup:
    """Shared state of the ranks of one process (threads): registered memory and a barrier."""

    def __init__(self, world: int, timeout_s: float = 600.0) -> None:
        self.world = world
        self.barrier = threading.Barrier(world, timeout=timeout_s)
        self.posted: dict[int, tuple] = {}
        self.failure: str | None = None

    def sync(self) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise RankFailedError(f"stopped because another rank failed: {self.failure or 'timed out'}") from None

    def abort(self, reason: str) -> None:
        self.failure = self.failure or reason
        self.barrier.abort()


class LocalComm(Communicator):
    """Ranks as threads of one process; memory is host memory (runtime.host.HostDevice), copies are memmove.

    World rank w = group * size + rank; a patch group is `size` consecutive world ranks and the partner of w is
    w +- size. Collectives are barrier, post, barrier, copy, barrier, so no rank reuses a buffer another reads."""

    def __init__(self, group: LocalGroup, world_rank: int, size: int, device) -> None:
        self.shared, self.world_rank, self.size, self.device = group, world_rank, size, device
        self.rank = world_rank % size
        self._first = world_rank - self.rank

    def _collect(self, post: tuple) -> dict[int, tuple]:
        self.shared.sync()
        self.shared.posted[self.world_rank] = post
        self.shared.sync()
        posted = dict(self.shared.posted)
        return posted

    def exchange(self, area: int, gathered: int, slot_bytes: int, start: int, stop: int, stream: int) -> None:
        posted = self._collect((area,))
        for j in range(self.size):
            if j != self.rank:
                (src,) = posted[self._first + j]
                self.device.copy(gathered + peer_slot(self.rank, j) * slot_bytes + start, src + start, stop - start)
        self.shared.sync()

    def all_gather(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        posted = self._collect((src,))
        for j in range(self.size):
            self.device.copy(dst + j * nbytes, posted[self._first + j][0], nbytes)
        self.shared.sync()

    def swap_with_partner(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        posted = self._collect((src,))
        partner = (self.world_rank + self.size) % (2 * self.size)
        self.device.copy(dst, posted[partner][0], nbytes)
        self.shared.sync()

    def check(self) -> None:
        if self.shared.failure is not None:
            raise RankFailedError(f"stopped because the group was aborted: {self.shared.failure}")
