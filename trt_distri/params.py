"""The rules every generation argument follows, in one place.

`trt-distri run`, the Python API (`trt_distri.api.Generator`) and the C API (through the Python API) check their
arguments with `check_generation` (and `check_prompt`, `check_repeat`) before any work, so that a value is refused
the same way, with the same message, whichever way it came in:
- steps: 1..`MAX_STEPS` (the runtime's per-step tables), and what the scheduler can step with the work directory's
  configuration (trt_distri.schedulers refuses DDIM beyond its training timesteps, DPM-Solver++ with repeated
  timesteps);
- guidance: a finite number; warmup_steps: >= 0; repeat: >= 1;
- seed: 0..2**64-1, the range of the C API's uint64_t (a negative seed is refused, not wrapped);
- prompts: text that is valid UTF-8 (a command line's undecodable bytes arrive as lone surrogates).
Plain Python and numpy only: no torch, no diffusers.
"""
from __future__ import annotations

import math
import numbers

from trt_distri.errors import ConfigError, InvalidArgumentError
from trt_distri.schedulers import SCHEDULERS, make_schedule

#: Entries of the runtime's per-step tables (timesteps and coefficients, runtime.executor): the most steps a run has.
MAX_STEPS = 1024
SEED_MAX = 2**64 - 1


def scheduler_config(manifest) -> dict | None:
    """The scheduler configuration of a work directory's manifest (a pipeline's), or None (SD's defaults)."""
    return (manifest.scheduler.config or None) if manifest.scheduler is not None else None


def check_generation(steps, guidance, seed, scheduler, warmup_steps, config: dict | None = None) -> None:
    """Raise InvalidArgumentError naming the first argument that breaks the rules (module docstring)."""
    if scheduler not in SCHEDULERS:
        _refuse("unknown scheduler", " or ".join(SCHEDULERS), repr(scheduler), "choose one of those")
    _integer("steps", steps)
    if not 1 <= steps <= MAX_STEPS:
        _refuse("invalid steps", f"1..{MAX_STEPS} (the runtime's step tables)", steps, f"choose steps in 1..{MAX_STEPS}")
    train = int((config or {}).get("num_train_timesteps", 1000))
    if scheduler == "ddim" and steps > train:  # diffusers' DDIM refuses more steps than training timesteps
        _refuse("invalid steps", f"1..{train} for DDIM (its training timesteps)", steps, f"choose steps in 1..{train}")
    try:  # the scheduler's own limits: DDIM's timesteps with its offset, DPM-Solver++'s distinct timesteps
        make_schedule(scheduler, config, steps)
    except ConfigError as exc:
        raise InvalidArgumentError(f"invalid steps: {exc}") from None
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance):
        _refuse("invalid guidance", "a finite number", guidance, "give a guidance scale such as 5")
    _integer("seed", seed)
    if not 0 <= seed <= SEED_MAX:
        _refuse("invalid seed", "0..2**64-1 (negative seeds are refused)", seed, "choose a seed in that range")
    _integer("warmup_steps", warmup_steps)
    if warmup_steps < 0:
        _refuse("invalid warmup_steps", ">= 0 (synchronous steps after step 0)", warmup_steps, "pass 0 or more")


def check_repeat(repeat) -> None:
    _integer("repeat", repeat)
    if repeat < 1:
        _refuse("invalid repeat", ">= 1 (generations in a row)", repeat, "pass 1 or more")


def check_prompt(text, name: str = "prompt") -> str:
    """`text` when it is a str that encodes as UTF-8; bytes are decoded as UTF-8."""
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            _refuse(f"the {name} is not valid UTF-8 (byte {exc.start})", "UTF-8 text", repr(text[:40]),
                    "pass the text in UTF-8")
    if not isinstance(text, str):
        _refuse(f"invalid {name}", "a string", type(text).__name__, f"pass the {name} as text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        _refuse(f"the {name} is not valid UTF-8 (character {exc.start})", "UTF-8 text",
                repr(text[max(0, exc.start - 10):exc.start + 10]), "pass the text in UTF-8 (check the terminal's "
                "or the file's encoding)")
    return text


def _integer(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _refuse(f"invalid {name}", "an integer", repr(value), f"pass {name} as a whole number")


def _refuse(what: str, expected: str, got, fix: str) -> None:
    raise InvalidArgumentError(f"{what}. Note: expected {expected}, got {got}. Fix: {fix}")
