"""Patch plan: which latent rows each rank owns at every resolution level of the UNet."""
from __future__ import annotations

from dataclasses import dataclass

from trt_distri.errors import ConfigError, UnsplittableError
from trt_distri.manifest import Plan


@dataclass(frozen=True)
class PatchPlan:
    """Rows of the latent split into `devices` equal patches, kept whole and even through every downsample."""

    height: int  # image pixels
    width: int
    vae_scale: int  # image pixels per latent pixel
    devices: int
    num_downsamples: int

    @property
    def latent_height(self) -> int:
        return self.height // self.vae_scale

    @property
    def latent_width(self) -> int:
        return self.width // self.vae_scale

    @property
    def num_levels(self) -> int:
        return self.num_downsamples + 1

    def level_rows(self, level: int) -> int:
        """Rows one rank owns at `level` (0 = latent resolution)."""
        return self.latent_height // self.devices >> level

    def level_width(self, level: int) -> int:
        return self.latent_width >> level

    def to_json(self) -> dict:
        return {
            "height": self.height, "width": self.width, "vae_scale": self.vae_scale, "devices": self.devices,
            "num_downsamples": self.num_downsamples, "latent_height": self.latent_height,
            "latent_width": self.latent_width,
            "levels": [{"rows": self.level_rows(i), "width": self.level_width(i)} for i in range(self.num_levels)],
        }

    @classmethod
    def from_manifest(cls, plan: Plan) -> "PatchPlan":
        return cls(plan.height, plan.width, plan.vae_scale, plan.devices, plan.num_downsamples)


def num_downsamples(unet_config) -> int:
    """Every down block but the last halves the resolution in a diffusers UNet2DConditionModel."""
    return len(unet_config["down_block_types"]) - 1


def make_plan(unet_config, height: int, width: int, devices: int, vae_scale: int = 8) -> PatchPlan:
    """Check that (height, width, devices) can be split and return the plan; else say why and what would work."""
    if devices < 1:
        raise ConfigError(f"--gpus must be at least 1. Note: got {devices}")
    if height <= 0 or width <= 0:
        raise ConfigError(f"image size must be positive. Note: got {height}x{width}")
    d = num_downsamples(unet_config)
    step = vae_scale << d  # image pixels per row of the coarsest level
    if width % step:
        raise ConfigError(
            f"width {width} does not survive the UNet's {d} downsamples. Note: expected a multiple of {step}, "
            f"got {width}; nearest valid widths: {_nearest(width, step)}")
    unit = step * devices
    if height % unit:
        coarse_rows = height // step if height % step == 0 else None
        counts = _valid_counts(coarse_rows) if coarse_rows else []
        hint = f"valid device counts for height {height}: {counts}" if counts else \
            f"height {height} is not a multiple of {step} for any device count"
        raise UnsplittableError(
            f"height {height} cannot be cut into {devices} patches whose rows stay whole and even through "
            f"{d} downsamples. Note: expected a multiple of {step} x {devices} = {unit}, got {height}. "
            f"Fix: use a height of {_nearest(height, unit)}, or {hint}")
    return PatchPlan(height, width, vae_scale, devices, d)


def _nearest(value: int, unit: int) -> str:
    low = value // unit * unit
    options = [v for v in (low, low + unit) if v > 0]
    return " or ".join(str(v) for v in options)


def _valid_counts(coarse_rows: int, limit: int = 16) -> list[int]:
    return [n for n in range(1, min(limit, coarse_rows) + 1) if coarse_rows % n == 0]
