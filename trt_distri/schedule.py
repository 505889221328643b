"""A scheduler as a table of numbers, so that the torch-free runtime can step latents.

DDIM, Euler and DPM-Solver++ (multistep) are linear in their inputs: each step's latents are a fixed combination of
the current and previous latents and noise predictions, and the model input is a fixed multiple of the latents:

    x_{i+1} = a_i x_i + d_i x_{i-1} + b_i eps_i + c_i eps_{i-1},      model input_i = s_i x_i

trt_distri.schedulers computes the coefficients with numpy; tests/oracles/diffusers_schedule.py derives them from
diffusers' own schedulers to check it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np



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


def step_latents(step: Step, x: np.ndarray, x_prev: np.ndarray, eps: np.ndarray, eps_prev: np.ndarray) -> np.ndarray:
    """The recurrence on host arrays (fp32), as the runtime's step graph computes it."""
    return (np.float32(step.a) * x + np.float32(step.d) * x_prev + np.float32(step.b) * eps
            + np.float32(step.c) * eps_prev).astype(np.float32)
