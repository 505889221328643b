"""The denoising loop shared by the ONNX simulator and the PyTorch reference (CPU, diffusers schedulers; schedulers
from oracles.diffusers_schedule.make_scheduler).

`unet_step(sample, t, encoder_hidden_states, added_cond_kwargs, sync=...)` returns the noise prediction for the
full latent; steps 0..warmup_steps run synchronously (DistriFusion's default: 4 warm-up steps after step 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class LoopInputs:
    latents: torch.Tensor  # (1, 4, h, w) initial noise, already scaled by init_noise_sigma by `denoise`
    cond: torch.Tensor  # (1, S, D) prompt embedding
    uncond: torch.Tensor | None = None  # (1, S, D) negative prompt embedding; None = no guidance
    added_cond: dict[str, torch.Tensor] | None = None  # SDXL: text_embeds, time_ids for [uncond; cond] batch
    guidance_scale: float = 5.0


def denoise(unet_step: Callable, scheduler, inputs: LoopInputs, steps: int, warmup_steps: int = 4) -> torch.Tensor:
    """Run `steps` scheduler steps; returns the final latents (1, 4, h, w)."""
    scheduler.set_timesteps(steps)
    latents = inputs.latents * scheduler.init_noise_sigma
    guided = inputs.uncond is not None
    enc = torch.cat([inputs.uncond, inputs.cond]) if guided else inputs.cond
    for i, t in enumerate(scheduler.timesteps):
        model_in = torch.cat([latents] * 2) if guided else latents
        model_in = scheduler.scale_model_input(model_in, t)
        tt = torch.tensor([float(t)], dtype=torch.float32)
        noise = unet_step(model_in, tt, enc, inputs.added_cond, sync=i <= warmup_steps)
        noise = torch.as_tensor(np.asarray(noise), dtype=torch.float32)
        if guided:
            uncond, cond = noise.chunk(2)
            noise = uncond + inputs.guidance_scale * (cond - uncond)
        latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio of `a` against `b` in dB, with the peak taken as b's value range."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = float(np.mean((a - b) ** 2))
    peak = float(b.max() - b.min())
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def denoise_linear(unet_step: Callable, schedule, inputs: LoopInputs, warmup_steps: int = 4) -> np.ndarray:
    """The loop as the runtime runs it: a LinearSchedule (trt_distri.schedule) stepped in fp32 on host arrays,
    guidance combined as uncond + g (cond - uncond). Returns the final latents (1, C, H, W)."""
    from trt_distri.schedule import step_latents

    guided = inputs.uncond is not None
    enc = (torch.cat([inputs.uncond, inputs.cond]) if guided else inputs.cond).numpy()
    added = {k: v.numpy() for k, v in (inputs.added_cond or {}).items()}
    x = (inputs.latents.numpy() * np.float32(schedule.init_noise_sigma)).astype(np.float32)
    x_prev, eps_prev = np.zeros_like(x), np.zeros_like(x)
    batch = 2 if guided else 1
    sample = np.repeat(x * np.float32(schedule.steps[0].input_scale), batch, axis=0)
    for i, step in enumerate(schedule.steps):
        noise = np.asarray(unet_step(sample, np.float32([step.timestep]), enc, added, sync=i <= warmup_steps))
        eps = noise[:1] + np.float32(inputs.guidance_scale) * (noise[1:] - noise[:1]) if guided else noise
        x, x_prev, eps_prev = step_latents(step, x, x_prev, eps, eps_prev), x, eps
        scale = schedule.steps[i + 1].input_scale if i + 1 < len(schedule.steps) else 1.0
        sample = np.repeat(np.float32(scale) * x, batch, axis=0)
    return x
