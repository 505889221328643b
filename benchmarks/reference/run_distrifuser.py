"""Run the reference implementation (distrifuser, PyTorch, diffusers 0.24) on the SDXL architecture with random weights.

Issue 8: the reference beside trt-distri, same host, same resolution, GPU count, step count and random weights.
The reference is never committed: benchmarks/reference/prepare.sh extracts it into .reference/distrifuser (git-ignored
through .git/info/exclude) and stages its pinned wheels. See docs/benchmarks.md, "Running the reference implementation".

  torchrun --nproc_per_node N benchmarks/reference/run_distrifuser.py --size 2048 --steps 8 --warmup 2 \
      [--no-split-batch] [--mode corrected_async_gn] [--no-cuda-graph] --out /tmp/ref-g4.json

Nothing is downloaded: the pipeline is built in memory from trt-distri's shipped configurations (UNet: seed 0, the
same weights as trt_distri.models.random_unet("sdxl", 0); text encoders: seed 1; VAE and DDIM scheduler as in
trt_distri.pipeline_models.random_pipeline) with the tiny local CLIP tokenizer, then cast to fp16, wrapped in
distrifuser's DistriUNetPP and handed to DistriSDXLPipeline(pipeline, config) (its constructor takes a pipeline
object; from_pretrained is only a convenience that downloads).

Timing: the pipeline runs --repeats times (each a full generation, output_type="latent", so no VAE); in the last
one every UNet call is bracketed by CUDA events. Step k is synchronous when k <= warmup (distrifuser's counter; the
same convention as trt-distri's --warmup). Reported per rank and, on rank 0, the maximum over ranks (the slowest
rank): median synchronous and asynchronous UNet step (ms), the UNet loop from the first call's start to the last
call's end (ms; scheduler steps between calls included), the pipeline's wall time, and the 50-step projection that
benchmarks/bench.py uses (5 synchronous + 45 asynchronous steps).

--cpu-check runs the same code on CPU with gloo and fp32 (for a smoke test of this script without GPUs, e.g.
`torchrun --nproc_per_node 2 ... --cpu-check --model tiny-sdxl --size 256`); distrifuser's own DistriConfig needs
CUDA, so a stand-in with the same fields is built there. Timings from it mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REF = ROOT / ".reference" / "distrifuser"


def _isolate_from_host() -> None:
    """Keep diffusers 0.24 away from the host's newer optional packages and from any download."""
    # diffusers 0.24 imports peft/accelerate when it finds them; the host's (accelerate 1.x, maybe peft) expect
    # transformers 5 / huggingface_hub 1.x. sys.modules[name] = None makes find_spec() report them as absent.
    for name in ("peft", "accelerate"):
        if os.environ.get(f"REF_ALLOW_{name.upper()}") != "1":
            sys.modules[name] = None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "ref-hf-home"))
    os.environ.setdefault("DIFFUSERS_NO_ADVISORY_WARNINGS", "1")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=2048, help="image height and width (pixels)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--steps", type=int, default=8, help="denoising steps per generation")
    ap.add_argument("--warmup", type=int, default=2, help="distrifuser warmup_steps: steps 0..warmup are synchronous")
    ap.add_argument("--guidance", type=float, default=5.0, help="guidance scale (> 1: classifier-free guidance)")
    ap.add_argument("--no-split-batch", action="store_true", help="patches only; no guidance split over GPU halves")
    ap.add_argument("--mode", default="corrected_async_gn",
                    choices=["corrected_async_gn", "sync_gn", "full_sync", "stale_gn", "separate_gn", "no_sync"])
    ap.add_argument("--parallelism", default="patch", choices=["patch", "naive_patch", "tensor"])
    ap.add_argument("--no-cuda-graph", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="generations; the last is measured")
    ap.add_argument("--model", default="sdxl", help="trt-distri shipped configuration (sdxl, tiny-sdxl)")
    ap.add_argument("--seed", type=int, default=0, help="weight seed (UNet; text encoders use seed + 1)")
    ap.add_argument("--latent-seed", type=int, default=0)
    ap.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    ap.add_argument("--ref", type=Path, default=Path(os.environ.get("DISTRIFUSER_SRC", DEFAULT_REF)),
                    help="folder holding the distrifuser package (default .reference/distrifuser)")
    ap.add_argument("--out", type=Path, default=None, help="JSON written by rank 0")
    ap.add_argument("--save-latents", type=Path, default=None, help="rank 0 saves the final latents (torch.save)")
    ap.add_argument("--cpu-check", action="store_true", help="CPU + gloo + fp32 smoke test (no timings)")
    return ap.parse_args(argv)


def _write_tokenizer(folder: Path):
    """trt-distri's tiny CLIP tokenizer as vocab.json + merges.txt (transformers 4.36's CLIPTokenizer takes files)."""
    from transformers import CLIPTokenizer

    from trt_distri.tiny_tokenizer import MAX_LENGTH, tiny_vocab

    vocab, merges = tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n",
                                       encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_LENGTH)


def build_pipeline(model: str, seed: int, dtype):
    """StableDiffusionXLPipeline of trt-distri's shipped configuration, random weights, built like random_pipeline."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from trt_distri.models import random_unet
    from trt_distri.pipeline_models import SCHEDULER_CONFIG, TEXT_ENCODER_CONFIGS, VAE_CONFIGS
    from trt_distri.tiny_tokenizer import special_ids

    if len(TEXT_ENCODER_CONFIGS.get(model, [])) != 2:
        raise SystemExit(f"run_distrifuser: {model!r} is not an SDXL-shaped configuration (sdxl, tiny-sdxl)")
    unet = random_unet(model, seed)  # torch.manual_seed(seed); UNet2DConditionModel.from_config(UNET_CONFIGS[...])
    torch.manual_seed(seed + 1)
    encoders = []
    for i, cfg in enumerate(TEXT_ENCODER_CONFIGS[model]):
        config = CLIPTextConfig(**cfg, max_position_embeddings=77, **special_ids())
        encoders.append((CLIPTextModelWithProjection if i == 1 else CLIPTextModel)(config).eval())
    vae = AutoencoderKL.from_config(VAE_CONFIGS[model]).eval()
    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    tok_dir = Path(tempfile.mkdtemp(prefix="ref-tokenizer-"))
    tokenizer = _write_tokenizer(tok_dir)
    parts = dict(unet=unet.to(dtype), vae=vae.to(dtype), text_encoder=encoders[0].to(dtype),
                 text_encoder_2=encoders[1].to(dtype), tokenizer=tokenizer, tokenizer_2=tokenizer,
                 scheduler=scheduler)
    return parts, StableDiffusionXLPipeline, unet.config


class _CpuConfig:
    """Stand-in for distrifuser.utils.DistriConfig on CPU (gloo): same fields and group layout, no CUDA."""

    def __init__(self, height, width, do_classifier_free_guidance, split_batch, warmup_steps, mode, parallelism):
        import torch
        from torch import distributed as dist

        if "RANK" in os.environ:
            dist.init_process_group("gloo")
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        self.world_size, self.rank = world, rank
        self.height, self.width = height, width
        self.do_classifier_free_guidance, self.split_batch = do_classifier_free_guidance, split_batch
        self.warmup_steps, self.comm_checkpoint, self.mode = warmup_steps, 60, mode
        self.use_cuda_graph, self.parallelism, self.split_scheme, self.verbose = False, parallelism, "row", False
        split = do_classifier_free_guidance and split_batch
        self.n_device_per_batch = max(world // 2, 1) if split else world
        self.device = torch.device("cpu")
        self.batch_group = self.split_group = None
        if split and world >= 2:
            groups = [dist.new_group(list(range(i * (world // 2), (i + 1) * (world // 2)))) for i in range(2)]
            self.batch_group = groups[self.batch_idx()]
            splits = [dist.new_group([i, i + world // 2]) for i in range(world // 2)]
            self.split_group = splits[self.split_idx()]

    def batch_idx(self, rank=None):
        rank = self.rank if rank is None else rank
        return 1 - int(rank < self.world_size // 2) if self.do_classifier_free_guidance and self.split_batch else 0

    def split_idx(self, rank=None):
        return (self.rank if rank is None else rank) % self.n_device_per_batch


class _Timer:
    """Brackets every call of the (distributed) UNet with CUDA events (or perf_counter on CPU)."""

    def __init__(self, unet, cuda: bool):
        import torch

        self.torch, self.cuda, self.unet = torch, cuda, unet
        self.inner = unet.forward
        self.marks: list[tuple] = []
        unet.forward = self  # instance attribute: nn.Module.__call__ -> self.forward -> here

    def __call__(self, *args, **kwargs):
        torch = self.torch
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.inner(*args, **kwargs)
            end.record()
        else:
            start = time.perf_counter()
            out = self.inner(*args, **kwargs)
            end = time.perf_counter()
        self.marks.append((start, end))
        return out

    def reset(self):
        self.marks = []

    def steps_ms(self) -> tuple[list[float], float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            steps = [s.elapsed_time(e) for s, e in self.marks]
            loop = self.marks[0][0].elapsed_time(self.marks[-1][1]) if self.marks else 0.0
        else:
            steps = [1000 * (e - s) for s, e in self.marks]
            loop = 1000 * (self.marks[-1][1] - self.marks[0][0]) if self.marks else 0.0
        return steps, loop


def _median(xs):
    return round(float(statistics.median(xs)), 2) if xs else None


def main(argv=None) -> int:
    args = parse_args(argv)
    _isolate_from_host()
    sys.path.insert(0, str(ROOT))
    if not (args.ref / "distrifuser" / "pipelines.py").is_file():
        raise SystemExit(f"run_distrifuser: no distrifuser package under {args.ref}. Fix: run "
                         "benchmarks/reference/prepare.sh (or pass --ref / DISTRIFUSER_SRC)")
    sys.path.insert(0, str(args.ref))

    import diffusers
    import torch
    import transformers
    from torch import distributed as dist

    from distrifuser.models.distri_sdxl_unet_pp import DistriUNetPP
    from distrifuser.models.distri_sdxl_unet_tp import DistriUNetTP
    from distrifuser.models.naive_patch_sdxl import NaivePatchUNet
    from distrifuser.pipelines import DistriSDXLPipeline
    from distrifuser.utils import DistriConfig

    height, width = args.height or args.size, args.width or args.size
    cfg_kwargs = dict(height=height, width=width, do_classifier_free_guidance=args.guidance > 1,
                      split_batch=not args.no_split_batch, warmup_steps=args.warmup, mode=args.mode,
                      parallelism=args.parallelism)
    t0 = time.perf_counter()
    if args.cpu_check:
        config, dtype = _CpuConfig(**cfg_kwargs), torch.float32
    else:
        config = DistriConfig(**cfg_kwargs, use_cuda_graph=not args.no_cuda_graph)
        dtype = torch.float16
    rank, world = config.rank, config.world_size
    parts, pipe_cls, unet_config = build_pipeline(args.model, args.seed, dtype)
    build_s = time.perf_counter() - t0

    wrapper = {"patch": DistriUNetPP, "tensor": DistriUNetTP, "naive_patch": NaivePatchUNet}[args.parallelism]
    parts["unet"] = wrapper(parts["unet"].to(config.device), config)  # as DistriSDXLPipeline.from_pretrained does
    pipeline = pipe_cls(**parts, add_watermarker=False).to(config.device)
    t1 = time.perf_counter()
    distri = DistriSDXLPipeline(pipeline, config)  # prepare(): comm buffers, pre-run, CUDA graphs
    prepare_s = time.perf_counter() - t1
    distri.set_progress_bar_config(disable=True)
    timer = _Timer(distri.pipeline.unet, cuda=not args.cpu_check)

    walls = []
    latents = None
    for _ in range(args.repeats):
        timer.reset()
        gen = torch.Generator(device="cpu" if args.cpu_check else "cuda").manual_seed(args.latent_seed)
        if dist.is_initialized():
            dist.barrier()
        w0 = time.perf_counter()
        out = distri(prompt=args.prompt, generator=gen, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, output_type="latent")
        if not args.cpu_check:
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - w0)
        latents = out.images
    steps, loop_ms = timer.steps_ms()
    sync = [t for k, t in enumerate(steps) if k <= args.warmup]
    asyn = [t for k, t in enumerate(steps) if k > args.warmup]
    mine = {"rank": rank, "sync_step_ms": _median(sync), "async_step_ms": _median(asyn),
            "unet_loop_ms": round(loop_ms, 1), "wall_s": round(walls[-1], 3), "steps_ms": [round(t, 2) for t in steps],
            "finite": bool(torch.isfinite(latents.float()).all()),
            "max_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if not args.cpu_check else None}
    ranks = [None] * world
    if dist.is_initialized():
        dist.all_gather_object(ranks, mine)
    else:
        ranks = [mine]
    if rank == 0:
        worst = {k: max((r[k] or 0) for r in ranks) for k in ("sync_step_ms", "async_step_ms", "unet_loop_ms",
                                                                 "wall_s")}
        projected = (5 * (worst["sync_step_ms"] or 0) + 45 * (worst["async_step_ms"] or worst["sync_step_ms"] or 0))
        result = {
            "implementation": "distrifuser (reference)", "height": height, "width": width, "gpus": world,
            "split_batch": config.do_classifier_free_guidance and config.split_batch and world >= 2,
            "n_device_per_batch": config.n_device_per_batch, "mode": args.mode, "parallelism": args.parallelism,
            "cuda_graph": bool(config.use_cuda_graph), "steps": args.steps, "warmup": args.warmup,
            "guidance": args.guidance, "model": args.model, "seed": args.seed, "dtype": str(dtype).split(".")[-1],
            **worst, "projected_50_s": round(projected / 1000, 2), "build_s": round(build_s, 1),
            "prepare_s": round(prepare_s, 1), "all_finite": all(r["finite"] for r in ranks), "ranks": ranks,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version(),
                         "cuda": torch.version.cuda, "device": None if args.cpu_check else
                         torch.cuda.get_device_name(config.device)},
            "cpu_check": args.cpu_check, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        text = json.dumps(result, indent=1)
        print(text)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        if args.save_latents:
            torch.save(latents.float().cpu(), args.save_latents)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
