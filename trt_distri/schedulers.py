"""DDIM, Euler and DPM-Solver++ (multistep, order 1 or 2) as numpy math: the per-step coefficients of the two-term
recurrence of trt_distri.schedule, from a diffusers scheduler config (the work directory's manifest keeps it), with
neither torch nor diffusers.

Facts of diffusers' schedulers, re-implemented: the beta schedules (linear, scaled_linear, squaredcos_cap_v2, trained
betas), the timestep spacings (leading with steps_offset, trailing, linspace), DDIM's previous timestep t - T // steps
and set_alpha_to_one, Euler's sigmas (interpolated, with the zero or sigma_min final sigma) and its model-input scale
1 / sqrt(sigma^2 + 1), DPM-Solver++'s first and second order (midpoint or heun) updates with lower_order_final and
euler_at_final, and the prediction types epsilon and v_prediction; diffusers' `_use_default_values` (keys that take
the new class's defaults in from_config) included. Where diffusers computes in float32 (its tables and per-step
scalars) so does this module, with torch's CPU rounding where it is known (trt_distri.float32's linspace, cumprod
accumulated in float64); torch's vector sqrt and log (MKL) may differ from numpy's correctly rounded ones in the last
bit, so the coefficients equal those diffusers' schedulers imply to about 1e-7 relative (tests/test_schedulers.py),
below what float32 latents resolve. The coefficients combine those values in float64, as the runtime takes them. A
config option outside this list (karras sigmas, thresholding, ...) is refused with its name, not run differently.

`make_schedule(name, config, steps)` applies what trt-distri always chose: DDIM without clip_sample and with
set_alpha_to_one False, DPM-Solver++ as algorithm_type "dpmsolver++"; no config means SD 1.x/SDXL's betas.
"""
from __future__ import annotations

import math

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.float32 import linspace
from trt_distri.schedule import LinearSchedule, Step

SCHEDULERS = ("ddim", "euler", "dpm++")
_f32 = np.float32
_SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "steps_offset": 1}
_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
           "trained_betas": None, "prediction_type": "epsilon", "steps_offset": 0, "rescale_betas_zero_snr": False}
_SIGMAS = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
           "final_sigmas_type": "zero"}
#: Each scheduler's config keys with diffusers' defaults (other keys of a config are ignored, as from_config does).
DEFAULTS = {
    "ddim": {**_COMMON, "clip_sample": True, "set_alpha_to_one": True, "timestep_spacing": "leading",
             "thresholding": False},
    "euler": {**_COMMON, **_SIGMAS, "timestep_spacing": "linspace", "interpolation_type": "linear",
              "timestep_type": "discrete"},
    "dpm++": {**_COMMON, **_SIGMAS, "timestep_spacing": "linspace", "solver_order": 2, "thresholding": False,
              "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": True,
              "euler_at_final": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
              "lambda_min_clipped": -math.inf, "variance_type": None},
}
_CHOSEN = {"ddim": {"clip_sample": False, "set_alpha_to_one": False}, "euler": {},
           "dpm++": {"algorithm_type": "dpmsolver++"}}
#: Options this module computes, with the values it supports; any other value is refused.
_SUPPORTED = {"beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
              "prediction_type": ("epsilon", "v_prediction"), "rescale_betas_zero_snr": (False,),
              "timestep_spacing": ("leading", "trailing", "linspace"), "thresholding": (False,),
              "use_karras_sigmas": (False, None), "use_exponential_sigmas": (False, None),
              "use_beta_sigmas": (False, None), "use_lu_lambdas": (False, None), "use_flow_sigmas": (False, None),
              "final_sigmas_type": ("zero", "sigma_min"), "interpolation_type": ("linear",),
              "timestep_type": ("discrete",), "solver_type": ("midpoint", "heun"), "solver_order": (1, 2, 3),
              "lambda_min_clipped": (-math.inf,), "variance_type": (None,)}


def make_schedule(name: str, config: dict | None, steps: int) -> LinearSchedule:
    """The LinearSchedule of scheduler `name` ("ddim", "euler", "dpm++") built from a diffusers scheduler `config`
    (a pipeline's; None: SD's betas) for `steps` steps."""
    if name not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}. Note: expected one of {', '.join(SCHEDULERS)}")
    cfg = resolve_config(name, config)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1. Note: got {steps}")
    table = _alphas_cumprod(cfg)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # a zero final sigma: log 0, as diffusers
        schedule = {"ddim": _ddim, "euler": _euler, "dpm++": _dpm}[name](cfg, table, steps)
    for i, step in enumerate(schedule.steps):
        if not all(math.isfinite(v) for v in (step.input_scale, step.a, step.b, step.c, step.d)):
            raise ConfigError(f"{name} gives a non-finite coefficient at step {i} of {steps} with this scheduler "
                              "config. Note: expected finite numbers. Fix: use fewer steps")
    return schedule


def resolve_config(name: str, config: dict | None) -> dict:
    """`config` as diffusers' from_config reads it for scheduler `name`, with trt-distri's choices applied; refuses
    options this module does not compute."""
    given = _SD_BETAS if config is None else config
    defaulted = set(given.get("_use_default_values", ()))  # diffusers: these keys take the new class's defaults
    taken = {k: v for k, v in given.items() if k in DEFAULTS[name] and k not in defaulted}
    cfg = {**DEFAULTS[name], **taken, **_CHOSEN[name]}
    for key, allowed in _SUPPORTED.items():
        if key in cfg and cfg[key] not in allowed:
            raise ConfigError(f"the scheduler config sets {key}={cfg[key]!r}, which trt-distri's {name} does not "
                              f"compute. Note: expected {' or '.join(map(repr, allowed))}. Fix: use a pipeline "
                              "whose scheduler config keeps the default, or another --scheduler")
    return cfg


# ---- tables (float32, as diffusers keeps them) ------------------------------------------------------------------
def _alphas_cumprod(cfg: dict) -> np.ndarray:
    betas = _betas(cfg)
    # torch.cumprod on the CPU accumulates in float64 and rounds each product to float32
    return np.cumprod((_f32(1.0) - betas).astype(np.float64)).astype(np.float32)


def _betas(cfg: dict) -> np.ndarray:
    n = int(cfg["num_train_timesteps"])
    if cfg["trained_betas"] is not None:
        return np.asarray(cfg["trained_betas"], np.float32)
    if cfg["beta_schedule"] == "linear":
        return linspace(cfg["beta_start"], cfg["beta_end"], n)
    if cfg["beta_schedule"] == "scaled_linear":
        root = linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n)
        return root * root
    alpha_bar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731 - squaredcos_cap_v2
    return np.asarray([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)], np.float32)


def _sigma_table(alphas_cumprod: np.ndarray) -> np.ndarray:
    return np.sqrt((_f32(1.0) - alphas_cumprod) / alphas_cumprod)


def _timesteps(cfg: dict, steps: int, name: str) -> np.ndarray:
    """diffusers' spaced timesteps, largest first: int64 for DDIM and DPM-Solver++, float32 (linspace unrounded)
    for Euler. DPM-Solver++ spaces steps + 1 points for leading and linspace and drops the last."""
    total, spacing = int(cfg["num_train_timesteps"]), cfg["timestep_spacing"]
    dtype, extra = (np.float32, 0) if name == "euler" else (np.int64, int(name == "dpm++"))
    if spacing == "trailing":
        return np.arange(total, 0, -total / steps).round().astype(dtype) - 1
    if spacing == "linspace":
        if name == "euler":
            return np.linspace(0, total - 1, steps, dtype=np.float32)[::-1].copy()
        return np.linspace(0, total - 1, steps + extra).round()[::-1][:steps].copy().astype(dtype)
    ratio = total // (steps + extra)
    return (np.arange(0, steps + extra) * ratio).round()[::-1][:steps].astype(dtype) + cfg["steps_offset"]


def _refuse_repeats(name: str, timesteps: np.ndarray, steps: int) -> None:
    if len(np.unique(timesteps)) != len(timesteps):
        raise ConfigError(f"{name} with this scheduler config repeats a timestep at {steps} steps (diffusers cannot "
                          f"step it). Note: expected distinct timesteps. Fix: use fewer steps")


# ---- DDIM ---------------------------------------------------------------------------------------------------------
def _ddim(cfg: dict, ac: np.ndarray, steps: int) -> LinearSchedule:
    total = int(cfg["num_train_timesteps"])
    timesteps = _timesteps(cfg, steps, "ddim")
    if timesteps.max() >= total or timesteps.min() < 0:
        raise ConfigError(f"DDIM with steps_offset {cfg['steps_offset']} and {cfg['timestep_spacing']} spacing "
                          f"reaches timestep {timesteps.max()} at {steps} steps, beyond the {total} it was trained "
                          f"on. Note: expected at most {total - 1 - int(cfg['steps_offset'])} steps. Fix: use fewer")
    final = _f32(1.0) if cfg["set_alpha_to_one"] else ac[0]
    out = []
    for t in timesteps:
        prev = t - total // steps
        alpha, alpha_prev = ac[t], ac[prev] if prev >= 0 else final
        sa, sb, sp = np.sqrt(alpha), np.sqrt(_f32(1.0) - alpha), np.sqrt(alpha_prev)
        direction = float(np.sqrt(_f32(1.0) - alpha_prev))  # eta 0: no variance term
        sa, sb, sp = float(sa), float(sb), float(sp)
        if cfg["prediction_type"] == "epsilon":  # x0 = (x - sb eps) / sa
            a, b = sp / sa, direction - sp * sb / sa
        else:  # v: x0 = sa x - sb v, eps = sa v + sb x
            a, b = sp * sa + direction * sb, direction * sa - sp * sb
        out.append(Step(float(t), 1.0, a, 0.0, b, 0.0))
    return LinearSchedule(1.0, tuple(out))


# ---- Euler --------------------------------------------------------------------------------------------------------
def _final_sigma(cfg: dict, ac: np.ndarray) -> float:
    return 0.0 if cfg["final_sigmas_type"] == "zero" else float(_sigma_table(ac[:1])[0])


def _interpolated_sigmas(cfg: dict, ac: np.ndarray, timesteps: np.ndarray) -> np.ndarray:
    table = _sigma_table(ac)
    sigmas = np.interp(timesteps, np.arange(len(table)), table)
    return np.concatenate([sigmas, [_final_sigma(cfg, ac)]]).astype(np.float32)


def _euler(cfg: dict, ac: np.ndarray, steps: int) -> LinearSchedule:
    timesteps = _timesteps(cfg, steps, "euler")
    _refuse_repeats("Euler", timesteps, steps)
    sigmas = _interpolated_sigmas(cfg, ac, timesteps)
    top = sigmas.max()
    init = top if cfg["timestep_spacing"] in ("linspace", "trailing") else np.sqrt(top * top + _f32(1.0))
    out = []
    for i, t in enumerate(timesteps):
        sigma, dt = sigmas[i], sigmas[i + 1] - sigmas[i]
        var = sigma * sigma + _f32(1.0)  # float32, as diffusers' (sigma ** 2 + 1)
        scale = 1.0 / float(np.sqrt(var))
        if cfg["prediction_type"] == "epsilon":  # x0 = x - sigma eps; x' = x + dt (x - x0) / sigma
            a, b = 1.0, float(dt)
        else:  # x0 = v (-sigma / sqrt(var)) + x / var
            k = float(-sigma / np.sqrt(var))
            a, b = 1.0 + float(dt) * (1.0 - 1.0 / float(var)) / float(sigma), -float(dt) * k / float(sigma)
        out.append(Step(float(t), scale, a, 0.0, b, 0.0))
    return LinearSchedule(float(init), tuple(out))


# ---- DPM-Solver++ -------------------------------------------------------------------------------------------------
def _dpm(cfg: dict, ac: np.ndarray, steps: int) -> LinearSchedule:
    timesteps = _timesteps(cfg, steps, "dpm++")
    _refuse_repeats("DPM-Solver++", timesteps, steps)
    sigmas = _interpolated_sigmas(cfg, ac, timesteps)
    count, order_cap, done = len(timesteps), int(cfg["solver_order"]), 0
    out = []
    for i, t in enumerate(timesteps):
        final = i == count - 1 and (cfg["euler_at_final"] or (cfg["lower_order_final"] and count < 15)
                                    or cfg["final_sigmas_type"] == "zero")
        second_last = i == count - 2 and cfg["lower_order_final"] and count < 15
        if order_cap == 1 or done < 1 or final:
            a, b, d, c = _dpm_first(cfg, sigmas[i + 1], sigmas[i])
        elif order_cap == 2 or done < 2 or second_last:
            a, b, d, c = _dpm_second(cfg, sigmas[i + 1], sigmas[i], sigmas[i - 1])
        else:
            raise ConfigError(f"DPM-Solver++ of order 3 takes a third-order step at step {i} of {steps}, which is "
                              "not a two-term recurrence. Note: expected solver_order 1 or 2. Fix: set solver_order "
                              "2 in the scheduler config")
        done = min(done + 1, order_cap)
        out.append(Step(float(t), 1.0, a, d, b, c))
    return LinearSchedule(1.0, tuple(out))


def _alpha_sigma(sigma: np.float32) -> tuple[np.float32, np.float32]:
    alpha = _f32(1.0) / np.sqrt(sigma * sigma + _f32(1.0))
    return alpha, sigma * alpha


def _log32(x: np.float32) -> np.float32:
    return _f32(-np.inf) if x == 0 else _f32(math.log(float(x)))


def _lambda(alpha: np.float32, sigma: np.float32) -> np.float32:
    return _log32(alpha) - _log32(sigma)


def _x0_terms(cfg: dict, sigma: np.float32) -> tuple[float, float]:
    """(of x, of the model output) in the data prediction x0 at `sigma`."""
    alpha, sig = _alpha_sigma(sigma)
    if cfg["prediction_type"] == "epsilon":  # (x - sigma_t eps) / alpha_t
        return 1.0 / float(alpha), -float(sig) / float(alpha)
    return float(alpha), -float(sig)


def _dpm_first(cfg: dict, sigma_t, sigma_s) -> tuple[float, float, float, float]:
    """x_t = (sigma_t / sigma_s) x - alpha_t (exp(-h) - 1) x0_s."""
    alpha_t, sig_t = _alpha_sigma(sigma_t)
    alpha_s, sig_s = _alpha_sigma(sigma_s)
    h = _lambda(alpha_t, sig_t) - _lambda(alpha_s, sig_s)
    weight = float(alpha_t * (_f32(math.exp(-float(h))) - _f32(1.0)))
    mx, me = _x0_terms(cfg, sigma_s)
    return float(sig_t / sig_s) - weight * mx, -weight * me, 0.0, 0.0


def _dpm_second(cfg: dict, sigma_t, sigma_s0, sigma_s1) -> tuple[float, float, float, float]:
    """DPM-Solver++(2M): x_t = (sigma_t / sigma_s0) x - A D0 + w D1, D0 = x0_s0, D1 = (x0_s0 - x0_s1) / r0."""
    (alpha_t, sig_t), (alpha_0, sig_0), (alpha_1, sig_1) = (_alpha_sigma(s) for s in (sigma_t, sigma_s0, sigma_s1))
    lam_t, lam_0, lam_1 = _lambda(alpha_t, sig_t), _lambda(alpha_0, sig_0), _lambda(alpha_1, sig_1)
    h, h0 = lam_t - lam_0, lam_0 - lam_1
    inv_r0 = float(_f32(1.0) / (h0 / h))
    expm1 = _f32(math.exp(-float(h))) - _f32(1.0)
    weight = alpha_t * expm1  # A
    if cfg["solver_type"] == "midpoint":
        w_d1 = -float(_f32(0.5) * weight)
    else:  # heun
        w_d1 = float(alpha_t * (expm1 / h + _f32(1.0)))
    w_x0 = -float(weight) + w_d1 * inv_r0  # of x0_s0; x0_s1 gets -w_d1 / r0
    (mx0, me0), (mx1, me1) = _x0_terms(cfg, sigma_s0), _x0_terms(cfg, sigma_s1)
    return (float(sig_t / sig_0) + w_x0 * mx0, w_x0 * me0, -w_d1 * inv_r0 * mx1, -w_d1 * inv_r0 * me1)
