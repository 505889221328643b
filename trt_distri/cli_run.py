"""`trt-distri run`: denoise with an exported work directory over the GPUs of this machine, or on the CPU.

Until text encoders land (issue 5), the conditioning is seeded random text embeddings of the model's shape; the
output is the final latents (.npy). Everything else is the real path: engines, exchange, scheduler, gather.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from trt_distri.errors import ConfigError

logger = logging.getLogger(__name__)


def add_run(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="generate latents with an exported work directory",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path, metavar="WORKDIR")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="cuda: one process per GPU (default where GPUs exist); cpu: every rank in this process")
    p.add_argument("--gpus", type=str, default=None, help="GPU indices, e.g. 0,1,2,3 (default: the first N, "
                                                           "N = what the work directory was exported for)")
    p.add_argument("--backend", choices=["ort", "trt", "trt-rtx"], default="ort")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup-steps", type=int, default=4, help="synchronous steps after step 0 (default 4)")
    p.add_argument("--scheduler", choices=["ddim", "euler", "dpm++"], default="ddim")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-comm", action="store_true", help="skip every exchange (diagnostic: no-communication time)")
    p.add_argument("--repeat", type=int, default=1, help="generate this many times (timings of each are reported)")
    p.add_argument("--launcher", choices=["local", "env"], default="local",
                   help="env: this process is one rank of torchrun/srun/mpirun (needs --rendezvous)")
    p.add_argument("--rendezvous", type=Path, default=None, help="shared directory where ranks meet (--launcher env)")
    p.add_argument("-o", "--out", type=Path, default=Path("latents.npy"), help="where to write the latents")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    data = _manifest(args.workdir)
    if args.out.exists() and not args.overwrite:
        raise ConfigError(f"{args.out} already exists. Fix: pass --overwrite, or choose another -o")
    inputs = random_inputs(data, args.steps, args.scheduler, args.guidance, args.seed)
    from trt_distri.runtime.executor import RunOptions

    options = RunOptions(warmup_steps=args.warmup_steps, no_comm=args.no_comm)
    start = time.perf_counter()
    latents, reports = _generate(args, data, inputs, options)
    seconds = time.perf_counter() - start
    if latents is not None:
        _save_atomic(args.out, latents)
        print(args.out)
    logger.info("%s", _summary(data, reports, seconds, args))
    return 0


def _generate(args, data: dict, inputs, options):
    world = data["gpus"] if data.get("cfg_split") else data["plan"]["devices"]
    device = args.device or ("cuda" if _cuda_count() else "cpu")
    if device == "cpu":
        from trt_distri.runtime.local import run_local

        latents, times = run_local(args.workdir, inputs, options, backend=args.backend)
        return latents, [{"runs": [t]} for t in times]
    if args.launcher == "env":
        from trt_distri.runtime.gpu import run_launched_rank

        if args.rendezvous is None:
            raise ConfigError("--launcher env needs --rendezvous DIR (a directory every rank can read)")
        latents, report = run_launched_rank(args.workdir, inputs, options, args.rendezvous, args.backend)
        return latents, [report]
    from trt_distri.runtime.gpu import run_gpus

    gpus = [int(g) for g in args.gpus.split(",")] if args.gpus else list(range(world))
    return run_gpus(args.workdir, inputs, options, gpus, args.backend, repeats=args.repeat)


def random_inputs(data: dict, steps: int, scheduler: str, guidance: float, seed: int):
    """Seeded noise and text embeddings of the model's shapes, and the scheduler as a LinearSchedule."""
    from trt_distri.loop import make_scheduler
    from trt_distri.runtime.generation import GenerationInputs
    from trt_distri.schedule import linear_schedule

    rng = np.random.default_rng(seed)
    plan, model = data["plan"], data["model"]
    latents = rng.standard_normal((1, model["in_channels"], plan["latent_height"], plan["latent_width"]), np.float32)
    enc = rng.standard_normal((2, data["text_len"], model["cross_attention_dim"]), np.float32)
    guided = data.get("guidance", True)
    rows = 2 if guided else 1
    text = time_ids = None
    if model["sdxl"]:
        cfg = model["config"]
        dim = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        text = rng.standard_normal((rows, dim), np.float32)
        size = [plan["height"], plan["width"], 0, 0, plan["height"], plan["width"]]
        time_ids = np.asarray([size] * rows, np.float32)
    schedule = linear_schedule(make_scheduler(scheduler), steps)
    return GenerationInputs(latents, enc[1:], enc[:1] if guided else None, schedule, guidance, text, time_ids)


def _manifest(workdir: Path) -> dict:
    from trt_distri.export.manifest import Manifest

    return Manifest.load(workdir).data


def _cuda_count() -> int:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _summary(data: dict, reports: list[dict], seconds: float, args) -> str:
    plan = data["plan"]
    runs = reports[0]["runs"][-1]
    return (f"{plan['height']}x{plan['width']}, {args.steps} steps in {seconds:.1f} s on {len(reports)} "
            f"rank(s), GN {data['gn_mode']}, backend {args.backend}"
            + ("" if runs.get("async_step_ms") is None else
               f"; median step {runs['sync_step_ms']} ms sync, {runs['async_step_ms']} ms async"))
