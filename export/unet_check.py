"""Reject UNet features the patch export does not implement, with the reason and what to do instead."""
from __future__ import annotations

from trt_distri.errors import UnsupportedModelError

_BLOCKS = {"DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "UNetMidBlock2DCrossAttn"}
# config key -> value the export implements
_REQUIRED = {
    "class_embed_type": None, "encoder_hid_dim_type": None, "time_cond_proj_dim": None,
    "time_embedding_type": "positional", "resnet_time_scale_shift": "default", "center_input_sample": False,
    "dual_cross_attention": False, "only_cross_attention": False, "upcast_attention": False,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "act_fn": "silu", "resnet_skip_time_act": False,
    "mid_block_only_cross_attention": None, "timestep_post_act": None, "time_embedding_act_fn": None,
    "num_class_embeds": None, "cross_attention_norm": None, "mid_block_type": "UNetMidBlock2DCrossAttn",
}


def check_supported(unet) -> None:
    """Raise UnsupportedModelError naming the first unsupported feature of `unet`."""
    cfg = unet.config
    for key, want in _REQUIRED.items():
        got = cfg.get(key, want)
        if isinstance(got, (list, tuple)):
            got = None if not any(got) else got  # per-block booleans: all False is the default
            want = None if want is False else want
        if got != want:
            raise UnsupportedModelError(
                f"UNet config {key}={got!r} is not supported by the patch export. Note: expected {want!r}. "
                "Fix: use an SD 1.x/2.x- or SDXL-shaped UNet2DConditionModel")
    if cfg.get("addition_embed_type") not in (None, "text_time"):
        raise UnsupportedModelError(
            f"addition_embed_type={cfg.addition_embed_type!r} is not supported. Note: expected None (SD 1.x/2.x) "
            "or 'text_time' (SDXL)")
    for kind in list(cfg.down_block_types) + list(cfg.up_block_types) + [cfg.mid_block_type]:
        if kind not in _BLOCKS:
            raise UnsupportedModelError(f"block type {kind} is not supported. Note: expected one of {sorted(_BLOCKS)}")
    for name, module in unet.named_modules():
        _check_module(name, module)


def _check_module(name: str, module) -> None:
    kind = type(module).__name__
    if kind == "Downsample2D" and module.padding != 1:
        raise UnsupportedModelError(f"{name}: downsampler padding {module.padding} is not supported (expected 1)")
    if kind == "Upsample2D" and not module.interpolate:
        raise UnsupportedModelError(f"{name}: transposed-conv upsampling is not supported (expected interpolate)")
    if kind == "Attention" and (module.residual_connection or module.rescale_output_factor != 1.0
                                or module.norm_cross is not None or module.spatial_norm is not None
                                or getattr(module, "norm_q", None) is not None):
        raise UnsupportedModelError(f"{name}: attention with residual/rescale/norms is not supported")
    if kind == "BasicTransformerBlock" and (module.norm_type != "layer_norm" or module.pos_embed is not None):
        raise UnsupportedModelError(f"{name}: transformer norm_type {module.norm_type!r} is not supported")
    if kind == "FeedForward" and type(module.net[0]).__name__ != "GEGLU":
        raise UnsupportedModelError(f"{name}: feed-forward activation {type(module.net[0]).__name__} is not "
                                    "supported (expected GEGLU)")


_UNSUPPORTED_CALL_ARGS = {
    "down_block_additional_residuals": "ControlNet residuals",
    "mid_block_additional_residual": "ControlNet residuals",
    "down_intrablock_additional_residuals": "T2I-Adapter residuals",
    "attention_mask": "attention masks",
    "encoder_attention_mask": "attention masks",
    "cross_attention_kwargs": "cross-attention kwargs (LoRA scale, IP-Adapter)",
    "class_labels": "class labels",
    "timestep_cond": "timestep conditioning (LCM guidance embedding)",
}


def check_call(**unet_kwargs) -> None:
    """Reject UNet call inputs that the exported graphs have no input for."""
    for key, value in unet_kwargs.items():
        if value is None:
            continue
        what = _UNSUPPORTED_CALL_ARGS.get(key)
        if what is None:
            raise UnsupportedModelError(f"unknown UNet input {key!r}. Note: the exported graphs take sample, "
                                        "timestep, encoder_hidden_states and, for SDXL, text_embeds and time_ids")
        raise UnsupportedModelError(
            f"{key} ({what}) is not supported by the patch-parallel graphs: they have no input for it. "
            f"Fix: run without {what}, or use the single-GPU diffusers pipeline for this request")
