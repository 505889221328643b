"""Typed requests shared by the CLI and the library: what to export, for how many GPUs, in which modes."""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path

from trt_distri.errors import ConfigError

RANDOM_PREFIX = "random:"
DEFAULT_MODEL = "random:tiny-sdxl"
TEXT_LEN = 77  # tokens per prompt (CLIP): the text encoders' input and the UNet's encoder_hidden_states rows


class Precision(str, enum.Enum):
    FP16 = "fp16"
    FP32 = "fp32"


class GNMode(str, enum.Enum):
    """How GroupNorm statistics are combined across patches (docs/design.md, "What is exchanged")."""

    CORRECTED_ASYNC = "corrected-async"
    STALE = "stale"
    SEPARATE = "separate"
    SYNC = "sync"


@dataclass(frozen=True)
class ExportRequest:
    """Everything `trt_distri.export.exporter.export_unet` needs; the CLI builds one from its arguments."""

    model: str  # local diffusers folder (pipeline or UNet) or "random:<config>"
    height: int
    width: int
    gpus: int
    out_dir: Path
    cfg_split: bool = True
    guidance: bool = True
    precision: Precision = Precision.FP16
    gn_mode: GNMode = GNMode.CORRECTED_ASYNC
    overwrite: bool = False
    seed: int = 0  # for random weights
    unet_only: bool = False  # a pipeline source: export its UNet alone (no text encoders, VAE, tokenizers)
    variant: str | None = None  # weight files name.<variant>.safetensors (diffusers' variant, such as fp16)

    @property
    def _split_applies(self) -> bool:
        return self.guidance and self.cfg_split and self.gpus >= 2 and self.gpus % 2 == 0

    @property
    def patch_devices(self) -> int:
        """Devices sharing one image: half the GPUs when the two guidance branches run on separate halves."""
        return self.gpus // 2 if self._split_applies else self.gpus

    @property
    def batch(self) -> int:
        """Batch of one UNet call: 2 only with guidance whose branches share the same GPUs."""
        return 2 if self.guidance and not self._split_applies else 1

    def split_note(self) -> str | None:
        """Why an asked-for guidance split does not apply, or None (also None without guidance: nothing to split)."""
        if not (self.guidance and self.cfg_split) or self._split_applies:
            return None
        why = "1 GPU" if self.gpus == 1 else f"an odd number of GPUs ({self.gpus})"
        return (f"--cfg-split does not apply to {why}; the two guidance branches run together as a batch of 2. "
                f"Fix: use an even --gpus so that each branch gets half of the GPUs")

    @property
    def random_config(self) -> str | None:
        """The shipped configuration name for "random:<name>", else None (a folder)."""
        return self.model[len(RANDOM_PREFIX):] if self.model.startswith(RANDOM_PREFIX) else None

    @property
    def exports_pipeline(self) -> bool:
        """Text encoders, VAE and tokenizers are exported too: random:<name>, or a folder with model_index.json."""
        if self.unet_only:
            return False
        return self.random_config is not None or (Path(self.model) / "model_index.json").is_file()

    def unet_config(self) -> dict:
        """The UNet's diffusers config, read without torch (a shipped config or the folder's config.json)."""
        from trt_distri.models import UNET_CONFIGS

        name = self.random_config
        if name is not None:
            if name not in UNET_CONFIGS:
                raise ConfigError(f"unknown model configuration {name!r}. Note: expected one of "
                                  f"{', '.join(RANDOM_PREFIX + n for n in sorted(UNET_CONFIGS))}, got {self.model!r}")
            return UNET_CONFIGS[name]
        return _read_unet_config(Path(self.model))


def _read_unet_config(root: Path) -> dict:
    for candidate in (root / "unet" / "config.json", root / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {candidate}. Note: expected a diffusers config.json, got: {exc}") \
                    from exc
    raise ConfigError(
        f"no diffusers UNet in {root}. Note: expected {root}/unet/config.json (a pipeline folder) or "
        f"{root}/config.json (a UNet folder), or a shipped config such as {DEFAULT_MODEL}. "
        f"Fix: pass a folder saved by `save_pretrained`")
