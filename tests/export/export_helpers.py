"""Export tiny UNets into a test's tmp_path and make matching random inputs."""
from __future__ import annotations

from pathlib import Path

import torch

from trt_distri.config import ExportRequest, GNMode, Precision
from trt_distri.export.exporter import export_unet
from trt_distri.models import TEXT_EMBEDS_DIM


def export_tiny(unet, model: str, tmp_path: Path, n: int, height: int, width: int, mode: GNMode,
                precision: Precision = Precision.FP32, batch: int = 2) -> Path:
    """Export `unet` for n patch devices; batch 2 (guidance, no split) unless batch=1 is asked."""
    out = tmp_path / f"{model}-n{n}-{height}x{width}-{mode.value}-{precision.value}"
    req = ExportRequest(f"random:{model}", height, width, n, out, cfg_split=False, guidance=batch == 2,
                        precision=precision, gn_mode=mode)
    export_unet(req, unet=unet)
    return out


def unet_inputs(unet, model: str, height: int, width: int, batch: int, seed: int = 0):
    """sample, timestep, encoder_hidden_states, added_cond_kwargs (None for SD-shaped models)."""
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, height // 8, width // 8, generator=g)
    enc = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    added = None
    if model in TEXT_EMBEDS_DIM:
        added = {"text_embeds": torch.randn(batch, TEXT_EMBEDS_DIM[model], generator=g),
                 "time_ids": torch.tensor([[height, width, 0, 0, height, width]] * batch, dtype=torch.float32)}
    return sample, torch.tensor([500.0]), enc, added
