"""The distributed runtime on a GPU host (ONNX Runtime CUDA backend, fp16): correctness and exchange overhead.

  python benchmarks/runtime_gpu.py --tiny --sdxl 2048 --devices 2 4 --out results.json

--tiny: the tiny SDXL-shaped model on 1, 2 and 4 GPUs: GPU latents vs the CPU runtime on the same graphs (ORT CPU),
  and fully synchronous runs (every step a warm-up step) on n GPUs vs 1 GPU.
--sdxl SIZE: the SDXL architecture (random weights) at SIZE x SIZE on each --devices count (guidance batch 2 per
  patch): median synchronous and asynchronous step times (device events) with the exchange and without it
  (--no-comm), and the overhead. Export and engine preparation run on the host first.
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np

from trt_distri.config import ExportRequest, Precision
from trt_distri.engines.build import build_workdir
from trt_distri.export.exporter import export_unet
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.gpu import Variant, run_gpus
from trt_distri.runtime.local import run_local
from trt_distri.cli_run import random_inputs
from trt_distri.manifest import Manifest

log = logging.getLogger("runtime_gpu")


def export(model: str, size: int, n: int, root: Path, unet=None) -> Path:
    out = root / f"{model}-{size}-n{n}"
    req = ExportRequest(f"random:{model}", size, size, n, out, cfg_split=False, precision=Precision.FP16,
                        overwrite=True)
    t0 = time.perf_counter()
    export_unet(req, unet=unet)
    build_workdir(out, "ort")
    log.info("exported + prepared %s in %.1f s", out.name, time.perf_counter() - t0)
    return out


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


def tiny_checks(root: Path, steps: int) -> dict:
    out = {}
    sync_1 = None
    for n in (1, 2, 4):
        workdir = export("tiny-sdxl", 128, n, root)
        inputs = random_inputs(Manifest.load(workdir), steps, "ddim", 5.0, seed=0)
        gpu, _ = run_gpus(workdir, inputs, RunOptions(warmup_steps=1), list(range(n)))
        cpu, _ = run_local(workdir, inputs, RunOptions(warmup_steps=1))
        sync, _ = run_gpus(workdir, inputs, RunOptions(warmup_steps=steps), list(range(n)))
        sync_1 = sync if n == 1 else sync_1
        out[f"n{n}"] = {"gpu_vs_cpu_rel_err": rel(gpu, cpu), "full_sync_vs_1gpu_rel_err": rel(sync, sync_1)}
        log.info("tiny n=%d: %s", n, out[f"n{n}"])
    return out


def sdxl_overhead(root: Path, size: int, devices: list[int], steps: int, warmup: int) -> list[dict]:
    from trt_distri.models import random_unet
    import torch

    unet = random_unet("sdxl", dtype=torch.float16)
    rows = []
    for n in devices:
        workdir = export("sdxl", size, n, root, unet)
        manifest = Manifest.load(workdir)
        inputs = random_inputs(manifest, steps, "ddim", 5.0, seed=0)
        row = {"size": size, "devices": n, "steps": steps, "warmup_steps": warmup}
        _, reports = run_gpus(workdir, inputs, RunOptions(warmup_steps=warmup), list(range(n)), repeats=2,
                              variants=[Variant("exchange"), Variant("no_comm", no_comm=True)])
        row["load_s"] = max(r["load_s"] for r in reports)
        row["device_gib_used"] = round(max(r["device_bytes_used"] for r in reports) / 2**30, 1)
        for label in ("exchange", "no_comm"):
            last = [[run for run in r["runs"] if run["variant"] == label][-1] for r in reports]  # warmed up
            row[label] = {key: max(run[key] for run in last) for key in ("sync_step_ms", "async_step_ms", "wall_s")}
        row["async_overhead_pct"] = round(100 * (row["exchange"]["async_step_ms"] /
                                                 row["no_comm"]["async_step_ms"] - 1), 2)
        row["exchange_mb_per_rank_step"] = round(manifest.exchange.bytes * (n - 1) / 1e6, 1)
        log.info("sdxl %d n=%d: %s", size, n, row)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--sdxl", type=int, nargs="*", default=[])
    ap.add_argument("--devices", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--root", type=Path, default=Path("/tmp/trt-distri-gpu"))
    ap.add_argument("--out", type=Path, default=Path("runtime_gpu.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from trt_distri.runtime.cuda import CudaDevice

    result = {"date": datetime.date.today().isoformat(), "host": platform.node(),
              "gpu": _gpu_name(CudaDevice), "command": "python benchmarks/runtime_gpu.py " + " ".join(
                  a for a in __import__("sys").argv[1:])}
    if args.tiny:
        result["tiny"] = tiny_checks(args.root, 6)
    for size in args.sdxl:
        result.setdefault("sdxl", []).extend(sdxl_overhead(args.root, size, args.devices, args.steps, args.warmup))
        args.out.write_text(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


def _gpu_name(_device_cls) -> str:
    from cuda.bindings import runtime as cudart

    err, props = cudart.cudaGetDeviceProperties(0)
    return props.name.decode() if isinstance(props.name, bytes) else str(props.name)


if __name__ == "__main__":
    main()
