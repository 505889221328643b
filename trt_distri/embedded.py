"""The embedded default model: `trt-distri run --prompt TEXT` without a work directory.

On first use, the package creates a tiny SDXL-shaped pipeline with seeded random weights and the local tiny tokenizer
(trt_distri.pipeline_models, trt_distri.tiny_tokenizer), saves it as a diffusers folder, exports it (fp32, 256x256,
one work directory per rank count) and prepares its ONNX Runtime graphs; later runs reuse the cache. The cache is
`$TRT_DISTRI_CACHE`, else `$XDG_CACHE_HOME/trt-distri`, else `~/.cache/trt-distri`. Its images are noise-like:
the weights are random. It shows the whole path working on a CPU machine, nothing more.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from trt_distri import __version__
from trt_distri.paths import remove_stale

log = logging.getLogger(__name__)
EMBEDDED_MODEL = "tiny-sdxl"
EMBEDDED_SIZE = 256


def cache_root() -> Path:
    base = os.environ.get("TRT_DISTRI_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "trt-distri"


def embedded_workdir(ranks: int = 1, cfg_split: bool = False, root: Path | None = None) -> Path:
    """The embedded pipeline's work directory for `ranks` ranks, created, exported and built when missing."""
    base = (root or cache_root()) / f"tiny-pipeline-{__version__}"
    work = base / f"work-n{ranks}{'-split' if cfg_split else ''}"
    if not _exported(work):
        model = _saved_model(base / "model")
        log.info("creating the embedded tiny pipeline in %s (once)", work)
        _export(model, work, ranks, cfg_split)
    from trt_distri.engines.build import build_workdir

    build_workdir(work, "ort")  # reuses what an earlier run built
    return work


def _exported(work: Path) -> bool:
    """A complete work directory of this manifest version is there (an older cache is exported again)."""
    from trt_distri.errors import ManifestError
    from trt_distri.manifest import Manifest

    try:
        Manifest.load(work)
    except ManifestError:
        return False
    return True


def _saved_model(folder: Path) -> Path:
    if (folder / "model_index.json").is_file():
        return folder
    from trt_distri.pipeline_models import random_pipeline

    remove_stale(folder.parent, folder.name)  # what an interrupted creation left
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    random_pipeline(EMBEDDED_MODEL, seed=0).save_pretrained(tmp)
    if not folder.exists():
        os.replace(tmp, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _export(model: Path, work: Path, ranks: int, cfg_split: bool) -> None:
    from trt_distri.config import ExportRequest, Precision
    from trt_distri.export.pipeline_export import export_pipeline

    request = ExportRequest(model=str(model), height=EMBEDDED_SIZE, width=EMBEDDED_SIZE, gpus=ranks, out_dir=work,
                            cfg_split=cfg_split, precision=Precision.FP32, overwrite=True)
    export_pipeline(request)
