"""The C API: `trt_distri.h` and libtrt_distri.so, installed in this package's folder.

The library is built by the package's own build (setup.py, `build_ext`) and embeds the Python runtime: its
functions call `trt_distri.capi._bridge`, which calls `trt_distri.api`. `python -m trt_distri.capi --cflags
--libs` prints what a compile line needs.
"""
from __future__ import annotations

from pathlib import Path

from trt_distri.errors import MissingPackageError

LIBRARY_NAME = "libtrt_distri.so"
HEADER_NAME = "trt_distri.h"


def include_dir() -> Path:
    """The folder holding trt_distri.h."""
    return Path(__file__).resolve().parent


def library_path() -> Path:
    """libtrt_distri.so; MissingPackageError when this installation was built without it."""
    path = Path(__file__).resolve().parent / LIBRARY_NAME
    if not path.is_file():
        raise MissingPackageError(f"{path} does not exist: this trt-distri was installed without its C library. "
                                  "Note: expected it built by `pip install` (setup.py build_ext; needs a C compiler "
                                  "and a shared libpython). Fix: pip install again without TRT_DISTRI_NO_CAPI=1")
    return path


def lib_dir() -> Path:
    return library_path().parent


def compile_flags() -> list[str]:
    return [f"-I{include_dir()}"]


def link_flags() -> list[str]:
    """-L, -rpath (so that the program finds the library without LD_LIBRARY_PATH) and -l."""
    return [f"-L{lib_dir()}", f"-Wl,-rpath,{lib_dir()}", "-ltrt_distri"]
