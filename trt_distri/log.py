"""Logging setup for the CLI: one handler on the root logger, with the rank in the prefix.

Library modules only call `logging.getLogger(__name__)`; they never configure logging or print. The package
logger logs at INFO (DEBUG when verbose); other libraries only from WARNING, with the same prefix.
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


def configure(verbose: bool = False, rank: int | str | None = None) -> logging.Handler:
    """(Re)install the trt-distri handler on the root logger, writing to the current stderr. Idempotent."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_trt_distri", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler._trt_distri = True  # type: ignore[attr-defined]
    time = "%(asctime)s " if verbose else ""
    handler.setFormatter(logging.Formatter(f"{time}{rank_prefix(rank)}%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    logging.getLogger(PACKAGE_LOGGER).setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
