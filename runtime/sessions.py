"""Open a work directory's graphs as sessions of a backend, for one device (None: the CPU)."""
from __future__ import annotations

from pathlib import Path

from trt_distri.engines.backend import get_backend
from trt_distri.runtime.host import HostBoundSession, HostDevice


def session_opener(workdir: Path, backend_name: str, device_index: int | None, host: HostDevice | None = None):
    """A callable(segment, stream) -> session with bind/run_async, for RankExecutor."""
    backend = get_backend(backend_name)
    weights = Path(workdir) / "graphs"

    def open_session(segment: dict, stream: int):
        path = Path(workdir) / segment["file"]
        session = backend.load(path, device_index, weights_dir=weights,
                               stream=stream if device_index is not None else None)
        return HostBoundSession(session, host) if device_index is None else session

    return open_session
