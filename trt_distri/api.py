"""The library API: a `Generator` loaded once from a work directory, then asked for latents or images.

C and C++ programs reach it through libtrt_distri.so (capi/, `trt_distri.h`), which calls this module.

Where the ranks run (docs/runtime.md):
- device "cpu": every rank is a thread of this process. Sessions are loaded once, by the constructor, and reused by
  every generation; `close()` releases them.
- device "cuda", no rank: one process per GPU (`runtime.gpu.GpuRankPool`), loaded by the constructor and kept for
  every generation until `close()`; a failed generation stops them and the next one loads them again.
- device "cuda" with a rank (given, or from a launcher's environment: torchrun, srun, mpirun): this process is one
  rank (`runtime.gpu.RankServer`, loaded per generation); ranks meet in a rendezvous directory, one subdirectory
  per generation.

Text encoders, noise, scheduler and VAE are trt_distri.pipeline's, so `generate` equals
`trt_distri.pipeline.generate_image`. A work directory exported from a UNet alone has neither text encoders nor a
VAE: it generates latents from precomputed text embeddings (`generate_from_embeddings`).
"""
from __future__ import annotations

import gc
import math
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from trt_distri.engines.backend import BACKENDS, DEFAULT_BACKEND
from trt_distri.errors import ClosedError, ConfigError, InvalidArgumentError, UnavailableError
from trt_distri.manifest import Manifest
from trt_distri.params import check_generation, check_prompt, scheduler_config
from trt_distri.prompt import default_time_ids
from trt_distri.runtime.executor import RunOptions
from trt_distri.runtime.generation import Ranks, Topology

__all__ = ["ClosedError", "Generator", "InvalidArgumentError", "Params", "Result", "UnavailableError",
           "WorkdirInfo"]


@dataclass
class Result:
    """One generation: latents (1, C, h, w) fp32 (None on ranks that do not receive them) and the image."""

    latents: np.ndarray | None
    image: np.ndarray | None  # (H, W, 3) uint8 RGB
    seconds: float
    image_missing: str | None = None  # why `image` is None


@dataclass(frozen=True)
class Params:
    """What one generation asks for besides its conditioning (checked against the work directory)."""

    steps: int = 30
    guidance: float = 5.0
    seed: int = 0
    scheduler: str = "ddim"
    warmup_steps: int = 4
    width: int | None = None
    height: int | None = None
    latents: np.ndarray | None = None  # (1, C, h, w) or (C, h, w) initial noise, as diffusers' latents=; None: seed


@dataclass(frozen=True)
class WorkdirInfo:
    """What a work directory expects (text embeddings per branch: (seq_len, dim)) and produces."""

    width: int
    height: int
    latent_channels: int
    latent_height: int
    latent_width: int
    seq_len: int
    dim: int
    pooled_dim: int  # SDXL text_embeds size; 0 for SD 1.x/2.x
    guidance: bool
    world: int

    @classmethod
    def from_manifest(cls, m: Manifest) -> "WorkdirInfo":
        plan, text = m.plan, m.conditioning.find("encoder_hidden_states")
        pooled = m.conditioning.find("text_embeds")
        return cls(plan.width, plan.height, m.model.in_channels, plan.latent_height, plan.latent_width, text.shape[0],
                   text.shape[1], pooled.shape[0] if pooled else 0, m.guidance, Topology.from_manifest(m).world)


class Generator:
    """A work directory ready to generate; see the module docstring for where its ranks run."""

    def __init__(self, workdir: str | Path, device: str | None = None, rank: int | None = None,
                 world: int | None = None, *, backend: str = DEFAULT_BACKEND, gpu: int | None = None,
                 rendezvous: str | Path | None = None, cuda_graph: bool | None = None,
                 keep_parts_loaded: bool = True) -> None:
        if backend not in BACKENDS:
            raise InvalidArgumentError(f"unknown backend {backend!r}. Note: expected one of {', '.join(BACKENDS)}")
        self.workdir = Path(workdir)
        self.manifest = Manifest.load(self.workdir)
        self.device = _pick_device(device)
        self.backend = backend
        self.cuda_graph = cuda_graph  # GPU ranks: None is the backend's default (runtime.executor.uses_cuda_graph)
        # the text encoders and the VAE stay loaded from their first use to close(): loading them again for every
        # image is most of an encode; False loads them per image (less memory on the auxiliary GPU between images)
        self.keep_parts_loaded, self._encoder, self._decoder = keep_parts_loaded, None, None
        self.info = WorkdirInfo.from_manifest(self.manifest)
        self._check_world(world)
        self._lock = threading.Lock()
        self.loras: list[tuple[Path, float]] = []  # the LoRA files in force (set_loras)
        self._adapters: list = []  # and as converted (engines.lora_apply): text encoders loaded later take them
        if self.device == "cpu":
            if rank not in (None, 0):
                raise InvalidArgumentError(f"on the CPU every rank is a thread of this process. Note: expected "
                                           f"rank -1 or 0, got {rank}")
            from trt_distri.runtime.local import LocalRanks

            self._ranks: Ranks | None = LocalRanks(self.manifest, backend)
        else:
            from trt_distri.runtime.gpu import GpuRanks
            from trt_distri.runtime.launch import launcher_rank

            self._ranks = GpuRanks(self.manifest, backend, launcher_rank() if rank is None else rank, gpu,
                                   rendezvous, cuda_graph)
        self._aux_device = self._ranks.aux_device  # text encoders and VAE

    # ---- generation ----------------------------------------------------------------------------------------------
    def generate(self, prompt: str, negative_prompt: str = "", **params) -> Result:
        """Prompt -> image with the work directory's text encoders, UNet ranks and VAE (trt_distri.pipeline);
        equals `trt_distri.pipeline.generate_image` for the same arguments. `params`: the fields of Params
        (steps, guidance, seed, scheduler, warmup_steps, width, height, latents)."""
        p = self._params(params)
        prompt, negative_prompt = check_prompt(prompt), check_prompt(negative_prompt, "negative prompt")
        if self.manifest.text_encoders is None:
            raise UnavailableError(f"no text encoders in {self.workdir}: it was exported from a UNet alone. Note: "
                                   "expected a work directory exported from a pipeline. Fix: export a pipeline folder "
                                   "(or random:<name>) with `trt-distri export`, or use generate_from_embeddings")
        with self._lock:
            self._check_open()
            start = time.perf_counter()
            encoder = self._prompt_encoder()
            try:
                emb = encoder.encode(prompt, negative_prompt, self.manifest.guidance)
            finally:
                if encoder is not self._encoder:  # loaded for this image only (keep_parts_loaded=False)
                    encoder.close()
            return self._generate(emb, p, start)

    def generate_from_embeddings(self, cond: np.ndarray, uncond: np.ndarray | None = None,
                                 text_embeds: np.ndarray | None = None, time_ids: np.ndarray | None = None,
                                 **params) -> Result:
        """Text embeddings -> latents, and the image where the work directory has a VAE. cond/uncond: (1, S, D) or
        (S, D); SDXL: text_embeds (2, T) [uncond; cond] ((1, T) without guidance), time_ids (6,) or one row per
        branch (default: the image size, no crop). The same embeddings as generate(prompt) give its image."""
        from trt_distri.prompt import PromptEmbeddings

        p = self._params(params)
        emb = PromptEmbeddings(*self._conditioning(cond, uncond), *self._added(text_embeds, time_ids))
        with self._lock:
            self._check_open()
            return self._generate(emb, p, time.perf_counter())

    def _generate(self, emb, p: Params, start: float) -> Result:
        from trt_distri.pipeline import generation_inputs

        inputs = generation_inputs(self.manifest, emb, p.steps, p.scheduler, p.guidance, p.seed, p.latents)
        latents = self._ranks.run(inputs, RunOptions(warmup_steps=p.warmup_steps, cuda_graph=self.cuda_graph))
        if self.manifest.vae is None:
            return Result(latents, None, time.perf_counter() - start, image_missing=(
                f"no VAE in this work directory ({self.workdir} was exported from a UNet alone): the result has "
                "latents only. Fix: export a pipeline folder (or random:<name>) with `trt-distri export`, or decode "
                "the latents with the model's VAE"))
        if latents is None:
            return Result(None, None, time.perf_counter() - start, "only world rank 0 receives the image")
        image = self._vae_decoder().decode(latents)
        return Result(latents, image, time.perf_counter() - start)

    def _prompt_encoder(self):
        from trt_distri.prompt import PromptEncoder

        encoder = self._encoder or PromptEncoder(self.workdir, self.manifest, self._aux_device, self._adapters)
        self._encoder = encoder if self.keep_parts_loaded else None
        return encoder

    def _vae_decoder(self):
        from trt_distri.pipeline import VaeDecoder

        decoder = self._decoder or VaeDecoder(self.workdir, self.manifest, self._aux_device)
        self._decoder = decoder if self.keep_parts_loaded else None
        return decoder

    def _conditioning(self, cond, uncond) -> tuple[np.ndarray, np.ndarray | None]:
        info = self.info
        seq = (info.seq_len, info.dim)
        if info.guidance == (uncond is None):
            raise InvalidArgumentError(f"{self.workdir} was exported {'with' if info.guidance else 'without'} "
                                       f"guidance. Note: expected uncond {'embeddings' if info.guidance else 'None'}, "
                                       f"got {'None' if uncond is None else 'embeddings'}")
        return _array("cond", cond, seq), None if uncond is None else _array("uncond", uncond, seq)

    def _added(self, text_embeds, time_ids) -> tuple[np.ndarray | None, np.ndarray | None]:
        dim, plan, rows = self.info.pooled_dim, self.manifest.plan, 2 if self.info.guidance else 1
        if not dim:
            if text_embeds is not None or time_ids is not None:
                raise InvalidArgumentError(f"{self.workdir} holds a UNet without text_embeds/time_ids (SD 1.x/2.x)."
                                           " Note: expected None for both, got arrays")
            return None, None
        if text_embeds is None:
            raise InvalidArgumentError(f"an SDXL UNet needs pooled text embeddings. Note: expected text_embeds "
                                       f"({rows}, {dim}), got None")
        text_embeds = _array("text_embeds", text_embeds, (rows, dim), batch=False)
        if time_ids is None:
            time_ids = default_time_ids(plan, rows)
        row = self.manifest.conditioning.find("time_ids").shape
        time_ids = np.asarray(time_ids, np.float32)
        time_ids = np.repeat(time_ids[None], rows, axis=0) if time_ids.shape == row else time_ids
        return text_embeds, _array("time_ids", time_ids, (rows, *row), batch=False)

    def check_params(self, **params) -> Params:
        """The Params that generate(**params) would use, or the InvalidArgumentError it would raise (for callers
        that refuse a request before queueing it, such as the server)."""
        return self._params(params)

    def _params(self, given: dict) -> Params:
        try:
            p = Params(**given)
        except TypeError as exc:
            raise InvalidArgumentError(f"{exc}. Note: expected keywords of trt_distri.api.Params") from None
        plan = self.manifest.plan
        size = (p.width or plan.width, p.height or plan.height)
        if size != (plan.width, plan.height):
            raise InvalidArgumentError(f"invalid size. Note: expected {plan.width}x{plan.height} (the work "
                                       f"directory's), got {size[0]}x{size[1]}. Fix: export again for another size")
        check_generation(p.steps, p.guidance, p.seed, p.scheduler, p.warmup_steps, scheduler_config(self.manifest))
        if p.latents is None:
            return p
        from trt_distri.pipeline import check_latents

        try:
            return replace(p, latents=check_latents(self.manifest, p.latents))
        except ConfigError as exc:
            raise InvalidArgumentError(str(exc)) from None

    # ---- LoRA adapters -------------------------------------------------------------------------------------------
    def set_loras(self, loras) -> None:
        """Apply exactly these LoRA files to the UNet of every rank and to the text encoders, in place, until the
        next call: `loras` is a sequence of (path, scale) pairs (docs/lora.md: formats, W = W0 + sum(scale *
        update)); [] restores the base weights. A bad file leaves the weights as they were."""
        from trt_distri.engines.lora_apply import load_adapters

        pairs = _lora_pairs(loras)
        with self._lock:
            self._check_open()
            adapters = load_adapters(self.manifest, self.backend, pairs)
            self._ranks.set_adapters(adapters)
            if self._encoder is not None:
                self._encoder.set_adapters(adapters)
            self.loras, self._adapters = pairs, adapters

    def clear_loras(self) -> None:
        """The base weights again, bit for bit."""
        self.set_loras([])

    # ---- lifetime --------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release every session and buffer (idempotent); later calls raise ClosedError."""
        with self._lock:
            ranks, self._ranks = getattr(self, "_ranks", None), None
            if getattr(self, "_encoder", None) is not None:
                self._encoder.close()
            self._encoder = self._decoder = None
            if ranks is not None:
                ranks.close()
            gc.collect()  # sessions sit in reference cycles (executor <-> bound sessions): free them now

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._ranks is None:
            raise ClosedError(f"the generator of {self.workdir} was closed. Fix: create a new one")

    def _check_world(self, world: int | None) -> None:
        expected = Topology.from_manifest(self.manifest).world
        if world is not None and world != expected:
            raise ConfigError(f"{self.workdir} is exported for a world of {expected} rank(s). Note: expected world "
                              f"{expected}, got {world}. Fix: export again with --gpus {world}")


def _array(name: str, value, shape: tuple[int, ...], batch: bool = True) -> np.ndarray:
    """`value` as a C-contiguous fp32 array of `shape`, with a leading batch of 1 when `batch`."""
    arr = np.asarray(value, dtype=np.float32)
    if batch and arr.ndim == len(shape):
        arr = arr[None]
    want = (1, *shape) if batch else shape
    if arr.shape != want:
        raise InvalidArgumentError(f"{name} has the wrong shape. Note: expected {want}, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise InvalidArgumentError(f"{name} holds NaN or infinity. Note: expected finite values")
    return np.ascontiguousarray(arr)


def _lora_pairs(loras) -> list[tuple[Path, float]]:
    """[(path, scale), ...] checked: a path-like and a finite number each."""
    try:
        pairs = [(Path(path), float(scale)) for path, scale in loras]
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"invalid loras {loras!r}. Note: expected a list of (path, scale) pairs, such as "
                                   "[('style.safetensors', 0.8)]") from None
    bad = next((p for p in pairs if not math.isfinite(p[1])), None)
    if bad is not None:
        raise InvalidArgumentError(f"invalid LoRA scale for {bad[0]}. Note: expected a finite number, got {bad[1]}")
    return pairs


def _pick_device(device: str | None) -> str:
    if device not in (None, "cpu", "cuda"):
        raise InvalidArgumentError(f"unknown device {device!r}. Note: expected 'cpu', 'cuda' or None (automatic)")
    if device is not None:
        return device
    from trt_distri.pipeline import default_device

    return default_device()

