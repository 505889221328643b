"""Prompt to image with a work directory: text encoders, the distributed UNet loop, VAE decoder.

`generate_image` is the library entry point (the CLI's `run --prompt` and the C API call it). Stages:
1. encode: tokenizers + exported text encoders (ONNX Runtime, on the CPU or the first GPU);
2. denoise: the initial noise equals `torch.randn` from a CPU `torch.Generator` seeded with `seed`, as diffusers
   draws it (trt_distri.noise computes it without torch), so the same seed gives diffusers' image; then
   runtime.run_local (CPU, ranks as threads) or runtime.run_gpus (one process per GPU);
3. decode: the exported VAE decoder, in blended tiles when the latent is larger than the VAE's native size
   (trt_distri.vae_tiles).
Text encoder and VAE sessions are released before and created after the UNet ranks run, so that they never hold
GPU memory at the same time as the UNet.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trt_distri.engines.backend import DEFAULT_BACKEND
from trt_distri.errors import ConfigError
from trt_distri.manifest import Manifest
from trt_distri.params import check_generation, check_prompt, scheduler_config
from trt_distri.prompt import PromptEmbeddings, PromptEncoder
from trt_distri.vae_tiles import decode_tiled, to_uint8

log = logging.getLogger(__name__)
OUTPUT_TYPES = ("pil", "np", "latent")
#: progress(stage, done, total): stage is "encode", "denoise" or "decode".
Progress = Callable[[str, int, int], None]


@dataclass
class ImageResult:
    image: np.ndarray | None  # (H, W, 3) uint8 RGB, row-major; None for output_type "latent"
    latents: np.ndarray  # (1, C, h, w) fp32, the final latents (before the VAE's scaling)
    seconds: float
    summary: str
    stages: dict[str, float] = field(default_factory=dict)  # seconds of encode, denoise, decode
    ranks: dict[str, float] = field(default_factory=dict)  # slowest rank: load_s, loop_s, *_step_ms (rank_times)


@dataclass(frozen=True)
class Target:
    """Where the UNet ranks run: `device` "cpu" (threads) or "cuda" (one process per GPU in `gpus`)."""

    device: str
    gpus: tuple[int, ...] | None = None
    backend: str = DEFAULT_BACKEND
    launcher: str = "local"  # "env": this process is one rank of torchrun/srun/mpirun
    rendezvous: Path | None = None
    repeats: int = 1
    cuda_graph: bool | None = None  # None: the backend's default (runtime.executor.uses_cuda_graph)

    @property
    def first_gpu(self) -> int | None:
        """The GPU for the text encoders and the VAE (None: the CPU)."""
        return None if self.device == "cpu" else (self.gpus[0] if self.gpus else 0)


def make_target(device: str | None, gpus: str | None, backend: str = DEFAULT_BACKEND, **extra) -> Target:
    """A Target from CLI-style strings: device None picks cuda where a GPU exists; gpus "N" (the first N GPUs),
    "i,j,..." (those indices) or None."""
    indices = None
    if gpus:
        try:
            indices = tuple(int(g) for g in gpus.split(",") if g.strip()) if "," in gpus else tuple(range(int(gpus)))
        except ValueError:
            raise ConfigError(f"cannot read --gpus {gpus!r}. Note: expected a count such as 4 or GPU indices such "
                              "as 0,1,2,3") from None
        if not indices:
            raise ConfigError(f"--gpus {gpus!r} names no GPU. Note: expected a count >= 1 or indices such as 0,1")
    device = device or default_device()
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}. Note: expected cpu or cuda")
    return Target(device, indices, backend, **extra)


def default_device() -> str:
    """"cuda" where nvidia-smi lists a GPU (engines.gpus, the one GPU count) and cuda-python's runtime imports,
    else "cpu"."""
    from trt_distri import cudart
    from trt_distri.engines.gpus import list_gpus

    return "cuda" if list_gpus() and cudart.available() else "cpu"


def initial_noise(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Standard normal noise as diffusers draws it: equal to torch.randn with a CPU torch.Generator seeded by
    `seed`, computed without torch (trt_distri.noise)."""
    from trt_distri.noise import randn

    return randn(shape, seed)


def load_manifest(workdir: str | Path) -> Manifest:
    return Manifest.load(workdir)


def encode_prompt(workdir: str | Path, prompt: str, negative_prompt: str = "", device: int | None = None,
                  manifest: Manifest | None = None, adapters=()) -> PromptEmbeddings:
    """The text conditioning of `prompt` (and of the negative prompt for guidance) with the work directory's
    encoders, with the text-encoder layers of LoRA `adapters` ((adapter, scale) pairs) applied; the pieces of
    GenerationInputs, so that precomputed embeddings can be used instead."""
    manifest = manifest or load_manifest(workdir)
    encoder = PromptEncoder(Path(workdir), manifest, device, adapters)
    try:
        return encoder.encode(prompt, negative_prompt, manifest.guidance)
    finally:
        encoder.close()


def latent_shape(manifest: Manifest) -> tuple[int, int, int, int]:
    """(1, C, h, w) of the work directory's initial latents."""
    plan = manifest.plan
    return 1, manifest.model.in_channels, plan.latent_height, plan.latent_width


def check_latents(manifest: Manifest, latents) -> np.ndarray:
    """Caller's initial latents (diffusers' `latents=`: unscaled noise) as C-contiguous fp32 (1, C, h, w); a
    (C, h, w) array gets the batch of 1. Refuses another shape, a non-float dtype and NaN/infinity."""
    shape = latent_shape(manifest)
    arr = np.asarray(latents)
    if arr.dtype.kind != "f":
        raise ConfigError(f"latents must be floating point. Note: expected float32 (float16/float64 are converted), "
                          f"got {arr.dtype}")
    arr = arr[None] if arr.shape == shape[1:] else arr
    if arr.shape != shape:
        raise ConfigError(f"latents have the wrong shape. Note: expected {shape} (or {shape[1:]}), the work "
                          f"directory's latent, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError("latents hold NaN or infinity. Note: expected finite values")
    return np.ascontiguousarray(arr, np.float32)


def generation_inputs(manifest: Manifest, emb: PromptEmbeddings, steps: int, scheduler: str, guidance: float,
                      seed: int, latents: np.ndarray | None = None):
    """GenerationInputs from embeddings: seeded noise of the latent's shape (or the caller's `latents`, checked by
    check_latents) and the pipeline's scheduler."""
    from trt_distri.runtime.generation import GenerationInputs
    from trt_distri.schedulers import make_schedule

    config = scheduler_config(manifest)
    check_generation(steps, guidance, seed, scheduler, 0, config)
    schedule = make_schedule(scheduler, config, steps)
    noise = initial_noise(latent_shape(manifest), seed) if latents is None else check_latents(manifest, latents)
    return GenerationInputs(noise, emb.cond, emb.uncond, schedule, guidance, emb.text_embeds, emb.time_ids)


def start_gpu_ranks(manifest: Manifest, target: Target) -> Future | None:
    """The GPU rank processes of the built-in launcher, loading from now on in the background (a Future of the
    GpuRankPool), so that their loading overlaps the text encoding of a fresh process; None elsewhere."""
    if target.device == "cpu" or target.launcher == "env":
        return None
    from trt_distri.runtime.generation import Topology
    from trt_distri.runtime.gpu import GpuRankPool

    gpus = list(target.gpus) if target.gpus else list(range(Topology.from_manifest(manifest).world))
    starter = ThreadPoolExecutor(1, thread_name_prefix="ranks")
    future = starter.submit(GpuRankPool, manifest.root, gpus, target.backend, target.cuda_graph,
                            reused=target.repeats > 1)
    starter.shutdown(wait=False)
    return future


def _stop(ranks: Future | None) -> None:
    """Close rank processes started by start_gpu_ranks once their start has ended (a failed start left none)."""
    if ranks is not None and ranks.exception() is None:
        ranks.result().close()


def denoise(workdir: Path, manifest: Manifest, inputs, warmup_steps: int, target: Target, no_comm: bool = False,
            on_step=None, ranks: Future | None = None, adapters=()):
    """Run the UNet loop on `target` with LoRA `adapters` ((adapter, scale) pairs, engines.lora_apply); returns
    (latents or None on ranks other than 0, per-rank reports). `on_step(done, total)` follows the steps on the
    CPU; GPU workers report once, at the end. `ranks`: GPU rank processes already started (start_gpu_ranks), used
    for this one call; the caller stops them."""
    from trt_distri.runtime.executor import RunOptions
    from trt_distri.runtime.generation import Topology

    options = RunOptions(warmup_steps=warmup_steps, no_comm=no_comm, on_step=on_step, cuda_graph=target.cuda_graph)
    world = Topology.from_manifest(manifest).world
    check_target(manifest, target)
    if target.device == "cpu":
        from trt_distri.runtime.local import run_local

        latents, times = run_local(workdir, inputs, options, backend=target.backend, adapters=adapters)
        return latents, [{"runs": [t]} for t in times]
    if target.launcher == "env":
        from trt_distri.runtime.gpu import run_launched_rank

        latents, report = run_launched_rank(workdir, inputs, options, target.rendezvous, target.backend,
                                            adapters=adapters)
        return latents, [report]
    if ranks is not None:
        pool = ranks.result()
        if adapters:
            pool.set_adapters(adapters)
        return pool.generate(inputs, options, target.repeats)
    from trt_distri.runtime.gpu import run_gpus

    gpus = list(target.gpus) if target.gpus else list(range(world))
    return run_gpus(workdir, inputs, options, gpus, target.backend, repeats=target.repeats, adapters=adapters)


def check_target(manifest: Manifest, target: Target) -> None:
    """Refuse a rank or GPU count the work directory was not exported for, before anything is loaded."""
    from trt_distri.runtime.generation import Topology

    world = Topology.from_manifest(manifest).world
    if target.launcher == "env":
        if target.rendezvous is None:
            raise ConfigError("--launcher env needs --rendezvous DIR (a directory every rank can read)")
        return
    if target.gpus is not None and len(target.gpus) != world:
        where = "rank(s)" if target.device == "cpu" else "GPU(s)"
        raise ConfigError(f"the work directory is exported for {world} {where}. Note: expected {world} "
                          f"{'indices' if target.device == 'cpu' else 'GPUs'} in --gpus, got {len(target.gpus)}. "
                          f"Fix: pass --gpus {world} (or drop it), or export again with --gpus {len(target.gpus)}")


class VaeDecoder:
    """The exported VAE decoder's session (ONNX Runtime, CPU or one GPU), kept for as long as its owner keeps it."""

    def __init__(self, workdir: str | Path, manifest: Manifest, device: int | None = None) -> None:
        from trt_distri.engines.backend import LoadOptions, onnx_runner

        self.manifest = manifest
        self.session = onnx_runner().load(Path(workdir) / manifest.vae.file, LoadOptions(device, transient=True))

    def decode(self, latents: np.ndarray, progress: Progress | None = None, tile: int | None = None) -> np.ndarray:
        """Final latents -> (H, W, 3) uint8 image, tiled beyond the VAE's native size."""
        vae = self.manifest.vae
        z = latents.astype(np.float32)
        if vae.latents_mean is not None and vae.latents_std is not None:
            mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in (vae.latents_mean, vae.latents_std))
            z = z * std / np.float32(vae.scaling_factor) + mean
        else:
            z = z / np.float32(vae.scaling_factor) + np.float32(vae.shift_factor or 0.0)
        tile = tile or max(1, vae.sample_size // vae.scale)
        image = decode_tiled(lambda x: self.session.run_host({"latents": x})["image"], z, tile, vae.scale,
                             progress=None if progress is None else lambda d, t: progress("decode", d, t))
        return to_uint8(image)


def decode_latents(workdir: str | Path, manifest: Manifest, latents: np.ndarray, device: int | None = None,
                   progress: Progress | None = None, tile: int | None = None) -> np.ndarray:
    """Final latents -> (H, W, 3) uint8 image through the exported VAE decoder, tiled beyond its native size (a
    decoder loaded for this call and dropped after it; `VaeDecoder` keeps one)."""
    return VaeDecoder(workdir, manifest, device).decode(latents, progress, tile)


def check_workdir(manifest: Manifest, workdir: Path, height: int | None, width: int | None,
                  guidance: float | None = None) -> None:
    """Refuse a request the work directory was not exported for, naming the export that fixes it."""
    plan = manifest.plan
    if (height or plan.height, width or plan.width) != (plan.height, plan.width):
        raise ConfigError(f"{workdir} was exported for {plan.height}x{plan.width}. Note: expected "
                          f"{plan.height}x{plan.width}, got {height or plan.height}x{width or plan.width}. Fix: "
                          f"trt-distri export ... --height {height or plan.height} --width {width or plan.width} "
                          f"-o {workdir} --overwrite, or drop --height/--width")
    if guidance is not None and not manifest.guidance and guidance != 1.0:
        raise ConfigError(f"{workdir} was exported without classifier-free guidance (--no-guidance). Note: expected "
                          f"--guidance 1, got {guidance}. Fix: pass --guidance 1, or export again without "
                          "--no-guidance")


def generate_image(workdir: str | Path, prompt: str, negative_prompt: str = "", steps: int = 30,
                   guidance: float = 5.0, seed: int = 0, scheduler: str = "ddim", warmup_steps: int = 4,
                   device: str | None = None, gpus: str | None = None, output_type: str = "pil",
                   backend: str = DEFAULT_BACKEND, progress: Progress | None = None, height: int | None = None,
                   width: int | None = None, target: Target | None = None,
                   latents: np.ndarray | None = None,
                   loras: Sequence[tuple[str | Path, float]] = ()) -> ImageResult:
    """Generate one image for `prompt` with an exported work directory (see the module docstring); `latents`
    (1, C, h, w), as diffusers' `latents=`, replace the seeded noise; the LoRA files `loras` ((path, scale) pairs,
    docs/lora.md) are applied to the UNet and the text encoders."""
    if output_type not in OUTPUT_TYPES:
        raise ConfigError(f"unknown output type {output_type!r}. Note: expected one of {', '.join(OUTPUT_TYPES)}")
    workdir = Path(workdir)
    manifest = load_manifest(workdir)
    check_workdir(manifest, workdir, height, width, guidance)
    check_generation(steps, guidance, seed, scheduler, warmup_steps, scheduler_config(manifest))
    prompt, negative_prompt = check_prompt(prompt), check_prompt(negative_prompt, "negative prompt")
    target = target or make_target(device, gpus, backend)
    from trt_distri.engines.lora_apply import load_adapters

    adapters = load_adapters(manifest, target.backend, loras)  # before anything loads: a bad file fails fast
    check_target(manifest, target)
    report = progress or (lambda stage, done, total: None)
    stages: dict[str, float] = {}
    start = time.perf_counter()
    ranks = start_gpu_ranks(manifest, target)  # they load while this process encodes
    try:
        report("encode", 0, 1)
        emb = encode_prompt(workdir, prompt, negative_prompt, target.first_gpu, manifest, adapters)
        inputs = generation_inputs(manifest, emb, steps, scheduler, guidance, seed, latents)
        stages["encode"] = _lap(start, stages)
        report("encode", 1, 1)
        report("denoise", 0, steps)
        latents, reports = denoise(workdir, manifest, inputs, warmup_steps, target,
                                   on_step=lambda done, total: report("denoise", done, total), ranks=ranks,
                                   adapters=adapters)
    finally:
        _stop(ranks)
    stages["denoise"] = _lap(start, stages)
    report("denoise", steps, steps)
    image = None
    if output_type != "latent" and latents is not None:
        image = decode_latents(workdir, manifest, latents, target.first_gpu, report)
        stages["decode"] = _lap(start, stages)
    seconds = time.perf_counter() - start
    return ImageResult(image, latents, seconds, summary(manifest, target, steps, warmup_steps, seconds, stages, reports),
                       stages, rank_times(reports))


def rank_times(reports: list[dict]) -> dict[str, float]:
    """The slowest GPU rank's session load and UNet loop (the rest of "denoise" is process start-up), and the
    largest over ranks of the last run's first, median synchronous and median asynchronous step (ms); a key is left
    out where a rank's report lacks it (CPU ranks time nothing; an all-synchronous run has no async step)."""
    out = {}
    last = [r["runs"][-1] for r in reports if r.get("runs")]
    for key, values in (("load_s", [r.get("load_s") for r in reports]),
                        ("loop_s", [run.get("wall_s") for run in last]),
                        *((key, [run.get(key) for run in last])
                          for key in ("first_step_ms", "sync_step_ms", "async_step_ms"))):
        if values and all(v is not None for v in values):
            out[key] = max(values)
    return out


def _lap(start: float, stages: dict[str, float]) -> float:
    return round(time.perf_counter() - start - sum(stages.values()), 3)


def summary(manifest: Manifest, target: Target, steps: int, warmup_steps: int, seconds: float,
            stages: dict[str, float], reports: list[dict]) -> str:
    """One line: size, steps, where it ran (GPUs or CPU ranks), mode, backend, time per stage."""
    plan = manifest.plan
    ranks = len(reports)
    where = f"{ranks} GPU(s)" if target.device == "cuda" else f"{ranks} CPU rank(s)"
    split = ", guidance split" if manifest.cfg_split else ""
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
    return (f"{plan.height}x{plan.width}, {steps} steps ({min(warmup_steps + 1, steps)} synchronous) on "
            f"{where}{split}, GN {manifest.gn_mode}, backend {target.backend}: {seconds:.1f} s ({parts})")
