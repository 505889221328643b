"""The server's work queue: a bounded FIFO of jobs run one at a time by a worker thread on the loaded ranks.

Jobs are submitted from the event loop (`submit`, never blocking) and their results come back as asyncio futures,
so the loop keeps answering health checks and metrics while the ranks generate. A full queue refuses at once
(`QueueFullError`, with an estimate of when to retry). A job that has not started yet can be cancelled (its client
disconnected, or its timeout passed); a running one finishes and its result is dropped. `begin_stop` refuses new jobs
and fails the queued ones (`StoppingError`); `stop` ends the worker once the running job (if any) is done.
"""
from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from trt_distri.errors import TrtDistriError

COUNTERS = ("accepted", "completed", "failed", "rejected_full", "rejected_stopping", "cancelled_disconnect",
            "cancelled_timeout", "abandoned")


class QueueFullError(TrtDistriError):
    """The queue holds its maximum of waiting jobs."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoppingError(TrtDistriError):
    """The server is shutting down and takes no more work."""


@dataclass(eq=False)
class Job:
    id: int
    work: Callable[[], object]  # runs in the worker thread
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.monotonic)
    state: str = "queued"  # queued -> running -> done, or queued -> cancelled


class GenerationQueue:
    """At most `max_queue` jobs waiting, one running; see the module docstring."""

    def __init__(self, max_queue: int, history: int = 1000) -> None:
        self.max_queue = max_queue
        self._pending: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._stopping = self._closed = False
        self._ids = 0
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._latency = collections.deque(maxlen=history)  # (wait_s, generation_s) of completed jobs
        self._worker = threading.Thread(target=self._work, name="trt-distri-generate", daemon=True)
        self._worker.start()

    # ---- event loop side ----------------------------------------------------------------------------------------
    def submit(self, work: Callable[[], object]) -> Job:
        """Queue `work`; call from the event loop. Raises QueueFullError or StoppingError."""
        loop = asyncio.get_running_loop()
        with self._cond:
            if self._stopping:
                self.counts["rejected_stopping"] += 1
                raise StoppingError("the server is shutting down. Fix: retry on another instance or after restart")
            if len(self._pending) >= self.max_queue:
                self.counts["rejected_full"] += 1
                retry = self._retry_after_s()
                raise QueueFullError(f"the queue is full ({self.max_queue} waiting). Fix: retry after {retry} s",
                                     retry)
            self._ids += 1
            job = Job(self._ids, work, loop.create_future(), loop)
            self._pending.append(job)
            self.counts["accepted"] += 1
            self._cond.notify()
        return job

    def cancel(self, job: Job, reason: str) -> bool:
        """Drop `job` if it has not started (reason "disconnect" or "timeout"); False when it runs or ran."""
        with self._cond:
            if job.state == "queued":
                self._pending.remove(job)
                job.state = "cancelled"
                self.counts[f"cancelled_{reason}"] += 1
                return True
            if job.state == "running":
                self.counts["abandoned"] += 1
            return False

    def begin_stop(self) -> None:
        """Take no more jobs and fail the queued ones with StoppingError; the running one goes on."""
        with self._cond:
            self._stopping = True
            dropped, self._pending = list(self._pending), collections.deque()
            self._cond.notify_all()
        for job in dropped:
            job.state = "cancelled"
            self.counts["rejected_stopping"] += 1
            _settle(job, None, StoppingError("the server is shutting down; this request had not started. Fix: "
                                             "retry on another instance or after the restart"))

    def stop(self, timeout_s: float) -> bool:
        """begin_stop, then end the worker; True when it ended within `timeout_s` (no generation left running)."""
        self.begin_stop()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout_s)
        return not self._worker.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def metrics(self) -> dict:
        with self._cond:
            depth, running, counts = len(self._pending), self._running is not None, dict(self.counts)
            history = list(self._latency)
        waits, gens = [w for w, _ in history], [g for _, g in history]
        return {"queue_depth": depth, "queue_max": self.max_queue, "running": int(running), "counts": counts,
                "latency_s": _percentiles([w + g for w, g in history]), "queue_wait_s": _percentiles(waits),
                "generation_s": _percentiles(gens)}

    def _retry_after_s(self) -> int:
        gens = [g for _, g in self._latency]
        mean = sum(gens) / len(gens) if gens else 1.0
        return max(1, math.ceil(mean * (len(self._pending) + 1)))

    # ---- worker thread ------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while (job := self._next()) is not None:
            start = time.monotonic()
            try:
                result, error = job.work(), None
            except Exception as exc:  # noqa: BLE001 - handed to the waiting request, which answers with it
                result, error = None, exc
            end = time.monotonic()
            with self._cond:
                self._running, job.state = None, "done"
                self.counts["failed" if error else "completed"] += 1
                if error is None:
                    self._latency.append((start - job.enqueued, end - start))
            try:
                job.loop.call_soon_threadsafe(_settle, job, result, error)
            except RuntimeError:  # the event loop is gone (the server stopped): nobody waits for this result
                pass

    def _next(self) -> Job | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            job = self._pending.popleft()
            job.state, self._running = "running", job
            return job


def _settle(job: Job, result, error: BaseException | None) -> None:
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 4)

    return {"count": len(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": round(ordered[-1], 4)}
