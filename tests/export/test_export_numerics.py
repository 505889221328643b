"""Exported patch graphs, run by the ONNX Runtime simulator, against the unsplit UNet and the PyTorch reference."""
from __future__ import annotations

import pytest
import torch

from helpers import rel_err
from trt_distri.config import GNMode
from oracles.simulate import Simulator
from oracles.diffusers_schedule import make_scheduler
from oracles.loop import LoopInputs, denoise, psnr
from oracles.reference import PatchReference

from export_helpers import export_tiny, unet_inputs

SYNC_CASES = [  # model, devices, image height, image width
    ("tiny-sd", 1, 128, 128), ("tiny-sd", 2, 256, 192), ("tiny-sd", 3, 192, 128), ("tiny-sd", 4, 128, 256),
    ("tiny-sdxl", 1, 128, 128), ("tiny-sdxl", 2, 128, 256), ("tiny-sdxl", 3, 192, 192), ("tiny-sdxl", 4, 256, 128),
]


@pytest.mark.parametrize("model,n,height,width", SYNC_CASES)
def test_synchronous_patches_equal_unsplit_unet(request, tmp_path, model, n, height, width):
    unet = request.getfixturevalue(model.replace("-", "_"))
    workdir = export_tiny(unet, model, tmp_path, n, height, width, GNMode.CORRECTED_ASYNC)
    sample, t, enc, added = unet_inputs(unet, model, height, width, batch=2)
    with torch.no_grad():
        expected = unet(sample, t, enc, added_cond_kwargs=added).sample
    sim = Simulator(workdir)
    args = (sample.numpy(), t.numpy(), enc.numpy(), {k: v.numpy() for k, v in (added or {}).items()})
    assert rel_err(sim(*args, sync=True), expected) <= 1e-5  # warm-up graphs, exchanged every cut
    # steady graphs whose stale inputs hold this step's values (same inputs again) are exact too
    assert rel_err(sim(*args, sync=False), expected) <= 1e-5


def _async_after_warmup_on_same_inputs(unet, tmp_path, mode: GNMode):
    """(steady-set output, unsplit UNet output) when the stale inputs hold this step's values."""
    workdir = export_tiny(unet, "tiny-sdxl", tmp_path, 2, 128, 128, mode, batch=1)
    sample, t, enc, added = unet_inputs(unet, "tiny-sdxl", 128, 128, batch=1)
    with torch.no_grad():
        expected = unet(sample, t, enc, added_cond_kwargs=added).sample
    sim = Simulator(workdir)
    args = (sample.numpy(), t.numpy(), enc.numpy(), {k: v.numpy() for k, v in added.items()})
    sim(*args, sync=True)
    return sim(*args, sync=False), expected


@pytest.mark.parametrize("mode", [GNMode.STALE, GNMode.SYNC])
def test_steady_graphs_exact_when_stale_equals_fresh(tiny_sdxl, tmp_path, mode):
    assert rel_err(*_async_after_warmup_on_same_inputs(tiny_sdxl, tmp_path, mode)) <= 1e-5


def test_separate_mode_ignores_other_patches(tiny_sdxl, tmp_path):
    assert rel_err(*_async_after_warmup_on_same_inputs(tiny_sdxl, tmp_path, GNMode.SEPARATE)) > 1e-3


LOOP_CASES = [  # model, devices, GroupNorm mode, scheduler
    ("tiny-sd", 2, GNMode.CORRECTED_ASYNC, "ddim"), ("tiny-sd", 3, GNMode.STALE, "euler"),
    ("tiny-sd", 2, GNMode.SEPARATE, "dpm++"), ("tiny-sd", 2, GNMode.SYNC, "ddim"),
    ("tiny-sdxl", 2, GNMode.CORRECTED_ASYNC, "euler"), ("tiny-sdxl", 4, GNMode.CORRECTED_ASYNC, "ddim"),
    ("tiny-sdxl", 2, GNMode.STALE, "dpm++"), ("tiny-sdxl", 2, GNMode.SEPARATE, "ddim"),
    ("tiny-sdxl", 2, GNMode.SYNC, "euler"),
]


@pytest.mark.parametrize("model,n,mode,scheduler", LOOP_CASES)
def test_whole_loop_matches_pytorch_reference(request, tmp_path, record_property, model, n, mode, scheduler):
    unet = request.getfixturevalue(model.replace("-", "_"))
    height = width = 32 * n if n > 2 else 128
    workdir = export_tiny(unet, model, tmp_path, n, height, width, mode)
    sample, _, enc, added = unet_inputs(unet, model, height, width, batch=2)
    inputs = LoopInputs(latents=sample[:1], cond=enc[1:], uncond=enc[:1], added_cond=added, guidance_scale=5.0)
    steps, warmup = 8, 2
    sim_out = denoise(Simulator(workdir), make_scheduler(scheduler), inputs, steps, warmup)
    ref = PatchReference(unet, Simulator(workdir).plan, gn_mode=mode.value)
    ref_out = denoise(ref, make_scheduler(scheduler), inputs, steps, warmup)
    assert rel_err(sim_out, ref_out) <= 1e-4

    def full(sample, t, enc, added, sync):
        with torch.no_grad():
            return unet(sample, t, enc, added_cond_kwargs=added).sample

    single = denoise(full, make_scheduler(scheduler), inputs, steps, warmup)
    # displaced patches differ from one device by design: the distance is recorded for reports, not asserted
    record_property("psnr_vs_single_device_db", round(psnr(sim_out.numpy(), single.numpy()), 2))
