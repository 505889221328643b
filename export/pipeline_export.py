"""`trt-distri export` of a whole pipeline: the per-patch UNet (export_unet), then its text encoder(s), VAE decoder,
tokenizer(s) and scheduler configuration, so that `trt-distri run --prompt` needs nothing but the work directory.

Layout added to the work directory (docs/design.md, "Pipeline parts"):
`encoders/text_encoder[_2].onnx`, `encoders/vae_decoder.onnx` (each with `<graph>.data`), `tokenizer[_2]/`
(tokenizer.json, read at run time by the `tokenizers` library) and the manifest keys `pipeline`, `text_encoders`,
`vae` and `scheduler`. Everything is written beside the final folder and renamed into it, as export_unet does.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path

from trt_distri.config import ExportRequest, Precision
from trt_distri.export.encoders import export_text_encoder, export_vae_decoder
from trt_distri.export.exporter import replace_dir, export_unet
from trt_distri.manifest import MANIFEST_FILE, Manifest
from trt_distri.paths import check_output_dir, remove_stale
from trt_distri.typed_json import encode

log = logging.getLogger(__name__)
ENCODERS = "encoders"


def export_pipeline(request: ExportRequest, pipeline=None) -> Path:
    """Export `request.model` (a pipeline folder or random:<name>), or the given diffusers `pipeline`, into
    `request.out_dir`; returns the manifest's path."""
    out = Path(request.out_dir)
    check_output_dir(out, request.overwrite)
    remove_stale(out.parent, out.name)  # what an interrupted export of `out` left
    pipeline = pipeline if pipeline is not None else load_request_pipeline(request)
    tmp = out.parent / f".{out.name}.pipeline-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        start = time.perf_counter()
        unet = pipeline.unet.half() if request.precision == Precision.FP16 else pipeline.unet.float()
        export_unet(dataclasses.replace(request, out_dir=tmp, overwrite=False), unet=unet)
        data = {**encode(Manifest.load(tmp)), **_write_parts(pipeline, tmp),
                "pipeline_export_seconds": round(time.perf_counter() - start, 2)}
        Manifest.from_json(tmp, data).save()
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported the text encoder(s) and VAE decoder to %s", out / ENCODERS)
    return out / MANIFEST_FILE


def load_request_pipeline(request: ExportRequest):
    from trt_distri.pipeline_models import load_pipeline, random_pipeline

    name = request.random_config
    return random_pipeline(name, request.seed) if name else load_pipeline(request.model, request.variant)


def _write_parts(pipeline, root: Path) -> dict:
    sdxl = getattr(pipeline, "text_encoder_2", None) is not None
    pairs = [("text_encoder", "tokenizer")] + ([("text_encoder_2", "tokenizer_2")] if sdxl else [])
    encoders = []
    for i, (enc_name, tok_name) in enumerate(pairs):
        entry = export_text_encoder(getattr(pipeline, enc_name), root / ENCODERS / f"{enc_name}.onnx", sdxl,
                                    pooled=sdxl and i == 1)
        getattr(pipeline, tok_name).save_pretrained(root / tok_name)
        weights = {"file": f"{ENCODERS}/{enc_name}.onnx.data", "tensors": entry.pop("weight_tensors"),
                   "unused": entry.pop("unused_weights")}
        encoders.append({"name": enc_name, "file": f"{ENCODERS}/{enc_name}.onnx", "tokenizer": tok_name,
                         "weights": weights, **entry})
    vae = export_vae_decoder(pipeline.vae, root / ENCODERS / "vae_decoder.onnx")
    sched = pipeline.scheduler
    return {
        "pipeline": {"kind": "sdxl" if sdxl else "sd", "class": type(pipeline).__name__,
                     "force_zeros_for_empty_prompt": bool(pipeline.config.get("force_zeros_for_empty_prompt",
                                                                              False))},
        "text_encoders": encoders,
        "vae": {"file": f"{ENCODERS}/vae_decoder.onnx", **vae},
        "scheduler": {"class": type(sched).__name__, "config": json.loads(json.dumps(dict(sched.config),
                                                                                      default=str))},
    }
