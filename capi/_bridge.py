"""What libtrt_distri.so calls (capi/python.c): C values in, plain tuples out, exceptions to status codes.

Status codes are `enum trt_distri_status` of trt_distri.h: keep `STATUS` in step with it. Embeddings and initial
latents arrive as read-only memoryviews over the caller's memory and are copied before this returns.
"""
from __future__ import annotations

import numpy as np

from trt_distri.api import ClosedError, Generator, InvalidArgumentError, Result, UnavailableError
from trt_distri.errors import (ConfigError, EngineCacheError, InternalError, ManifestError, MissingPackageError,
                               TrtDistriError)

STATUS = {"INVALID_ARGUMENT": 1, "INVALID_HANDLE": 2, "WORK_DIRECTORY": 3, "CONFIG": 4, "UNAVAILABLE": 5,
          "MISSING_PACKAGE": 6, "RUNTIME": 7, "PYTHON": 8, "OUT_OF_MEMORY": 9, "INTERNAL": 10}
_BY_TYPE = [(InvalidArgumentError, "INVALID_ARGUMENT"), (ClosedError, "INVALID_HANDLE"),
            ((ManifestError, EngineCacheError), "WORK_DIRECTORY"), (UnavailableError, "UNAVAILABLE"),
            (MissingPackageError, "MISSING_PACKAGE"), (ConfigError, "CONFIG"), (TrtDistriError, "RUNTIME"),
            (MemoryError, "OUT_OF_MEMORY")]

# (latents bytes | None, latents shape | None, image bytes | None, width, height, why no image, why no latents, s)
ResultTuple = tuple


def create(workdir: str, device: str | None, rank: int, world: int, gpu: int, backend: str | None,
           rendezvous: str | None) -> Generator:
    opt = lambda v: None if v < 0 else v  # noqa: E731 - C passes -1 for "not given"
    return Generator(workdir, device, opt(rank), opt(world), backend=backend or "ort", gpu=opt(gpu),
                     rendezvous=rendezvous)


def generate(gen: Generator, prompt: str, negative_prompt: str | None, params: tuple) -> ResultTuple:
    return _pack(gen.generate(prompt, negative_prompt or "", **_params(params, gen)))


def generate_from_embeddings(gen: Generator, cond, uncond, seq_len: int, dim: int, pooled, negative_pooled,
                             pooled_dim: int, time_ids, params: tuple) -> ResultTuple:
    cond, uncond = (None if m is None else _floats(m, (seq_len, dim)) for m in (cond, uncond))
    text_embeds = None
    if pooled is not None:
        if uncond is not None and negative_pooled is None:
            raise InvalidArgumentError("negative_pooled is NULL. Note: expected the negative prompt's pooled "
                                       "embedding whenever uncond is given (SDXL with guidance)")
        rows = [negative_pooled] if uncond is not None else []
        text_embeds = np.stack([_floats(m, (pooled_dim,)) for m in rows + [pooled]])
    times = None if time_ids is None else _floats(time_ids, (6,))
    return _pack(gen.generate_from_embeddings(cond, uncond, text_embeds, times, **_params(params, gen)))


def latent_count(gen: Generator) -> int:
    """Floats in the initial latents of `gen`'s work directory (trt_distri_generate_params.latents)."""
    i = gen.info
    return i.latent_channels * i.latent_height * i.latent_width


def info(gen: Generator) -> tuple[int, ...]:
    """The fields of trt_distri_generator_info after struct_size, in order."""
    i = gen.info
    return (i.width, i.height, i.latent_channels, i.latent_height, i.latent_width, i.seq_len, i.dim, i.pooled_dim,
            int(i.guidance), i.world)


def set_loras(gen: Generator, loras: list) -> None:
    gen.set_loras(loras)


def close(gen: Generator) -> None:
    gen.close()


def describe(exc: BaseException) -> tuple[int, str]:
    """(status, one-line message) for an exception raised by any function above."""
    for types, name in _BY_TYPE:
        if isinstance(exc, types):
            return STATUS[name], str(exc) or type(exc).__name__
    where = exc.__traceback__
    while where is not None and where.tb_next is not None:
        where = where.tb_next
    at = f" (at {where.tb_frame.f_code.co_filename}:{where.tb_lineno})" if where is not None else ""
    return STATUS["INTERNAL"], f"internal error: {type(exc).__name__}: {exc}{at}. Please report it"


def _params(t: tuple, gen: Generator) -> dict:
    steps, guidance, seed, scheduler, warmup_steps, width, height, latents = t
    i = gen.info
    return {"steps": steps, "guidance": guidance, "seed": seed, "scheduler": scheduler or "ddim",
            "warmup_steps": warmup_steps, "width": width or None, "height": height or None,
            "latents": None if latents is None else _floats(latents, (1, i.latent_channels, i.latent_height,
                                                                       i.latent_width))}


def _floats(view: memoryview, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(view, np.float32).reshape(shape).copy()


def _pack(r: Result) -> ResultTuple:
    latents = None if r.latents is None else np.ascontiguousarray(r.latents, np.float32)
    image = None if r.image is None else np.ascontiguousarray(r.image, np.uint8)
    if image is not None and (image.ndim != 3 or image.shape[2] != 3):
        raise InternalError(f"the image is not RGB. Note: expected (H, W, 3), got {image.shape}")
    return (None if latents is None else latents.tobytes(), None if latents is None else tuple(latents.shape),
            None if image is None else image.tobytes(), 0 if image is None else image.shape[1],
            0 if image is None else image.shape[0], r.image_missing if image is None else None,
            None if latents is not None else "only world rank 0 receives the latents", float(r.seconds))
