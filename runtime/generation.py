"""What one generation needs, independent of where it runs, and how it is split over guidance groups and patches."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.manifest import Manifest
from trt_distri.runtime.executor import Conditioning, RunOptions
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

    def branch_rows(self) -> dict[str, np.ndarray]:
        """Every conditioning input given, by UNet input name, one row per guidance branch ([uncond; cond])."""
        rows = {"encoder_hidden_states": self.cond if self.uncond is None else
                np.concatenate([self.uncond, self.cond]), "text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return {name: value for name, value in rows.items() if value is not None}


class Ranks(Protocol):
    """Where a generator's ranks run, loaded once for many generations: runtime.local.LocalRanks (threads of this
    process, on the CPU) or runtime.gpu.GpuRanks (one process per GPU, or one rank of a launch)."""

    aux_device: int | None  # the GPU for the text encoders and the VAE; None: the CPU

    def run(self, inputs: GenerationInputs, options: RunOptions) -> np.ndarray | None:
        """The final latents (1, C, H, W); None on ranks that do not receive them."""

    def close(self) -> None:
        """Release every rank's sessions and buffers (idempotent)."""


@dataclass(frozen=True)
class Topology:
    """How the world's ranks share the work: `groups` guidance groups of `devices` patch ranks each."""

    devices: int
    groups: int

    @property
    def world(self) -> int:
        return self.devices * self.groups

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "Topology":
        return cls(manifest.devices, manifest.groups)

    def place(self, world_rank: int) -> tuple[int, int]:
        """(guidance group, patch rank) of a world rank."""
        return divmod(world_rank, self.devices)


def rank_inputs(inputs: GenerationInputs, manifest: Manifest, world_rank: int) -> tuple[np.ndarray, Conditioning]:
    """This rank's scaled latent rows and the conditioning of its UNet batch (the manifest's conditioning inputs)."""
    topo = Topology.from_manifest(manifest)
    group, rank = topo.place(world_rank)
    rows = inputs.latents.shape[2] // topo.devices
    patch = inputs.latents[:, :, rank * rows:(rank + 1) * rows] * np.float32(inputs.schedule.init_noise_sigma)
    guided = inputs.uncond is not None
    if guided != manifest.guidance:
        raise ConfigError(f"the work directory was exported {'with' if manifest.guidance else 'without'} "
                          "guidance but the request is not. Fix: export again with matching --no-guidance")
    pick = _branch_picker(guided, topo.groups == 2, group)
    given, branches = inputs.branch_rows(), 2 if guided else 1
    cond = {}
    for spec in manifest.conditioning.inputs:
        value = given.get(spec.name)
        if value is None or value.shape != (branches, *spec.shape):
            raise ConfigError(f"the UNet input {spec.name} does not fit the work directory. Note: expected shape "
                              f"{(branches, *spec.shape)}, got {None if value is None else value.shape}. Fix: pass "
                              "conditioning of the shapes the work directory was exported for")
        cond[spec.name] = pick(value)
    return np.ascontiguousarray(patch, np.float32), cond


def _branch_picker(guided: bool, split: bool, group: int):
    """Rows of a [uncond; cond] batch that this rank's UNet call takes."""
    if guided and split:
        return lambda x: np.ascontiguousarray(x[group:group + 1], np.float32)
    return lambda x: np.ascontiguousarray(x, np.float32)
