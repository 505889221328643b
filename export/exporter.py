"""`trt-distri export`: a diffusers UNet -> per-patch ONNX segment graphs + weights.bin + manifest.json.

Two graph sets are cut from the same emitted rank graph (docs/design.md): `warmup` (synchronous steps, cut after
every fresh tensor so that its consumer can read this step's values) and `steady` (asynchronous steps, cut at UNet
block boundaries so that a block's exchange overlaps the blocks after it). The work directory is written beside its
final place and renamed into it, so an interrupted export never leaves a half-written one.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from trt_distri.config import TEXT_LEN, ExportRequest, GNMode, Precision
from trt_distri.export.graph_io import save_model, to_model, write_weights
from trt_distri.export.partition import partition
from trt_distri.export.plan import PatchPlan, make_plan
from trt_distri.export.step_graph import step_graph
from trt_distri.export.unet_graph import RankGraph
from trt_distri.manifest import (FORMAT, MANIFEST_FILE, VERSION, Manifest, Role, exchange_layout,
                                 exchange_range)
from trt_distri.paths import check_output_dir, remove_path, remove_stale

log = logging.getLogger(__name__)
GRAPHS = "graphs"
WARMUP_CUTS = {"block", "latent-halo", "halo", "kv", "gn"}
CONDITIONING_ROLES = {Role.ENCODER_HIDDEN_STATES, Role.TEXT_EMBEDS, Role.TIME_IDS}
SMALL_PATCH_PIXELS = 512 * 1024  # below this per GPU, patches measured at most 1.07x one GPU (benchmarks/results)


def steady_cuts(gn_mode: GNMode) -> set[str]:
    """Block boundaries, the latent halo (always fresh) and, for synchronous GroupNorm, every GN statistic."""
    return {"block", "latent-halo"} | ({"gn"} if gn_mode == GNMode.SYNC else set())


def gn_formula(gn_mode: GNMode) -> str:
    return "exact" if gn_mode == GNMode.SYNC else gn_mode.value


def export_unet(request: ExportRequest, unet=None) -> Path:
    """Export `request.model` (or the given `unet`) and return the path of the written manifest."""
    out = Path(request.out_dir)
    check_output_dir(out, request.overwrite)
    remove_stale(out.parent, out.name)  # what an interrupted export of `out` left
    unet = unet if unet is not None else _load_unet(request)
    plan = make_plan(unet.config, request.height, request.width, request.patch_devices)
    _warn_small_patches(request)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / GRAPHS).mkdir(parents=True)
    try:
        start = time.perf_counter()
        data = _write(request, unet, plan, tmp)
        data["export_seconds"] = round(time.perf_counter() - start, 2)
        manifest = Manifest.from_json(tmp, data)  # what the runtime will read, checked before it is written
        manifest.save()
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %d graphs to %s in %.1f s", len(manifest.unet_segments()), out, manifest.export_seconds)
    return out / MANIFEST_FILE


def _warn_small_patches(request: ExportRequest) -> None:
    """Patch parallelism pays only when every GPU has enough work: say so before the user waits for a slow run."""
    pixels = request.height * request.width // request.patch_devices
    if request.patch_devices > 1 and pixels < SMALL_PATCH_PIXELS:
        groups = request.gpus // request.patch_devices
        most = max(1, request.height * request.width // SMALL_PATCH_PIXELS) * groups
        log.warning("each GPU gets %d of the image's %d pixel rows (%.2f MP): with the ONNX Runtime backend, "
                    "patches this small were measured at most 1.07x one GPU, and 0.79x at 1024x1024 on 4 GPUs "
                    "(docs/benchmarks.md): launches and warm-up exchanges outweigh the work. Fix: export "
                    "for at most --gpus %d", request.height // request.patch_devices, request.height, pixels / 1e6,
                    most)


def _write(request: ExportRequest, unet, plan: PatchPlan, root: Path) -> dict:
    dtype = np.float16 if request.precision == Precision.FP16 else np.float32
    weights: dict = {}
    emitted = {}
    for set_name, formula in (("warmup", "exact"), ("steady", gn_formula(request.gn_mode))):
        graph = RankGraph(unet, plan, request.batch, dtype, formula, TEXT_LEN, weights, warmup=set_name == "warmup")
        emitted[set_name] = graph.emit()
    layout = exchange_layout([{"name": v.name, **emitted["warmup"].roles[v.name], "shape": list(v.shape),
                               "dtype": str(v.dtype)} for v in emitted["warmup"].outputs])
    offsets, weights_info = write_weights(weights, root / GRAPHS)
    sets = {}
    for set_name, cuts in (("warmup", WARMUP_CUTS), ("steady", steady_cuts(request.gn_mode))):
        sets[set_name] = [_write_segment(seg, offsets, layout, root) for seg in
                          partition(emitted[set_name], cuts, set_name)]
    step = partition(step_graph(request.batch, unet.config.out_channels, plan.level_rows(0), plan.level_width(0),
                                request.guidance), set(), "step")[0]
    return {
        "step": _write_segment(step, offsets, layout, root),
        "format": FORMAT, "version": VERSION, "model": _model_summary(request, unet),
        "precision": request.precision.value, "gn_mode": request.gn_mode.value, "batch": request.batch,
        "guidance": request.guidance, "cfg_split": request.patch_devices != request.gpus, "gpus": request.gpus,
        "plan": plan.to_json(), "conditioning": _conditioning(emitted["warmup"]), "exchange": layout, "graph_sets": sets,
        "weights": {**weights_info, "file": f"{GRAPHS}/{weights_info['file']}"},
    }


def _conditioning(builder) -> dict:
    """The UNet's prompt-dependent inputs and the shape of one guidance branch's row of each."""
    inputs = [{"name": v.name, "shape": [int(d) for d in v.shape[1:]]} for v in builder.inputs
              if builder.roles[v.name]["role"] in CONDITIONING_ROLES]
    return {"text_len": TEXT_LEN, "inputs": inputs}


def _write_segment(seg, offsets, layout: dict, root: Path) -> dict:
    path = root / GRAPHS / f"{seg.name}.onnx"
    save_model(to_model(seg.graph, offsets), path)
    return {"name": seg.name, "file": f"{GRAPHS}/{path.name}", "exchange_range": exchange_range(seg.outputs, layout),
            "inputs": seg.inputs, "outputs": seg.outputs}


def _model_summary(request: ExportRequest, unet) -> dict:
    cfg = unet.config
    return {"source": request.model, "sdxl": cfg.get("addition_embed_type") == "text_time",
            "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
            "cross_attention_dim": cfg.cross_attention_dim,
            "config": json.loads(json.dumps(dict(cfg), default=str))}


def _load_unet(request: ExportRequest):
    from trt_distri.models import load_unet, random_unet

    name = request.random_config
    unet = random_unet(name, seed=request.seed) if name else load_unet(request.model, request.variant)
    # fp16 export: hold the model in fp16 (5 GB instead of 10 GB for SDXL); weights are converted the same way
    return unet.half() if request.precision == Precision.FP16 else unet


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished work directory into place; an old one (with --overwrite) is removed only after."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    remove_path(old)  # a folder, or the file that `-o FILE --overwrite` replaced
