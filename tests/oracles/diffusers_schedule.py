"""A diffusers scheduler turned into trt_distri.schedule coefficients by running it once on symbolic inputs (each
element of the probe tensor stands for one symbol: x_0, eps_0, eps_1, ...), checking that the result is the two-term
recurrence of trt_distri.schedule. The oracle for trt_distri.schedulers, which computes the same with numpy.

The basis (x_i, x_{i-1}, eps_i, eps_{i-1}) of a one-step scheduler is linearly dependent, so the least-squares
coefficients found here spread over d and c; compare schedules by the latents they produce (their expansion in the
symbols), not coefficient by coefficient.
"""
from __future__ import annotations

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.schedule import LinearSchedule, Step

SD_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "steps_offset": 1}


def make_scheduler(name: str, config: dict | None = None):
    """A diffusers scheduler by short name, from `config` (a pipeline's scheduler config) or SD defaults, with the
    choices trt-distri makes (DDIM without clipping and set_alpha_to_one False, DPM-Solver++)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    base = config or SD_CONFIG
    if name == "ddim":
        return DDIMScheduler.from_config(base, clip_sample=False, set_alpha_to_one=False)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(base)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++")
    raise ConfigError(f"unknown scheduler {name!r}")


def linear_schedule(scheduler, num_steps: int, tol: float = 1e-6) -> LinearSchedule:
    """Coefficients of `scheduler` (a diffusers scheduler instance) for `num_steps` steps."""
    import torch

    scheduler.set_timesteps(num_steps)
    k = num_steps + 1  # symbols: x_0, eps_0 .. eps_{S-1}
    x = torch.zeros(1, 1, 1, k, dtype=torch.float64)
    x[..., 0] = 1.0
    history, steps = [x[0, 0, 0].clone()], []
    for i, t in enumerate(scheduler.timesteps):
        scale = float(scheduler.scale_model_input(torch.ones(1, dtype=torch.float64), t))
        eps = torch.zeros_like(x)
        eps[..., i + 1] = 1.0
        x = scheduler.step(eps.to(x.dtype), t, x).prev_sample.to(torch.float64)
        history.append(x[0, 0, 0].clone())
        steps.append(_recurrence(history, i, float(t), scale, tol))
    return LinearSchedule(float(scheduler.init_noise_sigma), tuple(steps))


def _recurrence(history, i: int, t: float, scale: float, tol: float) -> Step:
    """Solve x_{i+1} = a x_i + d x_{i-1} + b eps_i + c eps_{i-1} from the symbol expansions."""
    nxt, cur = history[i + 1].numpy(), history[i].numpy()
    prev = history[i - 1].numpy() if i > 0 else np.zeros_like(cur)
    eps_i, eps_p = np.eye(len(cur))[i + 1], (np.eye(len(cur))[i] if i > 0 else np.zeros_like(cur))
    basis = np.stack([cur, prev, eps_i, eps_p], axis=1)
    coef, *_ = np.linalg.lstsq(basis, nxt, rcond=None)
    residual = float(np.abs(basis @ coef - nxt).max())
    if residual > tol * max(1.0, float(np.abs(nxt).max())):
        raise ConfigError(f"the scheduler's step {i} is not a two-term linear recurrence (residual {residual:.2e}). "
                          "Note: expected DDIM, Euler or DPM-Solver++ (2M or lower order). Fix: choose one of those")
    a, d, b, c = (float(v) for v in coef)
    return Step(t, scale, a, d, b, c)


