"""Build glue for the C API: libtrt_distri.so, built by `pip install` (editable or not) into the installation.

The library is a plain shared library (not a Python extension module) that embeds the Python runtime, so it links
libpython. Every installation gets its own library, built for its own Python: a wheel holds it in the package
(site-packages/trt_distri/capi/), an editable install in the environment (<prefix>/lib/trt-distri/, a data file of
the editable wheel), never in the source tree, which several environments may share (docs/capi.md). Everything
else about the package is declared in pyproject.toml. TRT_DISTRI_NO_CAPI=1 builds without it (a pure-Python
install: no C compiler or shared libpython needed; the C API is then missing).
"""
from __future__ import annotations

import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

LIBRARY = "libtrt_distri"
EDITABLE_LIBDIR = "lib/trt-distri"  # under the installation's data folder: sys.prefix for a virtual environment
SOURCES = ["capi/api.c", "capi/errors.c", "capi/handles.c", "capi/python.c"]


class BuildCapi(build_ext):
    """build_ext that names the library libtrt_distri.so instead of an extension module's name, and that puts an
    editable install's library into the installation instead of next to the sources."""

    def get_ext_filename(self, fullname: str) -> str:
        parts = fullname.split(".")
        if parts[-1] == LIBRARY:
            return os.path.join(*parts[:-1], LIBRARY + ".so")
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # TRT_DISTRI_API (visibility "default") chooses the exports; nothing else is exported

    def copy_extensions_to_source(self) -> None:
        """Editable installs: into the editable wheel's data folder (setuptools' editable_wheel writes data files
        there; pip installs them under the environment's prefix and records them, so uninstall removes them)."""
        if not self.editable_mode:
            return super().copy_extensions_to_source()  # `setup.py build_ext --inplace`, by hand
        target = Path(self.get_finalized_command("install").install_data, EDITABLE_LIBDIR)
        self.mkpath(str(target))
        for ext in self.extensions:
            built = Path(self.build_lib, self.get_ext_filename(self.get_ext_fullname(ext.name)))
            self.copy_file(str(built), str(target / built.name))

    def get_output_mapping(self) -> dict[str, str]:
        """Nothing of an editable install's build maps into the source tree (editable_wheel's link tree asks)."""
        return {} if self.editable_mode else super().get_output_mapping()


def _version() -> str:
    text = (Path(__file__).parent / "trt_distri" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _libpython() -> tuple[str, str]:
    """(folder, file name) of the shared libpython this interpreter runs on."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / soname).is_file():
        raise SystemExit(f"trt-distri's C API needs a shared libpython. Note: expected {libdir}/{soname} (a Python "
                         "built with --enable-shared), found none. Fix: use such a Python, or set TRT_DISTRI_NO_CAPI=1 "
                         "to install without the C API")
    return libdir, soname


def _capi() -> list[Extension]:
    if os.environ.get("TRT_DISTRI_NO_CAPI") == "1" or not sys.platform.startswith("linux"):
        return []
    libdir, soname = _libpython()
    macros = {"TRT_DISTRI_VERSION": _version(), "TRT_DISTRI_BUILD_PYTHON": sys.executable,
              "TRT_DISTRI_LIBPYTHON": soname}
    return [Extension(
        f"trt_distri.capi.{LIBRARY}", SOURCES, include_dirs=["capi"], depends=["capi/trt_distri.h",
                                                                               "capi/internal.h"],
        define_macros=[(k, json.dumps(v)) for k, v in macros.items()],
        extra_compile_args=["-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        extra_link_args=[str(Path(libdir) / soname), f"-Wl,-rpath,{libdir}", f"-Wl,-soname,{LIBRARY}.so",
                         "-Wl,--no-undefined", "-ldl", "-pthread"])]


setup(ext_modules=_capi(), cmdclass={"build_ext": BuildCapi})
