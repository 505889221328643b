"""A one-line progress bar on stderr for `trt-distri run` (no dependency): redrawn in place on a terminal, one line
per finished stage otherwise (logs, CI)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as `progress(stage, done, total)`, the pipeline's progress hook."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.start = time.perf_counter()

    def __call__(self, stage: str, done: int, total: int) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        finished = done >= total
        if not tty and not finished:
            return
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{stage:<8}[{bar}] {done}/{total} {time.perf_counter() - self.start:6.1f} s"
        print(("\r" if tty else "") + line, end="\n" if finished else "", file=self.stream, flush=True)
