"""The runtime on the CPU (ranks as threads, in-process exchange) against the export simulator."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from oracles.diffusers_schedule import linear_schedule, make_scheduler
from oracles.loop import LoopInputs, denoise_linear
from oracles.simulate import Simulator
from trt_distri.config import ExportRequest, GNMode, Precision
from trt_distri.errors import TrtDistriError
from trt_distri.export.exporter import export_unet
from trt_distri.models import TEXT_EMBEDS_DIM
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.generation import GenerationInputs
from trt_distri.runtime.local import run_local

STEPS, WARMUP = 5, 1


def _export(unet, model, tmp_path, gpus, mode=GNMode.CORRECTED_ASYNC, split=False, height=128):
    req = ExportRequest(f"random:{model}", height, 128, gpus, tmp_path / f"w{gpus}{mode.value}{split}",
                        cfg_split=split, precision=Precision.FP32, gn_mode=mode)
    export_unet(req, unet=unet)
    return req.out_dir


@pytest.fixture(scope="module")
def two_ranks(tiny_sd, tmp_path_factory):
    """tiny-sd on 2 patch ranks (corrected-async, no split), exported once for the tests that only read it."""
    return _export(tiny_sd, "tiny-sd", tmp_path_factory.mktemp("two_ranks"), 2)


def _inputs(unet, model, height=128, scheduler="dpm++"):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 4, height // 8, 16, generator=g)
    enc = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    added = None
    if model in TEXT_EMBEDS_DIM:
        added = {"text_embeds": torch.randn(2, TEXT_EMBEDS_DIM[model], generator=g),
                 "time_ids": torch.randn(2, 6, generator=g)}
    schedule = linear_schedule(make_scheduler(scheduler), STEPS)
    loop = LoopInputs(lat, enc[1:], enc[:1], added, 5.0)
    gen = GenerationInputs(lat.numpy(), enc[1:].numpy(), enc[:1].numpy(), schedule, 5.0,
                           *((added["text_embeds"].numpy(), added["time_ids"].numpy()) if added else (None, None)))
    return schedule, loop, gen


@pytest.mark.parametrize("model,n,mode", [("tiny-sdxl", 1, GNMode.CORRECTED_ASYNC),
                                          ("tiny-sdxl", 2, GNMode.CORRECTED_ASYNC), ("tiny-sd", 3, GNMode.STALE),
                                          ("tiny-sd", 2, GNMode.SEPARATE), ("tiny-sdxl", 2, GNMode.SYNC)])
def test_runtime_equals_simulator_exactly(request, tmp_path, model, n, mode):
    unet = request.getfixturevalue(model.replace("-", "_"))
    height = 96 if n == 3 else 128
    workdir = _export(unet, model, tmp_path, n, mode, height=height)
    schedule, loop, gen = _inputs(unet, model, height)
    expected = denoise_linear(Simulator(workdir), schedule, loop, WARMUP)
    latents, times = run_local(workdir, gen, RunOptions(warmup_steps=WARMUP))
    assert np.array_equal(latents, expected)
    assert len(times) == n
    assert all(t["first_step_ms"] is None for t in times)  # the host device does not time steps


def test_guidance_split_gives_the_unsplit_result(tiny_sd, two_ranks, tmp_path):
    schedule, _, gen = _inputs(tiny_sd, "tiny-sd")
    split, _ = run_local(_export(tiny_sd, "tiny-sd", tmp_path, 4, split=True), gen, RunOptions(warmup_steps=WARMUP))
    joint, _ = run_local(two_ranks, gen, RunOptions(warmup_steps=WARMUP))
    assert np.abs(split - joint).max() <= 1e-5 * np.abs(joint).max()


def test_no_comm_skips_the_exchange(tiny_sd, two_ranks):
    _, _, gen = _inputs(tiny_sd, "tiny-sd")
    normal, _ = run_local(two_ranks, gen, RunOptions(warmup_steps=WARMUP))
    skipped, _ = run_local(two_ranks, gen, RunOptions(warmup_steps=WARMUP, no_comm=True))
    assert np.isfinite(skipped).all() and not np.array_equal(normal, skipped)


def test_a_rank_outside_the_plan_is_refused(two_ranks):
    from trt_distri.manifest import Manifest
    from trt_distri.runtime.layout import RankLayout

    data = Manifest.load(two_ranks)
    assert RankLayout.from_manifest(data, 1).rank == 1
    with pytest.raises(TrtDistriError, match=r"patch rank 2 does not exist.*expected a rank in 0\.\.1, got 2"):
        RankLayout.from_manifest(data, 2)


def test_a_failing_rank_stops_every_rank_quickly(tiny_sd, two_ranks, monkeypatch):
    _, _, gen = _inputs(tiny_sd, "tiny-sd")
    from trt_distri.runtime import executor

    original = executor.RankExecutor._scheduler_step

    def dies_at_step_2(self, i):
        if self.comm.rank == 1 and i == 2:
            raise TrtDistriError("rank 1 lost its device (simulated)")
        return original(self, i)

    monkeypatch.setattr(executor.RankExecutor, "_scheduler_step", dies_at_step_2)
    start = time.monotonic()
    with pytest.raises(TrtDistriError, match="simulated"):
        run_local(two_ranks, gen, RunOptions(warmup_steps=WARMUP), timeout_s=30)
    assert time.monotonic() - start < 20  # the other rank stopped at its next exchange, not at the timeout


def test_runtime_imports_without_torch_onnx_diffusers():
    code = ("import sys; import trt_distri.runtime.local, trt_distri.runtime.gpu, trt_distri.runtime.sessions; "
            "bad = [m for m in ('torch', 'onnx', 'diffusers') if m in sys.modules]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)
