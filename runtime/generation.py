"""What one generation needs, independent of where it runs, and how it is split over guidance groups and patches."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.runtime.executor import Conditioning
from trt_distri.schedule import LinearSchedule


@dataclass
class GenerationInputs:
    """Initial noise for the whole latent and the text conditioning of both guidance branches (fp32, host)."""

    latents: np.ndarray  # (1, C, H, W), unscaled noise
    cond: np.ndarray  # (1, S, D)
    uncond: np.ndarray | None  # (1, S, D); None: no guidance
    schedule: LinearSchedule
    guidance_scale: float = 5.0
    text_embeds: np.ndarray | None = None  # (2, T) [uncond; cond] (SDXL), or (1, T) without guidance
    time_ids: np.ndarray | None = None  # (2, 6) or (1, 6)


@dataclass(frozen=True)
class Topology:
    """How the world's ranks share the work: `groups` guidance groups of `devices` patch ranks each."""

    devices: int
    groups: int

    @property
    def world(self) -> int:
        return self.devices * self.groups

    @classmethod
    def from_manifest(cls, data: dict) -> "Topology":
        return cls(data["plan"]["devices"], 2 if data.get("cfg_split") else 1)

    def place(self, world_rank: int) -> tuple[int, int]:
        """(guidance group, patch rank) of a world rank."""
        return divmod(world_rank, self.devices)


def rank_inputs(inputs: GenerationInputs, data: dict, world_rank: int) -> tuple[np.ndarray, Conditioning]:
    """This rank's scaled latent rows and the conditioning of its UNet batch."""
    topo = Topology.from_manifest(data)
    group, rank = topo.place(world_rank)
    rows = inputs.latents.shape[2] // topo.devices
    patch = inputs.latents[:, :, rank * rows:(rank + 1) * rows] * np.float32(inputs.schedule.init_noise_sigma)
    guided = inputs.uncond is not None
    if guided != bool(data.get("guidance", True)):
        raise ConfigError(f"the work directory was exported {'with' if data.get('guidance', True) else 'without'} "
                          "guidance but the request is not. Fix: export again with matching --no-guidance")
    pick = _branch_picker(guided, topo.groups == 2, group)
    enc = pick(np.concatenate([inputs.uncond, inputs.cond]) if guided else inputs.cond)
    cond = Conditioning(enc, *(pick(x) if x is not None else None for x in (inputs.text_embeds, inputs.time_ids)))
    return np.ascontiguousarray(patch, np.float32), cond


def _branch_picker(guided: bool, split: bool, group: int):
    """Rows of a [uncond; cond] batch that this rank's UNet call takes."""
    if guided and split:
        return lambda x: np.ascontiguousarray(x[group:group + 1], np.float32)
    return lambda x: np.ascontiguousarray(x, np.float32)
