"""Quality of asynchronous steps on the tiny models: PSNR of the patch-parallel loop (ONNX Runtime simulator)
against the single-device loop, per GroupNorm mode, with random weights (CPU).

Usage: python benchmarks/async_quality.py   -> benchmarks/results/async_quality.{json,md}
Random tiny weights make no images; the figures compare modes and device counts, not absolute quality.
"""
from __future__ import annotations

import datetime
import json
import tempfile
from pathlib import Path

import torch

from trt_distri.config import ExportRequest, GNMode, Precision
from trt_distri.export.exporter import export_unet
import oracle_path  # noqa: F401 - tests/oracles on sys.path
from oracles.simulate import Simulator
from oracles.diffusers_schedule import make_scheduler
from oracles.loop import LoopInputs, denoise, psnr
from trt_distri.models import TEXT_EMBEDS_DIM, random_unet

RESULTS = Path(__file__).parent / "results"
STEPS, WARMUP, SIZE = 20, 4, 256


def inputs_for(unet, model: str) -> LoopInputs:
    g = torch.Generator().manual_seed(0)
    enc = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    added = None
    if model in TEXT_EMBEDS_DIM:
        added = {"text_embeds": torch.randn(2, TEXT_EMBEDS_DIM[model], generator=g),
                 "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 2, dtype=torch.float32)}
    latents = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=g)
    return LoopInputs(latents=latents, cond=enc[1:], uncond=enc[:1], added_cond=added, guidance_scale=5.0)


def single_device(unet, inputs: LoopInputs) -> torch.Tensor:
    def step(sample, t, enc, added, sync):
        with torch.no_grad():
            return unet(sample, t, enc, added_cond_kwargs=added).sample
    return denoise(step, make_scheduler("ddim"), inputs, STEPS, WARMUP)


def main() -> None:
    rows = []
    for model in ("tiny-sd", "tiny-sdxl"):
        unet = random_unet(model)
        inputs = inputs_for(unet, model)
        single = single_device(unet, inputs)
        for n in (2, 4):
            for mode in GNMode:
                with tempfile.TemporaryDirectory() as tmp:
                    req = ExportRequest(f"random:{model}", SIZE, SIZE, n, Path(tmp) / "w", cfg_split=False,
                                        precision=Precision.FP32, gn_mode=mode)
                    export_unet(req, unet=unet)
                    out = denoise(Simulator(req.out_dir), make_scheduler("ddim"), inputs, STEPS, WARMUP)
                rows.append({"model": model, "devices": n, "gn_mode": mode.value,
                             "psnr_db": round(psnr(out.numpy(), single.numpy()), 2)})
    info = {"date": datetime.date.today().isoformat(), "command": "python benchmarks/async_quality.py",
            "steps": STEPS, "warmup_steps": WARMUP, "size": SIZE, "scheduler": "ddim", "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "async_quality.json").write_text(json.dumps(info, indent=1))
    lines = [f"# Asynchronous-step quality on tiny random models ({info['date']})", "",
             f"`{info['command']}`: {SIZE}x{SIZE}, DDIM {STEPS} steps ({WARMUP + 1} synchronous), guidance 5, "
             "fp32, ONNX Runtime CPU simulator vs the single-device diffusers UNet. PSNR of the final latents.", "",
             "| model | devices | GroupNorm mode | PSNR dB |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['devices']} | {r['gn_mode']} | {r['psnr_db']} |" for r in rows]
    (RESULTS / "async_quality.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
