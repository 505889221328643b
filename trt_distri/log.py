"""Logging setup for the CLI: one handler on the `trt_distri` logger, with the rank in the prefix.

Library modules only call `logging.getLogger(__name__)`; they never configure logging or print.
"""
from __future__ import annotations

import logging
import os
import sys

PACKAGE_LOGGER = "trt_distri"


def rank_prefix(rank: int | str | None = None) -> str:
    """`[rank R] ` for an explicit rank or env RANK when set, else an empty string."""
    if rank is None:
        rank = os.environ.get("RANK")
    return f"[rank {rank}] " if rank not in (None, "") else ""


def configure(verbose: bool = False, rank: int | str | None = None) -> logging.Logger:
    """(Re)configure the package logger: INFO (DEBUG when verbose) to the current stderr. Idempotent."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, "_trt_distri", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._trt_distri = True  # type: ignore[attr-defined]
    time = "%(asctime)s " if verbose else ""
    handler.setFormatter(logging.Formatter(f"{time}{rank_prefix(rank)}%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return logger
