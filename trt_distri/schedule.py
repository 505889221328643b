"""A diffusers scheduler turned into a table of numbers, so that the torch-free runtime can step latents.

DDIM, Euler and DPM-Solver++ (multistep) are linear in their inputs: each step's latents are a fixed combination of
the current and previous latents and noise predictions, and the model input is a fixed multiple of the latents.
`linear_schedule` finds those coefficients by running the diffusers scheduler once on symbolic inputs (each element
of the probe tensor stands for one symbol: x_0, eps_0, eps_1, ...) and checks that the result really is a
two-term recurrence

    x_{i+1} = a_i x_i + d_i x_{i-1} + b_i eps_i + c_i eps_{i-1},      model input_i = s_i x_i

so a scheduler that is not (ancestral samplers add noise) is refused instead of being run wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trt_distri.errors import ConfigError


@dataclass(frozen=True)
class Step:
    timestep: float
    input_scale: float  # s_i
    a: float  # x_i
    d: float  # x_{i-1}
    b: float  # eps_i (after guidance)
    c: float  # eps_{i-1}


@dataclass(frozen=True)
class LinearSchedule:
    init_noise_sigma: float
    steps: tuple[Step, ...]


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


def step_latents(step: Step, x: np.ndarray, x_prev: np.ndarray, eps: np.ndarray, eps_prev: np.ndarray) -> np.ndarray:
    """The recurrence on host arrays (fp32), as the runtime's step graph computes it."""
    return (np.float32(step.a) * x + np.float32(step.d) * x_prev + np.float32(step.b) * eps
            + np.float32(step.c) * eps_prev).astype(np.float32)
