"""LoRA files made in the tests for the tiny pipelines (PEFT on the diffusers UNet, saved by diffusers), and
diffusers' own images with them loaded and fused: the oracle the work directory's images are compared with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: every kind of layer the UNet export names: attention, feed-forward, projections, 3x3 and 1x1 convolutions,
#: time embeddings (regex over diffusers module paths, as PEFT matches target_modules)
TARGETS = (r".*(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2|conv_shortcut"
           r"|time_emb_proj|conv_in|conv_out|downsamplers\.0\.conv|upsamplers\.0\.conv|linear_1|linear_2)$")
PROMPT = "a red fox in the snow"


def make_lora(folder: Path, out: Path, seed: int, rank: int = 4, alpha: float = 8.0, strength: float = 0.3) -> Path:
    """A random LoRA of rank `rank` on the saved pipeline's UNet (lora_B scaled by `strength`, so the image
    changes without saturating), written by `save_lora_weights` with its PEFT configuration."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=TARGETS)
    unet.add_adapter(config)
    state = get_peft_model_state_dict(unet)
    state = {k: v * strength if "lora_B" in k else v for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(out.parent, unet_lora_layers=state, weight_name=out.name,
                                               unet_lora_adapter_metadata=config.to_dict())
    return out


def diffusers_lora_image(folder: Path, loras: list[tuple[Path, float]], steps: int, seed: int) -> np.ndarray:
    """diffusers' pipeline with `loras` loaded, mixed with their scales and fused into the UNet."""
    import torch

    from oracles.diffusers_schedule import make_scheduler
    from trt_distri.pipeline_models import load_pipeline

    pipe = load_pipeline(folder)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    names = [f"lora{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pipe.load_lora_weights(path.parent, weight_name=path.name, adapter_name=name)
    if loras:
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])
        pipe.fuse_lora(components=["unet"], adapter_names=names, lora_scale=1.0)
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, height=128, width=128,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
