"""trt_distri.schedulers (numpy) against diffusers' own schedulers, run on symbols by tests/oracles/diffusers_schedule:
the latents every step produces, as combinations of the initial noise and the noise predictions, agree to 1e-6."""
from __future__ import annotations

import numpy as np
import pytest

from oracles.diffusers_schedule import linear_schedule, make_scheduler
from trt_distri.errors import ConfigError
from trt_distri.schedule import LinearSchedule
from trt_distri.schedulers import SCHEDULERS, make_schedule

pytest.importorskip("diffusers")
MAX_STEPS = 1000  # trt_distri.api.Params allows 1..1000


def shipped_config(loaded: bool) -> dict:
    """The scheduler config the shipped random pipelines carry (pipeline_models.SCHEDULER_CONFIG), as a work
    directory's manifest keeps it: exported straight from random:<name> (with diffusers' _use_default_values) or
    from a folder written by save_pretrained (without)."""
    from diffusers import DDIMScheduler

    from trt_distri.pipeline_models import SCHEDULER_CONFIG

    config = dict(DDIMScheduler.from_config(SCHEDULER_CONFIG).config)
    return {k: v for k, v in config.items() if k != "_use_default_values"} if loaded else config


def variant(**changes) -> dict:
    return {**shipped_config(loaded=True), **changes}


CONFIGS = {
    "random-export": lambda: shipped_config(loaded=False),
    "saved-folder": lambda: shipped_config(loaded=True),
    "no-config": lambda: None,
    "trailing-v": lambda: variant(timestep_spacing="trailing", prediction_type="v_prediction"),
    "linspace-linear": lambda: variant(timestep_spacing="linspace", beta_schedule="linear", beta_start=0.0001,
                                       beta_end=0.02),
    "cosine-sigma-min-heun": lambda: variant(beta_schedule="squaredcos_cap_v2", final_sigmas_type="sigma_min",
                                             solver_type="heun", lower_order_final=False),
    "order-1-trailing": lambda: variant(solver_order=1, timestep_spacing="trailing"),
    "euler-at-final": lambda: variant(euler_at_final=True, lower_order_final=False, final_sigmas_type="sigma_min"),
}


def expansion(schedule: LinearSchedule) -> np.ndarray:
    """Row i: the latents after step i as coefficients of (x_0, eps_0, ..., eps_{S-1})."""
    k = len(schedule.steps) + 1
    basis = np.eye(k)
    x_prev, x, rows = np.zeros(k), basis[0], [basis[0]]
    for i, s in enumerate(schedule.steps):
        eps_prev = basis[i] if i > 0 else np.zeros(k)
        x, x_prev = s.a * x + s.d * x_prev + s.b * basis[i + 1] + s.c * eps_prev, x
        rows.append(x)
    return np.asarray(rows)


def assert_same_schedule(ours: LinearSchedule, theirs: LinearSchedule) -> None:
    assert len(ours.steps) == len(theirs.steps)
    assert ours.init_noise_sigma == pytest.approx(theirs.init_noise_sigma, rel=1e-6)
    assert [s.timestep for s in ours.steps] == [s.timestep for s in theirs.steps]
    assert [s.input_scale for s in ours.steps] == pytest.approx([s.input_scale for s in theirs.steps], rel=1e-6)
    mine, expected = expansion(ours), expansion(theirs)
    worst = float(np.abs(mine - expected).max() / np.abs(expected).max())
    assert worst < 1e-6, f"latent coefficients differ by {worst:.2e} (relative to the largest)"


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", SCHEDULERS)
def test_equals_diffusers(name, config):
    cfg = CONFIGS[config]()
    for steps in (1, 2, 3, 10, 16, 30, 50):
        assert_same_schedule(make_schedule(name, cfg, steps), linear_schedule(make_scheduler(name, cfg), steps))


def test_euler_at_the_most_steps_equals_diffusers():
    cfg = shipped_config(loaded=True)
    assert_same_schedule(make_schedule("euler", cfg, MAX_STEPS),
                         linear_schedule(make_scheduler("euler", cfg), MAX_STEPS))


@pytest.mark.parametrize("name, steps, message", [
    ("ddim", MAX_STEPS, "beyond the 1000"), ("dpm++", MAX_STEPS, "repeats a timestep"),
    ("dpm++", MAX_STEPS - 1, "non-finite coefficient at step 1 of 999")])
def test_step_counts_diffusers_cannot_step_are_refused(name, steps, message):
    """DDIM with steps_offset 1 indexes timestep 1000 of 1000 (diffusers: IndexError); DPM-Solver++ spaces 1001
    points over 1000 timesteps (repeated timesteps), and at 999 its first timestep is 1000, clamped onto the same
    sigma as the next (h = 0, NaN): a clear error instead."""
    with pytest.raises(ConfigError, match=message):
        make_schedule(name, shipped_config(loaded=True), steps)


def test_ddim_takes_999_steps():
    assert len(make_schedule("ddim", shipped_config(loaded=True), MAX_STEPS - 1).steps) == MAX_STEPS - 1


@pytest.mark.parametrize("option, value", [("use_karras_sigmas", True), ("thresholding", True),
                                           ("prediction_type", "sample"), ("rescale_betas_zero_snr", True)])
def test_options_not_computed_are_refused_by_name(option, value):
    name = "ddim" if option == "thresholding" else "dpm++"
    with pytest.raises(ConfigError, match=f"{option}={value!r}"):
        make_schedule(name, variant(**{option: value}), 10)


def test_third_order_step_is_refused():
    with pytest.raises(ConfigError, match="order 3"):
        make_schedule("dpm++", variant(solver_order=3), 20)


def test_unknown_scheduler_is_refused():
    with pytest.raises(ConfigError, match="unknown scheduler 'pndm'"):
        make_schedule("pndm", None, 10)
