"""Speed of trt-distri on one GPU host: SDXL architecture (random weights, fp16), DDIM, guidance on.

  python benchmarks/bench.py --sizes 2048 --gpus 1 2 4 --split both --torch-baseline --out-dir DIR

For every size and GPU count: patches only (guidance batch 2 on every GPU) and, for even counts, the guidance split
(two groups of N/2 patch ranks, batch 1). Each configuration is exported on the host, prepared for ONNX Runtime
CUDA, and run twice (the second run is measured) with and without the exchange. Reported per configuration:
median synchronous and asynchronous step time of the slowest rank (device events), the projected 50-step time
(5 synchronous + 45 asynchronous steps), the exchange overhead against the no-comm run, bytes exchanged per step
per GPU, device memory, export/prepare and load times, and the speed-up over 1 GPU on the same backend. The
latents of each run are compared with the 1-GPU run (PSNR); a run whose latents are not finite is not reported as
a speed-up. Writes bench.json and bench.md into --out-dir. Also serves issue 7 (pass --gpus 1 2 4 8).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from trt_distri.cli_run import random_inputs
from trt_distri.config import ExportRequest, Precision
from trt_distri.engines.build import build_workdir
from trt_distri.export.exporter import export_unet
from trt_distri.loop import psnr
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.gpu import run_gpus

log = logging.getLogger("bench")
WARMUP_STEPS_50 = 5  # DistriFusion's default: 4 warm-up steps after step 0


def configs(gpus: list[int], split: str) -> list[tuple[int, bool]]:
    out = []
    for g in gpus:
        if split in ("no", "both") or g == 1:
            out.append((g, False))
        if split in ("yes", "both") and g >= 2 and g % 2 == 0:
            out.append((g, True))
    return out


def run_config(unet, size: int, gpus: int, split: bool, args) -> tuple[dict, np.ndarray]:
    workdir = args.root / f"sdxl-{size}-g{gpus}{'-split' if split else ''}"
    req = ExportRequest("random:sdxl", size, size, gpus, workdir, cfg_split=split, precision=Precision.FP16,
                        overwrite=True)
    t0 = time.perf_counter()
    export_unet(req, unet=unet)
    build_workdir(workdir, "ort")
    prepare_s = time.perf_counter() - t0
    data = json.loads((workdir / "manifest.json").read_text())
    inputs = random_inputs(data, args.steps, "ddim", 5.0, seed=0)
    latents, reports = run_gpus(workdir, inputs, RunOptions(warmup_steps=args.warmup), list(range(gpus)),
                                repeats=2, variants=[("exchange", False), ("no_comm", True)])
    row = {"size": size, "gpus": gpus, "split": split, "patch_devices": req.patch_devices, "batch": req.batch,
           "prepare_s": round(prepare_s, 1), "load_s": max(r["load_s"] for r in reports),
           "device_gib_used": round(max(r["device_bytes_used"] for r in reports) / 2**30, 1),
           "exchange_mb_per_gpu_step": round(data["exchange"]["bytes"] * (req.patch_devices - 1) / 1e6, 1)}
    for label in ("exchange", "no_comm"):
        last = [[run for run in r["runs"] if run["variant"] == label][-1] for r in reports]
        row[label] = {k: max(run[k] or 0 for run in last) for k in ("sync_step_ms", "async_step_ms", "wall_s")}
    ex = row["exchange"]
    row["projected_50_s"] = round((WARMUP_STEPS_50 * ex["sync_step_ms"] + (50 - WARMUP_STEPS_50) *
                                   ex["async_step_ms"]) / 1000, 2)
    row["async_overhead_pct"] = round(100 * (ex["async_step_ms"] / row["no_comm"]["async_step_ms"] - 1), 2)
    log.info("%s", row)
    return row, latents


def torch_baseline(size: int, steps: int = 5) -> dict:
    """The diffusers UNet in PyTorch on GPU 0: eager, fp16, SDPA, batch 2 (guidance), device-event median."""
    import torch

    from trt_distri.models import TEXT_EMBEDS_DIM, random_unet

    unet = random_unet("sdxl", dtype=torch.float16).cuda()
    b, h = 2, size // 8
    x = torch.randn(b, 4, h, h, device="cuda", dtype=torch.float16)
    enc = torch.randn(b, 77, 2048, device="cuda", dtype=torch.float16)
    added = {"text_embeds": torch.randn(b, TEXT_EMBEDS_DIM["sdxl"], device="cuda", dtype=torch.float16),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * b, device="cuda", dtype=torch.float16)}
    times = []
    with torch.no_grad():
        for i in range(steps + 2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            unet(x, torch.tensor([500.0], device="cuda"), enc, added_cond_kwargs=added)
            end.record()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(end))
    del unet
    torch.cuda.empty_cache()
    return {"size": size, "step_ms": round(float(np.median(times)), 1),
            "projected_50_s": round(50 * float(np.median(times)) / 1000, 2), "torch": torch.__version__}


def markdown(result: dict) -> str:
    lines = [f"# trt-distri speed, SDXL architecture ({result['date']}, {result['gpu']})", "",
             f"Command: `{result['command']}`. Backend: ONNX Runtime CUDA {result['ort']}, fp16, DDIM, guidance 5. "
             f"{result['steps']} measured steps per run ({result['warmup'] + 1} synchronous); projection: 5 "
             "synchronous + 45 asynchronous steps.", "",
             "| size | GPUs | split | sync ms | async ms | no-comm async ms | overhead | projected 50 steps | speed-up "
             "| PSNR vs 1 GPU | exchange MB/GPU/step | GiB used |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['gpus']} | {'yes' if r['split'] else 'no'} | "
                     f"{r['exchange']['sync_step_ms']:.1f} | {r['exchange']['async_step_ms']:.1f} | "
                     f"{r['no_comm']['async_step_ms']:.1f} | {r['async_overhead_pct']} % | {r['projected_50_s']} s | "
                     f"{r.get('speedup', '-')} | {r.get('psnr_db', '-')} | {r['exchange_mb_per_gpu_step']} | "
                     f"{r['device_gib_used']} |")
    for t in result.get("torch_baseline", []):
        lines.append(f"\nPyTorch {t['torch']} diffusers UNet, 1 GPU, eager fp16 SDPA, {t['size']}: {t['step_ms']} ms "
                     f"per step, {t['projected_50_s']} s per 50 steps.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--split", choices=["no", "yes", "both"], default="both")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--torch-baseline", action="store_true")
    ap.add_argument("--root", type=Path, default=Path("/tmp/trt-distri-bench"))
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import onnxruntime
    import torch

    from trt_distri.models import random_unet

    result = {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(0),
              "gpus_on_host": torch.cuda.device_count(), "host": platform.node(), "ort": onnxruntime.__version__,
              "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]), "steps": args.steps,
              "warmup": args.warmup, "rows": []}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    unet = random_unet("sdxl", dtype=torch.float16)
    for size in args.sizes:
        base = None
        for gpus, split in configs(args.gpus, args.split):
            row, latents = run_config(unet, size, gpus, split, args)
            if gpus == 1:
                base = (row, latents)
            elif base is not None and np.isfinite(latents).all():
                row["speedup"] = round(base[0]["projected_50_s"] / row["projected_50_s"], 2)
                row["psnr_db"] = round(psnr(latents, base[1]), 1)
            result["rows"].append(row)
            _write(result, args.out_dir)
        if args.torch_baseline:
            result.setdefault("torch_baseline", []).append(torch_baseline(size))
            _write(result, args.out_dir)


def _write(result: dict, out_dir: Path) -> None:
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
    (out_dir / "bench.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
