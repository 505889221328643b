"""TensorRT-RTX builds of many graphs in spawned worker processes: a build holds one core for about 0.1-0.2 s per
tiny graph, and the CI machine has two cores while pytest uses one."""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def build(path: str):
    """(engine bytes, the built network's I/O, the warnings trt_distri.engines.trt logged) of one graph."""
    from trt_distri.engines.trt import BuildOptions, build_engine_with_io

    warnings, logger = _Warnings(), logging.getLogger("trt_distri.engines.trt")
    logger.addHandler(warnings)
    try:
        engine, io = build_engine_with_io(Path(path), "trt-rtx", BuildOptions())
    finally:
        logger.removeHandler(warnings)
    return len(engine), io, warnings.messages


def build_all(paths: list[Path]) -> list:
    """`build` of every path, in order, on up to two worker processes (spawned: no fork of a threaded parent)."""
    workers = max(1, min(2, os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(build, [str(p) for p in paths], chunksize=4))
