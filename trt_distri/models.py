"""UNet configurations shipped with the package and loading of local diffusers folders.

Tiny configurations are for tests and the embedded default; full-size ones (`sdxl`, `sd15`) are for benchmarks with
random weights, since no weights can be downloaded. Nothing here downloads anything.
"""
from __future__ import annotations

from pathlib import Path

from trt_distri.errors import ConfigError

_COMMON = {"act_fn": "silu", "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
           "in_channels": 4, "out_channels": 4, "norm_eps": 1e-5, "downsample_padding": 1,
           "mid_block_scale_factor": 1, "upcast_attention": False}

#: text_embeds width of the SDXL-shaped configs: the pooled embedding of the second text encoder (its projection_dim
#: in trt_distri.pipeline_models), and with the time ids the UNet's projection_class_embeddings_input_dim.
TEXT_EMBEDS_DIM = {"tiny-sdxl": 24, "sdxl": 1280}

UNET_CONFIGS: dict[str, dict] = {
    "tiny-sd": {**_COMMON, "block_out_channels": [16, 32, 32], "layers_per_block": 1, "norm_num_groups": 8,
                "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                "cross_attention_dim": 24, "attention_head_dim": 1, "use_linear_projection": False,
                "sample_size": 16},
    "tiny-sdxl": {**_COMMON, "block_out_channels": [16, 32, 64], "layers_per_block": 2, "norm_num_groups": 8,
                  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                  "cross_attention_dim": 32, "attention_head_dim": [1, 2, 4],
                  "transformer_layers_per_block": [1, 1, 2], "use_linear_projection": True,
                  "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                  "projection_class_embeddings_input_dim": TEXT_EMBEDS_DIM["tiny-sdxl"] + 6 * 8,  # 6 time ids
                  "sample_size": 16},
    "sd15": {**_COMMON, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
             "norm_num_groups": 32,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
             "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
             "sample_size": 64},
    "sdxl": {**_COMMON, "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "norm_num_groups": 32,
             "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "cross_attention_dim": 2048, "attention_head_dim": [5, 10, 20],
             "transformer_layers_per_block": [1, 2, 10], "use_linear_projection": True,
             "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": TEXT_EMBEDS_DIM["sdxl"] + 6 * 256, "sample_size": 128},
}



def random_unet(name: str, seed: int = 0, dtype=None):
    """A UNet2DConditionModel of a shipped configuration with seeded random weights."""
    import torch
    from diffusers import UNet2DConditionModel

    if name not in UNET_CONFIGS:
        raise ConfigError(f"unknown model configuration {name!r}. Note: expected one of {sorted(UNET_CONFIGS)}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNET_CONFIGS[name])
    if dtype is not None:
        unet = unet.to(dtype)
    return unet.eval()


def _weight_files(variant: str | None) -> tuple[str, ...]:
    """The weight files diffusers looks for in a UNet folder (with `variant`: name.<variant>.safetensors ...)."""
    if variant:
        return (f"diffusion_pytorch_model.{variant}.safetensors",
                f"diffusion_pytorch_model.safetensors.index.{variant}.json", f"diffusion_pytorch_model.{variant}.bin")
    return ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
            "diffusion_pytorch_model.bin")


def load_unet(path: str | Path, variant: str | None = None):
    """Load the UNet of a local diffusers folder: a pipeline (with `unet/`) or a UNet folder itself; `variant`
    (such as fp16) picks the weight files name.<variant>.safetensors."""
    from diffusers import UNet2DConditionModel

    root = Path(path)
    folder = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"no diffusers UNet in {root}. Note: expected {root}/unet/config.json (a pipeline folder) or "
            f"{root}/config.json (a UNet folder). Fix: pass a folder saved by `save_pretrained`")
    files = _weight_files(variant)
    if not any((folder / f).is_file() for f in files):
        raise ConfigError(f"the UNet folder {folder} has a config.json but no weights. Note: expected one of "
                          f"{', '.join(files)}. Fix: copy the complete folder written by `save_pretrained`"
                          + (", or drop --variant" if variant else ""))
    try:
        return UNet2DConditionModel.from_pretrained(folder, variant=variant).eval()
    except (OSError, ValueError) as exc:  # missing or unreadable weight files, a config diffusers rejects
        raise ConfigError(f"cannot load the UNet in {folder}: {exc}. Fix: point at a complete folder written "
                          "by `save_pretrained` (config.json and the weight files)") from exc
