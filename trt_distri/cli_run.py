"""`trt-distri run`: generate an image from a prompt with an exported work directory, over the GPUs of this machine
or on the CPU.

With --prompt: text encoders, the distributed UNet loop and the VAE decoder (trt_distri.pipeline) write a PNG, or
the latents (.npy) with --output-type latent. Without a WORKDIR, the embedded tiny pipeline is created once and
used (trt_distri.embedded). Without --prompt, the UNet is conditioned on seeded random embeddings and the latents
are written: for work directories exported with --unet-only, and for benchmarks.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path

import numpy as np

from trt_distri.engines.backend import BACKENDS, DEFAULT_BACKEND, default_backend
from trt_distri.errors import ConfigError
from trt_distri.params import check_generation, check_prompt, check_repeat, scheduler_config
from trt_distri.paths import check_output_file

logger = logging.getLogger(__name__)


def add_run(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="generate an image (or latents) with an exported work directory",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path, nargs="?", default=None, metavar="WORKDIR",
                   help="work directory from `trt-distri export` (default: the embedded tiny pipeline; needs "
                        "--prompt)")
    p.add_argument("--prompt", default=None, help="text prompt (without it: random conditioning, latents out)")
    p.add_argument("--negative-prompt", default="", help="negative prompt (default empty)")
    p.add_argument("--output-type", choices=["image", "latent"], default="image",
                   help="image: a PNG (default); latent: the final latents as .npy")
    p.add_argument("--height", type=int, default=None, help="checked against the work directory's height")
    p.add_argument("--width", type=int, default=None, help="checked against the work directory's width")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="cuda: one process per GPU (default where GPUs exist); cpu: every rank in this process")
    p.add_argument("--gpus", type=str, default=None,
                   help="N (the first N GPUs) or indices such as 0,1,2,3 (default: the first N, N = what the work "
                        "directory was exported for)")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help=f"default: trt where the tensorrt package imports and the ranks run on GPUs, else "
                        f"{DEFAULT_BACKEND} (as `build`); the embedded pipeline is prepared for {DEFAULT_BACKEND}")
    p.add_argument("--steps", type=int, default=30, help="denoising steps (default 30)")
    p.add_argument("--warmup-steps", type=int, default=4, help="synchronous steps after step 0 (default 4)")
    p.add_argument("--scheduler", choices=["ddim", "euler", "dpm++"], default="ddim")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-comm", action="store_true", help="skip every exchange (diagnostic: no-communication time)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="on GPUs with ONNX Runtime, replay the UNet as CUDA graphs (default: with --repeat 2 or more; "
                        "capture costs about 2 s of the first image, every later step gains)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                   help="apply a LoRA (.safetensors, diffusers/PEFT or kohya) to the UNet and text encoders with this "
                        "scale (default 1); repeatable: the updates add up (docs/lora.md)")
    p.add_argument("--repeat", type=int, default=1, help="generate this many times (timings of each are reported)")
    p.add_argument("--launcher", choices=["local", "env"], default="local",
                   help="env: this process is one rank of torchrun/srun/mpirun (needs --rendezvous)")
    p.add_argument("--rendezvous", type=Path, default=None, help="shared directory where ranks meet (--launcher env)")
    p.add_argument("-o", "--out", type=Path, default=None,
                   help="output file (default image.png, or latents.npy for latents)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    latent_out = args.output_type == "latent" or args.prompt is None
    out = args.out or Path("latents.npy" if latent_out else "image.png")
    check_output_file(out, args.overwrite)
    if args.prompt is None and args.workdir is None:
        raise ConfigError("nothing to run. Note: expected a WORKDIR, --prompt, or both. Fix: trt-distri run "
                          "--prompt \"a red fox\" (the embedded tiny pipeline), or trt-distri run WORKDIR --prompt ...")
    _check_arguments(args)
    from trt_distri.pipeline import make_target

    target = make_target(args.device, args.gpus, args.backend or DEFAULT_BACKEND, launcher=args.launcher,
                         rendezvous=args.rendezvous, repeats=args.repeat, cuda_graph=args.cuda_graph)
    if args.backend is None and args.workdir is not None:  # the embedded pipeline is prepared for the default
        target = dataclasses.replace(target, backend=default_backend(target.device))
    args.backend = target.backend
    if args.prompt is None:
        return _run_random(args, out, target)
    return _run_prompt(args, out, target, latent_out)


def _check_arguments(args: argparse.Namespace) -> None:
    """The generation rules of trt_distri.params (the APIs' too), before anything is loaded."""
    config = None
    if args.workdir is not None:
        from trt_distri.pipeline import load_manifest

        config = scheduler_config(load_manifest(args.workdir))
    check_generation(args.steps, args.guidance, args.seed, args.scheduler, args.warmup_steps, config)
    check_repeat(args.repeat)
    if args.prompt is not None:
        args.prompt = check_prompt(args.prompt)
        args.negative_prompt = check_prompt(args.negative_prompt, "negative prompt")


def _run_prompt(args: argparse.Namespace, out: Path, target, latent_out: bool) -> int:
    from trt_distri.lora import parse_lora_arg
    from trt_distri.pipeline import generate_image
    from trt_distri.progress import ProgressBar

    workdir = args.workdir
    if workdir is None:
        from trt_distri.embedded import embedded_workdir

        workdir = embedded_workdir(len(target.gpus) if target.gpus else 1)
    result = generate_image(workdir, args.prompt, args.negative_prompt, args.steps, args.guidance, args.seed,
                            args.scheduler, args.warmup_steps, output_type="latent" if latent_out else "pil",
                            progress=ProgressBar(), height=args.height, width=args.width, target=target,
                            loras=[parse_lora_arg(text) for text in args.lora])
    if result.latents is None:  # a rank other than 0 of an external launcher
        return 0
    if latent_out:
        _save_atomic(out, lambda f: np.save(f, result.latents))
    else:
        from trt_distri.png import png_bytes

        data = png_bytes(result.image)
        _save_atomic(out, lambda f: f.write(data))
    print(out)
    logger.info("%s", result.summary)
    return 0


def _run_random(args: argparse.Namespace, out: Path, target) -> int:
    from trt_distri.pipeline import check_target, check_workdir, denoise, load_manifest

    manifest = load_manifest(args.workdir)
    check_workdir(manifest, args.workdir, args.height, args.width)
    check_target(manifest, target)
    inputs = random_inputs(manifest, args.steps, args.scheduler, args.guidance, args.seed)
    start = time.perf_counter()
    from trt_distri.engines.lora_apply import load_adapters
    from trt_distri.lora import parse_lora_arg

    adapters = load_adapters(manifest, args.backend, [parse_lora_arg(text) for text in args.lora])
    latents, reports = denoise(args.workdir, manifest, inputs, args.warmup_steps, target, args.no_comm,
                               adapters=adapters)
    seconds = time.perf_counter() - start
    if latents is not None:
        _save_atomic(out, lambda f: np.save(f, latents))
        print(out)
    logger.info("%s", _summary(manifest, reports, seconds, args))
    return 0


def random_inputs(manifest, steps: int, scheduler: str, guidance: float, seed: int):
    """Seeded noise and text embeddings of the model's shapes, and the scheduler as a LinearSchedule."""
    from trt_distri.prompt import default_time_ids
    from trt_distri.runtime.generation import GenerationInputs
    from trt_distri.schedulers import make_schedule

    rng = np.random.default_rng(seed)
    plan, inputs = manifest.plan, manifest.conditioning
    latents = rng.standard_normal((1, manifest.model.in_channels, plan.latent_height, plan.latent_width), np.float32)
    enc = rng.standard_normal((2, *inputs.find("encoder_hidden_states").shape), np.float32)
    guided = manifest.guidance
    rows = 2 if guided else 1
    text = time_ids = None
    if inputs.find("text_embeds") is not None:
        text = rng.standard_normal((rows, *inputs.find("text_embeds").shape), np.float32)
        time_ids = default_time_ids(plan, rows)
    schedule = make_schedule(scheduler, scheduler_config(manifest), steps)
    return GenerationInputs(latents, enc[1:], enc[:1] if guided else None, schedule, guidance, text, time_ids)


def _save_atomic(path: Path, write) -> None:
    """Write with `write(file)` beside `path`, then rename into place: never a half-written output."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _summary(manifest, reports: list[dict], seconds: float, args) -> str:
    plan = manifest.plan
    runs = reports[0]["runs"][-1]
    return (f"{plan.height}x{plan.width}, {args.steps} steps in {seconds:.1f} s on {len(reports)} "
            f"rank(s), GN {manifest.gn_mode}, backend {args.backend}"
            + ("" if runs.get("async_step_ms") is None else
               f"; median step {runs['sync_step_ms']} ms sync, {runs['async_step_ms']} ms async"))
