"""`DistriPipeline`: a work directory called the way diffusers' pipelines are called.

    from trt_distri import DistriPipeline                  # instead of: from diffusers import DiffusionPipeline
    pipe = DistriPipeline.from_workdir("work", device="cuda")   # instead of: DiffusionPipeline.from_pretrained(...)
    image = pipe("a red fox", num_inference_steps=30, generator=torch.Generator().manual_seed(0)).images[0]

Every image is one `trt_distri.api.Generator.generate` call (the same code path as the CLI, the C API and the
server). The defaults are diffusers': 50 steps, guidance 5.0 (SDXL) or 7.5 (SD 1.x/2.x). The initial noise:
- `generator=` (a CPU torch.Generator, or one per image): drawn from it as diffusers draws it (one `torch.randn` of
  the whole batch) and passed as `latents`, so the same generator gives diffusers' noise;
- `seed=` (this class's shortcut): image i of the call uses seed + i;
- `latents=`: (batch, C, h, w) noise, as in diffusers;
- none of these: a random seed.
`output_type`: "pil" (a list of PIL images), "np" (float32 (B, H, W, 3) in [0, 1]) or "latent" (numpy (B, C, h, w),
where diffusers returns a torch tensor; the VAE still runs).
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_distri.api import Generator, InvalidArgumentError

OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class DistriPipelineOutput:
    """What diffusers' pipelines return: `.images` (see the module docstring for each output_type)."""

    images: list | np.ndarray


class DistriPipeline:
    """A loaded work directory (its ranks stay loaded until `close`), called like a diffusers pipeline."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.sdxl = generator.manifest.model.sdxl

    @classmethod
    def from_workdir(cls, workdir: str | Path, device: str | None = None, **options) -> "DistriPipeline":
        """Load `workdir` (written by `trt-distri export` from a pipeline); `options` go to Generator (backend,
        cuda_graph, ...)."""
        return cls(Generator(workdir, device, **options))

    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int = 50, guidance_scale: float | None = None, height: int | None = None,
                 width: int | None = None, num_images_per_prompt: int = 1, latents=None, generator=None,
                 seed: int | None = None, output_type: str = "pil", scheduler: str = "ddim",
                 warmup_steps: int = 4) -> DistriPipelineOutput:
        if output_type not in OUTPUT_TYPES:
            raise InvalidArgumentError(f"unknown output_type {output_type!r}. Note: expected one of "
                                       f"{', '.join(OUTPUT_TYPES)}")
        prompts, negatives = _prompts(prompt, negative_prompt, num_images_per_prompt)
        noises = self._noise(len(prompts), latents, generator, seed)
        guidance = guidance_scale if guidance_scale is not None else (5.0 if self.sdxl else 7.5)
        results = [self.generator.generate(p, n, steps=num_inference_steps, guidance=guidance, height=height,
                                           width=width, scheduler=scheduler, warmup_steps=warmup_steps, **noise)
                   for p, n, noise in zip(prompts, negatives, noises)]
        if output_type == "latent":
            return DistriPipelineOutput(np.concatenate([r.latents for r in results]))
        if output_type == "np":
            return DistriPipelineOutput(np.stack([r.image for r in results]).astype(np.float32) / 255.0)
        from PIL import Image

        return DistriPipelineOutput([Image.fromarray(r.image) for r in results])

    def _noise(self, batch: int, latents, generator, seed: int | None) -> list[dict]:
        """Per image: {"latents": (1, C, h, w)} or {"seed": s}."""
        given = [name for name, v in (("latents", latents), ("generator", generator), ("seed", seed)) if v is not None]
        if len(given) > 1:
            raise InvalidArgumentError(f"the initial noise is given twice. Note: expected one of latents, generator "
                                       f"and seed, got {', '.join(given)}")
        info = self.generator.info
        shape = (batch, info.latent_channels, info.latent_height, info.latent_width)
        if latents is not None:
            return _split_latents(latents, shape)
        if generator is not None:
            return _from_torch_generators(generator, shape)
        first = secrets.randbits(63) if seed is None else seed
        return [{"seed": first + i} for i in range(batch)]

    def close(self) -> None:
        self.generator.close()

    def __enter__(self) -> "DistriPipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prompts(prompt, negative_prompt, per_prompt: int) -> tuple[list[str], list[str]]:
    """Prompts and negative prompts per image, in diffusers' order (each prompt's images together)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    negatives = [negative_prompt or ""] * len(prompts) if negative_prompt is None or isinstance(
        negative_prompt, str) else list(negative_prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts + negatives) or len(negatives) != len(prompts):
        raise InvalidArgumentError(f"prompt and negative_prompt must be strings or lists of strings of one length. "
                                   f"Note: got {len(prompts)} prompt(s) and {len(negatives)} negative prompt(s)")
    if not isinstance(per_prompt, int) or per_prompt < 1:
        raise InvalidArgumentError(f"invalid num_images_per_prompt. Note: expected an integer >= 1, got {per_prompt}")
    return ([p for p in prompts for _ in range(per_prompt)], [n for n in negatives for _ in range(per_prompt)])


def _split_latents(latents, shape: tuple[int, ...]) -> list[dict]:
    arr = np.asarray(latents.detach().cpu().float().numpy() if hasattr(latents, "detach") else latents, np.float32)
    arr = arr[None] if arr.ndim == 3 else arr
    if arr.shape != shape:
        raise InvalidArgumentError(f"latents have the wrong shape. Note: expected {shape} (batch, channels, height "
                                   f"/ scale, width / scale), got {arr.shape}")
    return [{"latents": arr[i:i + 1]} for i in range(shape[0])]


def _from_torch_generators(generator, shape: tuple[int, ...]) -> list[dict]:
    import torch

    gens = list(generator) if isinstance(generator, (list, tuple)) else [generator]
    if len(gens) not in (1, shape[0]) or not all(isinstance(g, torch.Generator) for g in gens):
        raise InvalidArgumentError(f"invalid generator. Note: expected a torch.Generator or a list of {shape[0]}, "
                                   f"got {type(generator).__name__}")
    # diffusers' randn_tensor: one draw for the batch, or one per generator
    if len(gens) == 1:
        noise = torch.randn(shape, generator=gens[0], dtype=torch.float32)
    else:
        noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32) for g in gens])
    return [{"latents": noise[i:i + 1].numpy()} for i in range(shape[0])]
