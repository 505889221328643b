"""Tiny pipelines (random weights, local tokenizer) saved once per session, and their exported work directories."""
from __future__ import annotations

import pytest

from trt_distri.config import ExportRequest, Precision


@pytest.fixture(scope="session")
def saved_pipeline(tmp_path_factory):
    """name -> folder of a tiny pipeline saved with save_pretrained (created on first use)."""
    from trt_distri.pipeline_models import random_pipeline

    root, saved = tmp_path_factory.mktemp("pipelines"), {}

    def get(name: str):
        if name not in saved:
            random_pipeline(name, seed=0).save_pretrained(root / name)
            saved[name] = root / name
        return saved[name]

    return get


@pytest.fixture(scope="session")
def workdir(tmp_path_factory, saved_pipeline):
    """(name, ranks) -> work directory exported in fp32 at 128x128 (64x64 for ranks > 1 would not split: 128)."""
    from trt_distri.export.pipeline_export import export_pipeline

    root, done = tmp_path_factory.mktemp("work"), {}

    def get(name: str, ranks: int = 1):
        key = (name, ranks)
        if key not in done:
            out = root / f"{name}-n{ranks}"
            export_pipeline(ExportRequest(model=str(saved_pipeline(name)), height=128, width=128, gpus=ranks,
                                          out_dir=out, cfg_split=False, precision=Precision.FP32))
            done[key] = out
        return done[key]

    return get
