"""The C API: `trt_distri.h` (in this package's folder) and libtrt_distri.so (one per installation).

The library is built by the package's own build (setup.py, `build_ext`) and embeds the Python runtime: its
functions call `trt_distri.capi._bridge`, which calls `trt_distri.api`. Each installation has its own library, built
for its Python: in this package's folder for a wheel, in the environment (<prefix>/lib/trt-distri/) for an editable
install, whose package folder is the source tree that other environments may share. `python -m trt_distri.capi
--cflags --libs` prints what a compile line needs.
"""
from __future__ import annotations

from importlib.metadata import distributions
from pathlib import Path

from trt_distri.errors import MissingPackageError

LIBRARY_NAME = "libtrt_distri.so"
HEADER_NAME = "trt_distri.h"


def include_dir() -> Path:
    """The folder holding trt_distri.h."""
    return Path(__file__).resolve().parent


def library_path() -> Path:
    """This installation's libtrt_distri.so (the one its install recorded); MissingPackageError when it was
    installed without it."""
    dist = next((d for d in distributions(name="trt-distri") if d.read_text("RECORD") is not None), None)
    for file in dist.files if dist is not None else ():  # the first installation on sys.path: the one imported
        if file.name == LIBRARY_NAME and Path(dist.locate_file(file)).is_file():
            return Path(dist.locate_file(file)).resolve()
    raise MissingPackageError("this trt-distri was installed without its C library (its install lists no "
                              f"{LIBRARY_NAME}). Note: expected it built by `pip install` (setup.py build_ext; needs "
                              "a C compiler and a shared libpython). Fix: pip install again without "
                              "TRT_DISTRI_NO_CAPI=1")


def lib_dir() -> Path:
    return library_path().parent


def compile_flags() -> list[str]:
    return [f"-I{include_dir()}"]


def link_flags() -> list[str]:
    """-L, -rpath (so that the program finds the library without LD_LIBRARY_PATH) and -l."""
    return [f"-L{lib_dir()}", f"-Wl,-rpath,{lib_dir()}", "-ltrt_distri"]
