"""Speed of trt-distri on one GPU host: SDXL architecture (random weights, fp16), DDIM, guidance on.

  python benchmarks/bench.py --sizes 2048 --gpus 1 2 4 --split both --torch-baseline --out-dir DIR

For every size and GPU count: patches only (guidance batch 2 on every GPU) and, for even counts, the guidance split
(two groups of N/2 patch ranks, batch 1). Each configuration is exported on the host and prepared for ONNX Runtime
CUDA (by exporter processes working ahead while an earlier one is measured), then run in one load: twice with the
exchange (the second is measured), once without it (no-comm), once with every step synchronous. Reported per
configuration: median synchronous and asynchronous step time of the slowest rank (device events), the projected
50-step time (5 synchronous + 45 asynchronous steps), the exchange overhead against the no-comm run, bytes
exchanged per step per GPU, device memory, export/prepare and load times, and the speed-up over 1 GPU on the same
backend. The speed-up is refused (and the reason written) unless the fully synchronous latents equal 1 GPU's
within fp16 tolerance; the asynchronous run's PSNR against 1 GPU is reported beside it. Writes bench.json and
bench.md into --out-dir. Also serves issue 7 (pass --gpus 1 2 4 8).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import os
import platform
import shutil
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trt_distri.cli_run import random_inputs
from trt_distri.config import ExportRequest, Precision
from trt_distri.engines.build import build_workdir
from trt_distri.export.exporter import export_unet
from trt_distri.manifest import Manifest
import oracle_path  # noqa: F401 - tests/oracles on sys.path
from oracles.loop import psnr
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.gpu import Variant, run_gpus
from trt_distri.runtime.comm import RankFailedError
from trt_distri.runtime.launch import stop_on_sigterm

from bench_report import driver_version, merge, projected_s, write_results
from peak_memory import NvidiaSmiPeak
from torch_baseline import torch_baseline

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


SYNC_TOLERANCE = 1e-2  # relative RMS difference of fully synchronous latents from 1 GPU's, fp16


_UNET = None  # the exporter process's model (random weights, seed 0)


def _init_exporter(threads: int, model: str) -> None:
    global _UNET
    import torch

    from trt_distri.models import random_unet

    torch.set_num_threads(threads)  # the exporters share the host with the measured ranks' launch threads
    _UNET = random_unet(model, dtype=torch.float16 if model == "sdxl" else torch.float32)


def prepare(model: str, size: int, gpus: int, split: bool, root: Path) -> tuple[Path, float]:
    """Export and prepare one configuration, in an exporter process, while an earlier one is measured."""
    workdir = root / f"{model}-{size}-g{gpus}{'-split' if split else ''}"
    t0 = time.perf_counter()
    precision = Precision.FP16 if model == "sdxl" else Precision.FP32
    export_unet(ExportRequest(f"random:{model}", size, size, gpus, workdir, cfg_split=split, precision=precision,
                              overwrite=True), unet=_UNET)
    build_workdir(workdir, "ort")
    return workdir, round(time.perf_counter() - t0, 1)


def run_config(workdir: Path, prepare_s: float, size: int, gpus: int, split: bool, cuda_graph: bool,
               args) -> tuple[dict, dict]:
    manifest = Manifest.load(workdir)
    inputs = random_inputs(manifest, args.steps, "ddim", 5.0, seed=0)
    variants = [Variant("exchange", repeats=2)]
    if gpus > 1:  # the diagnostic without exchange, and every step synchronous (must equal 1 GPU within fp16)
        variants += [Variant("no_comm", no_comm=True, repeats=1),
                     Variant("sync", warmup_steps=args.steps, repeats=1)]
    options = RunOptions(warmup_steps=args.warmup, cuda_graph=cuda_graph)
    with NvidiaSmiPeak() as peak:  # the reference is measured the same way (benchmarks/peak_memory.py)
        _, reports = run_gpus(workdir, inputs, options, list(range(gpus)), repeats=2, variants=variants,
                              timeout_s=args.run_timeout)
    patch_devices = manifest.devices
    row = {"size": size, "gpus": gpus, "split": split, "cuda_graph": cuda_graph, "prepare_s": prepare_s,
           "load_s": max(r["load_s"] for r in reports),
           "device_gib_used": round(max(r["device_bytes_used"] for r in reports) / 2**30, 1),
           "peak_gib": max((peak.gib[g] for g in range(gpus) if g in peak.gib), default=None),
           "peak_gib_per_gpu": peak.gib,
           "memory": [r.get("memory") for r in reports],
           "exchange_mb_per_gpu_step": round(manifest.exchange.bytes * (patch_devices - 1) / 1e6, 1)}
    for v in variants:
        last = [[run for run in r["runs"] if run["variant"] == v.label][-1] for r in reports]
        row[v.label] = {k: max(run[k] or 0 for run in last) for k in ("sync_step_ms", "async_step_ms", "wall_s")}
    ex = row["exchange"]
    row["projected_50_s"] = projected_s(ex["sync_step_ms"], ex["async_step_ms"], 50, WARMUP_STEPS_50)
    if gpus > 1:
        row["async_overhead_pct"] = round(100 * (ex["async_step_ms"] / row["no_comm"]["async_step_ms"] - 1), 2)
    log.info("%s", row)
    return row, reports[0]["variant_latents"]


def compare_with_one_gpu(row: dict, latents: dict, base: tuple[dict, dict] | None) -> None:
    """Speed-up over 1 GPU, reported only when this configuration computes the same thing: its fully synchronous
    latents must match 1 GPU's within fp16 tolerance; the asynchronous run's PSNR is reported beside it.
    A 1-GPU row replaying CUDA graphs is checked the same way against the 1-GPU row without them."""
    if base is None:
        return
    reference = base[1]["exchange"]
    sync, run = latents.get("sync", latents["exchange"]), latents["exchange"]
    if not (np.isfinite(sync).all() and np.isfinite(run).all()):
        row["refused"] = "latents are not finite"
        return
    rel = float(np.linalg.norm(sync - reference) / np.linalg.norm(reference))
    row["sync_rel_rms"] = float(f"{rel:.2e}")
    if rel > SYNC_TOLERANCE:
        row["refused"] = (f"fully synchronous latents differ from 1 GPU's by {rel:.2e} relative RMS "
                          f"(fp16 tolerance {SYNC_TOLERANCE:.0e})")
        return
    row["speedup"] = round(base[0]["projected_50_s"] / row["projected_50_s"], 2)
    if row["gpus"] > 1:
        row["psnr_db"] = round(psnr(run, reference), 1)


def baseline_for(row: dict, bases: dict) -> tuple[dict, dict] | None:
    """The 1-GPU run a row is compared with: same size and CUDA-graph setting; a 1-GPU row with CUDA graphs is
    compared with the plain 1-GPU run (its own baseline would prove nothing)."""
    if row["gpus"] == 1:
        return bases.get((row["size"], False)) if row["cuda_graph"] else None
    return bases.get((row["size"], row["cuda_graph"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048])
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--split", choices=["no", "yes", "both"], default="both")
    ap.add_argument("--steps", type=int, default=10, help="measured steps per run (default 10: 5 sync + 5 async)")
    ap.add_argument("--warmup", type=int, default=4, help="steps 0..warmup run synchronously")
    ap.add_argument("--torch-baseline", action="store_true")
    ap.add_argument("--cuda-graph", nargs="?", const="on", default="on", choices=["off", "on", "both"],
                    help="UNet segments replay ONNX Runtime CUDA graphs, as ranks that stay loaded do by default "
                         "(default on; both: each configuration without, then with)")
    ap.add_argument("--run-timeout", type=float, default=900.0,
                    help="seconds one configuration's GPU run may take before its ranks are stopped")
    ap.add_argument("--keep", action="store_true", help="keep the exported work directories (default: delete)")
    ap.add_argument("--model", default="sdxl", help="shipped architecture with random weights (tests: tiny-sdxl)")
    ap.add_argument("--exporters", type=int, default=2, help="exporter processes working ahead of the measurement")
    ap.add_argument("--root", type=Path, default=Path("/tmp/trt-distri-bench"))
    ap.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--merge", type=Path, nargs="+", help="only join these bench.json files (parts of one session, "
                    "e.g. one per device call) into --out-dir's bench.json and bench.md")
    args = ap.parse_args()
    stop_on_sigterm()  # `timeout` or a scheduler stops the rank processes too
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.merge:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        write_results(merge([json.loads(p.read_text()) for p in args.merge]), args.out_dir)
        return
    import onnxruntime
    import torch

    from trt_distri.models import random_unet

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {"date": datetime.date.today().isoformat(), "gpu": gpu, "gpus_on_host": torch.cuda.device_count(),
              "model": args.model, "host": platform.node(), "ort": onnxruntime.__version__,
              "driver": driver_version(), "torch": torch.__version__, "python": platform.python_version(),
              "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]), "steps": args.steps,
              "warmup": args.warmup, "rows": [],
              "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith(("NCCL_", "TRT_DISTRI_"))}}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    todo = [(size, g, split) for size in args.sizes for g, split in configs(args.gpus, args.split)]
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.exporters, mp_context=spawn, initializer=_init_exporter,
                             initargs=(4, args.model)) as pool, \
            ThreadPoolExecutor(1) as loader:
        unet = loader.submit(random_unet, "sdxl", dtype=torch.float16) if args.torch_baseline else None
        ahead: dict[int, Future] = {}
        for j in range(min(args.exporters, len(todo))):
            ahead[j] = pool.submit(prepare, args.model, *todo[j], args.root)
        bases: dict[tuple[int, bool], tuple[dict, dict]] = {}
        graph_modes = {"off": [False], "on": [True], "both": [False, True]}[args.cuda_graph]
        for i, (size, gpus, split) in enumerate(todo):
            workdir, prepare_s = ahead.pop(i).result()
            if i + args.exporters < len(todo):
                ahead[i + args.exporters] = pool.submit(prepare, args.model, *todo[i + args.exporters],
                                                             args.root)
            for graph in graph_modes:
                try:
                    row, latents = run_config(workdir, prepare_s, size, gpus, split, graph, args)
                except RankFailedError as exc:  # recorded; the other configurations still run
                    log.error("%dx%d on %d GPUs (split %s, CUDA graphs %s) failed: %s", size, size, gpus, split,
                              graph, exc)
                    result["rows"].append({"size": size, "gpus": gpus, "split": split, "cuda_graph": graph,
                                           "error": str(exc)[:500]})
                    write_results(result, args.out_dir)
                    continue
                row["export_overlapped"] = bool(ahead)  # exports ran on the host's CPU beside the measured run
                compare_with_one_gpu(row, latents, baseline_for(row, bases))
                if gpus == 1:
                    bases[(size, graph)] = (row, latents)
                result["rows"].append(row)
                write_results(result, args.out_dir)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
            if unet is not None and (i + 1 == len(todo) or todo[i + 1][0] != size):
                result.setdefault("torch_baseline", []).append(torch_baseline(unet.result(), size))
                torch.cuda.empty_cache()
                write_results(result, args.out_dir)


if __name__ == "__main__":
    main()
