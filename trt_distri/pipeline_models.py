"""Whole pipelines: text encoder(s), tokenizer(s), UNet, VAE and scheduler, from a local folder or shipped configs.

`random_pipeline(name)` builds a diffusers StableDiffusionPipeline (`sd15`, `tiny-sd`) or StableDiffusionXLPipeline
(`sdxl`, `tiny-sdxl`) of the shipped architecture with seeded random weights and the tiny local tokenizer
(trt_distri.tiny_tokenizer): full-size ones are for benchmarks without downloadable weights. `load_pipeline(path)`
reads a folder written by `save_pretrained`, after checking that it holds every part. Nothing here downloads.
"""
from __future__ import annotations

import json
from pathlib import Path

from trt_distri.errors import ConfigError
from trt_distri.models import TEXT_EMBEDS_DIM, random_unet

_CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
           "hidden_act": "quick_gelu", "vocab_size": 49408, "projection_dim": 768}
_CLIP_BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
              "hidden_act": "gelu", "vocab_size": 49408, "projection_dim": TEXT_EMBEDS_DIM["sdxl"]}


def _tiny_clip(hidden: int, projection: int) -> dict:
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": 2, "num_attention_heads": 2,
            "hidden_act": "quick_gelu", "vocab_size": 1024, "projection_dim": projection}


#: Text encoder configs per shipped name: one (SD 1.x/2.x) or two (SDXL; the second has a projection).
TEXT_ENCODER_CONFIGS: dict[str, list[dict]] = {
    "tiny-sd": [_tiny_clip(24, 24)],
    # 16 + 16 = cross_attention_dim 32; the second's projection is the pooled text_embeds
    "tiny-sdxl": [_tiny_clip(16, 16), _tiny_clip(16, TEXT_EMBEDS_DIM["tiny-sdxl"])],
    "sd15": [_CLIP_L],
    "sdxl": [_CLIP_L, _CLIP_BIGG],
}


def _vae(channels: list[int], layers: int, groups: int, sample: int, scaling: float) -> dict:
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": channels,
            "down_block_types": ["DownEncoderBlock2D"] * len(channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(channels), "layers_per_block": layers,
            "norm_num_groups": groups, "sample_size": sample, "scaling_factor": scaling}


VAE_CONFIGS: dict[str, dict] = {
    "tiny-sd": _vae([8, 16, 16, 16], 1, 8, 256, 0.18215),
    "tiny-sdxl": _vae([8, 16, 16, 16], 1, 8, 256, 0.13025),
    "sd15": _vae([128, 256, 512, 512], 2, 32, 512, 0.18215),
    "sdxl": {**_vae([128, 256, 512, 512], 2, 32, 1024, 0.13025), "force_upcast": True},
}

SCHEDULER_CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                    "num_train_timesteps": 1000, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False}

#: Folders a diffusers pipeline needs: SD 1.x/2.x, and SDXL's extra ones.
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")


def is_sdxl(name: str) -> bool:
    return len(TEXT_ENCODER_CONFIGS[name]) == 2


def random_pipeline(name: str, seed: int = 0):
    """A diffusers pipeline of the shipped architecture `name` with seeded random weights (fp32, eval)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from trt_distri.tiny_tokenizer import special_ids, tiny_clip_tokenizer

    if name not in TEXT_ENCODER_CONFIGS:
        raise ConfigError(f"unknown pipeline configuration {name!r}. Note: expected one of "
                          f"{sorted(TEXT_ENCODER_CONFIGS)}, got {name!r}")
    unet = random_unet(name, seed)
    torch.manual_seed(seed + 1)
    encoders = []
    for i, cfg in enumerate(TEXT_ENCODER_CONFIGS[name]):
        config = CLIPTextConfig(**cfg, max_position_embeddings=77, **special_ids())
        cls = CLIPTextModelWithProjection if i == 1 else CLIPTextModel
        encoders.append(cls(config).eval())
    vae = AutoencoderKL.from_config(VAE_CONFIGS[name]).eval()
    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    parts = {"unet": unet, "vae": vae, "scheduler": scheduler, "text_encoder": encoders[0],
             "tokenizer": tiny_clip_tokenizer()}
    if is_sdxl(name):
        from diffusers import StableDiffusionXLPipeline

        return StableDiffusionXLPipeline(**parts, text_encoder_2=encoders[1], tokenizer_2=tiny_clip_tokenizer(),
                                         add_watermarker=False)
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def check_pipeline_folder(root: Path) -> bool:
    """True for an SDXL folder, False for SD 1.x/2.x; raises ConfigError naming each missing part."""
    index = root / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"{root} is not a diffusers pipeline folder. Note: expected {index} (written by "
                          "`save_pretrained`). Fix: pass the folder a pipeline's save_pretrained wrote, or "
                          "random:<name> for random weights")
    sdxl = "text_encoder_2" in json.loads(index.read_text())
    missing = [p for p in PIPELINE_PARTS + (SDXL_PARTS if sdxl else ()) if not (root / p).is_dir()
               or not any((root / p).iterdir())]
    if missing:
        raise ConfigError(f"the pipeline folder {root} is incomplete. Note: expected the sub-folders "
                          f"{', '.join(PIPELINE_PARTS + (SDXL_PARTS if sdxl else ()))}; missing or empty: "
                          f"{', '.join(missing)}. Fix: copy the complete folder written by `save_pretrained`")
    return sdxl


def load_pipeline(path: str | Path, variant: str | None = None):
    """The diffusers pipeline saved in the local folder `path` (fp32, CPU); `variant` (such as fp16) picks the
    weight files name.<variant>.safetensors."""
    root = Path(path)
    sdxl = check_pipeline_folder(root)
    if sdxl:
        from diffusers import StableDiffusionXLPipeline as cls
    else:
        from diffusers import StableDiffusionPipeline as cls
    extra = {} if sdxl else {"safety_checker": None, "requires_safety_checker": False}
    try:
        return cls.from_pretrained(root, local_files_only=True, variant=variant, **extra)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the pipeline in {root}: {exc}. Fix: point at a complete folder written "
                          "by `save_pretrained`") from exc


