"""`python -m trt_distri.capi [--include] [--libdir] [--library] [--cflags] [--libs]`: paths for compile lines.

Example: cc app.c $(python -m trt_distri.capi --cflags --libs) -o app
"""
from __future__ import annotations

import argparse
import sys

from trt_distri.capi import compile_flags, include_dir, lib_dir, library_path, link_flags
from trt_distri.errors import TrtDistriError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trt_distri.capi", description=__doc__.split("\n\n")[0])
    for flag, what in (("--include", "the folder holding trt_distri.h"), ("--libdir", "the folder holding the "
                       "library"), ("--library", "the library's path"), ("--cflags", "-I flag"),
                       ("--libs", "-L, -rpath and -l flags")):
        p.add_argument(flag, action="store_true", help=what)
    args = p.parse_args(argv)
    printers = {"include": lambda: str(include_dir()), "libdir": lambda: str(lib_dir()),
                "library": lambda: str(library_path()), "cflags": lambda: " ".join(compile_flags()),
                "libs": lambda: " ".join(link_flags())}
    chosen = [k for k in printers if getattr(args, k)] or ["cflags", "libs"]
    try:
        print(" ".join(printers[k]() for k in chosen))
    except TrtDistriError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
