"""Work directories (exported once per session) and C programs compiled against the installed header/library."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from trt_distri.config import ExportRequest, Precision

HERE = Path(__file__).parent
REPO = HERE.parent.parent


@pytest.fixture(scope="session")
def cc() -> str:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) on this machine")
    return compiler


@pytest.fixture(scope="session")
def compile_c(cc, tmp_path_factory):
    """(source, python) -> executable, built with the flags `python -m trt_distri.capi --cflags --libs` prints:
    against the installation `python` belongs to (default: this process's)."""
    from trt_distri.capi import compile_flags, link_flags

    out = tmp_path_factory.mktemp("bin")

    def build(source: Path, python: Path | None = None) -> Path:
        flags = compile_flags() + link_flags() if python is None else subprocess.run(
            [str(python), "-m", "trt_distri.capi", "--cflags", "--libs"], check=True, capture_output=True,
            text=True).stdout.split()
        exe = Path(tempfile.mkdtemp(dir=out)) / source.stem
        cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", str(source), *flags, "-o", str(exe)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return exe

    return build


@pytest.fixture(scope="session")
def unet_workdir(tmp_path_factory):
    """ranks -> a tiny SD UNet alone (no text encoders, no VAE), 64x64, exported once."""
    from trt_distri.export.exporter import export_unet
    from trt_distri.models import random_unet

    root, done = tmp_path_factory.mktemp("capi"), {}

    def get(ranks: int = 1) -> Path:
        if ranks not in done:
            out = root / f"unet-n{ranks}"
            export_unet(ExportRequest("random:tiny-sd", 64, 64, ranks, out, cfg_split=False,
                                      precision=Precision.FP32), unet=random_unet("tiny-sd"))
            done[ranks] = _built(out)
        return done[ranks]

    return get


@pytest.fixture(scope="session")
def pipeline_workdir(tmp_path_factory) -> Path:
    """The embedded tiny SDXL pipeline (text encoders, UNet, VAE; random weights; trt_distri.embedded) at 64x64
    on one rank: the rank count is exercised by the UNet-only work directory (each rank loads its sessions)."""
    from trt_distri.export.pipeline_export import export_pipeline
    from trt_distri.pipeline_models import random_pipeline

    root = tmp_path_factory.mktemp("capi")
    random_pipeline("tiny-sdxl", seed=0).save_pretrained(root / "model")
    export_pipeline(ExportRequest(model=str(root / "model"), height=64, width=64, gpus=1, out_dir=root / "work",
                                  cfg_split=False, precision=Precision.FP32))
    return _built(root / "work")


def _built(workdir: Path) -> Path:
    """Prepared for ONNX Runtime once (`trt-distri build --backend ort`), so that every load is quick."""
    from trt_distri.engines.build import build_workdir

    build_workdir(workdir, "ort")
    return workdir
