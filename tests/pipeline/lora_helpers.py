"""LoRA files made in the tests for the tiny pipelines (PEFT on the diffusers UNet and text encoders, saved by
diffusers), and diffusers' own images with them loaded and fused: the oracle the work directory's images are compared
with."""
from __future__ import annotations

from pathlib import Path

import numpy as np

#: every kind of layer the UNet export names: attention, feed-forward, projections, 3x3 and 1x1 convolutions,
#: time embeddings (regex over diffusers module paths, as PEFT matches target_modules)
TARGETS = (r".*(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2|conv1|conv2|conv_shortcut"
           r"|time_emb_proj|conv_in|conv_out|downsamplers\.0\.conv|upsamplers\.0\.conv|linear_1|linear_2)$")
PROMPT = "a red fox in the snow"


#: the linear layers of a CLIP text encoder (attention and MLP)
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def _peft_layers(model, targets, seed: int, rank: int, alpha: float, strength: float) -> tuple[dict, dict]:
    """A random PEFT LoRA added to `model` (lora_B scaled by `strength`): its state dict and configuration."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False, target_modules=targets)
    inject_adapter_in_model(config, model)  # what diffusers' and transformers' add_adapter do
    state = get_peft_model_state_dict(model)
    return {k: v * strength if "lora_B" in k else v for k, v in state.items()}, config.to_dict()


def make_lora(folder: Path, out: Path, seed: int, rank: int = 4, alpha: float = 8.0, strength: float = 0.3,
              text_encoders: tuple[str, ...] = (), text_strength: float = 0.3) -> Path:
    """A random LoRA of rank `rank` on the saved pipeline's UNet, and on its `text_encoders` (attention and MLP
    layers; lora_B scaled by `strength` / `text_strength`, so the image changes without saturating), written by
    `save_lora_weights` with its PEFT configurations."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    layers, metadata = {}, {}
    layers["unet_lora_layers"], metadata["unet_lora_adapter_metadata"] = _peft_layers(
        unet, TARGETS, seed, rank, alpha, strength)
    for i, name in enumerate(text_encoders):
        cls = CLIPTextModelWithProjection if name == "text_encoder_2" else CLIPTextModel
        layers[f"{name}_lora_layers"], metadata[f"{name}_lora_adapter_metadata"] = _peft_layers(
            cls.from_pretrained(folder / name), list(TEXT_TARGETS), seed + 100 + i, rank, alpha, text_strength)
    out.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(out.parent, weight_name=out.name, **layers, **metadata)
    return out


def diffusers_lora_image(folder: Path, loras: list[tuple[Path, float]], steps: int, seed: int,
                         components: tuple[str, ...] = ("unet", *TEXT_ENCODERS)) -> np.ndarray:
    """diffusers' pipeline with `loras` loaded, mixed with their scales and fused into `components` (the UNet and
    the text encoders)."""
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
        pipe.fuse_lora(components=list(components), adapter_names=names, lora_scale=1.0)
        pipe.unload_lora_weights()  # only what was fused stays
    out = pipe(PROMPT, num_inference_steps=steps, guidance_scale=5.0, height=128, width=128,
               generator=torch.Generator().manual_seed(seed), output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


_RESNET_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}


def _sdxl_sgm_module(module: str) -> str:
    """The original (SGM) name of a module of an SDXL-layout UNet (3 levels, 2 layers per block: input block
    3 * level + layer + 1, output block 3 * level + layer), written out for this test from the documented block
    mapping."""
    import re

    fixed = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
             "add_embedding.linear_2": "label_emb.0.2"}
    if module in fixed:
        return fixed[module]
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv", module):
        return f"input_blocks.{3 * int(m[1]) + 3}.0.op"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.conv", module):
        return f"output_blocks.{3 * int(m[1]) + 2}.2.conv"
    m = re.fullmatch(r"(down_blocks|up_blocks|mid_block)\.(?:(\d)\.)?(resnets|attentions)\.(\d)\.(.+)", module)
    side, level, kind, index, rest = m[1], int(m[2] or 0), m[3], int(m[4]), m[5]
    if side == "mid_block":
        block = f"middle_block.{1 if kind == 'attentions' else 2 * index}"
    elif side == "down_blocks":
        block = f"input_blocks.{3 * level + index + 1}.{0 if kind == 'resnets' else 1}"
    else:
        block = f"output_blocks.{3 * level + index}.{0 if kind == 'resnets' else 1}"
    return f"{block}.{_RESNET_SGM[rest] if kind == 'resnets' else rest}"


def to_kohya_sgm(peft_path: Path, out: Path) -> Path:
    """The PEFT LoRA at `peft_path` (UNet and text encoders) as kohya's SDXL files name it: lora_unet_ + the SGM
    module name, lora_te1_ / lora_te2_ + the CLIP checkpoint name (text_model....), dots as underscores, alpha keys."""
    import json

    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(peft_path), "np") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    out_tensors = {}
    for key, value in load_file(str(peft_path)).items():
        part, _, rest = key.partition(".")
        module, factor = rest.rsplit(".lora_", 1)
        if part == "unet":
            name = "lora_unet_" + _sdxl_sgm_module(module)
        else:
            name = ("lora_te1_" if part == "text_encoder" else "lora_te2_") + (
                module if module.startswith("text_model.") else "text_model." + module)
        name = name.replace(".", "_")
        kind = "lora_down" if factor.startswith("A") else "lora_up"
        out_tensors[f"{name}.{kind}.weight"] = value
        out_tensors[f"{name}.alpha"] = np.asarray(meta[f"{part}.lora_alpha"], np.float32)
    save_file(out_tensors, str(out))
    return out
