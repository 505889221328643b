"""diffusers -> original (SGM) UNet module names (trt_distri/lora_sgm.py), checked against names the original SDXL
and SD 1.5 checkpoints use."""
from __future__ import annotations

import pytest

from trt_distri.lora_sgm import SgmNames
from trt_distri.models import UNET_CONFIGS

SDXL = [("conv_in", "input_blocks.0.0"), ("conv_out", "out.2"), ("time_embedding.linear_2", "time_embed.2"),
        ("add_embedding.linear_1", "label_emb.0.0"),
        ("down_blocks.0.resnets.1.conv2", "input_blocks.2.0.out_layers.3"),
        ("down_blocks.0.downsamplers.0.conv", "input_blocks.3.0.op"),
        ("down_blocks.1.resnets.0.conv_shortcut", "input_blocks.4.0.skip_connection"),
        ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
         "input_blocks.4.1.transformer_blocks.0.attn1.to_q"),
        ("down_blocks.2.attentions.1.proj_in", "input_blocks.8.1.proj_in"),
        ("mid_block.resnets.0.time_emb_proj", "middle_block.0.emb_layers.1"),
        ("mid_block.attentions.0.transformer_blocks.9.ff.net.2", "middle_block.1.transformer_blocks.9.ff.net.2"),
        ("mid_block.resnets.1.conv1", "middle_block.2.in_layers.2"),
        ("up_blocks.0.attentions.2.transformer_blocks.0.attn2.to_out.0",
         "output_blocks.2.1.transformer_blocks.0.attn2.to_out.0"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.2.conv"),
        ("up_blocks.1.resnets.0.conv_shortcut", "output_blocks.3.0.skip_connection"),
        ("up_blocks.1.upsamplers.0.conv", "output_blocks.5.2.conv"),
        ("up_blocks.2.resnets.2.conv2", "output_blocks.8.0.out_layers.3")]
SD15 = [("down_blocks.2.downsamplers.0.conv", "input_blocks.9.0.op"), ("down_blocks.3.resnets.1.conv1",
                                                                        "input_blocks.11.0.in_layers.2"),
        ("up_blocks.0.resnets.2.conv2", "output_blocks.2.0.out_layers.3"),
        ("up_blocks.0.upsamplers.0.conv", "output_blocks.2.1.conv"),  # no attention before it
        ("up_blocks.3.attentions.2.proj_out", "output_blocks.11.1.proj_out")]


@pytest.mark.parametrize("config, pairs", [("sdxl", SDXL), ("sd15", SD15)])
def test_checkpoint_names(config, pairs):
    names = SgmNames(UNET_CONFIGS[config])
    for diffusers, sgm in pairs:
        assert names(diffusers) == sgm, diffusers


def test_names_without_an_sgm_counterpart():
    names = SgmNames(UNET_CONFIGS["sdxl"])
    assert names("down_blocks.2.downsamplers.0.conv") is None  # the last level has no downsampler
    assert names("up_blocks.0.resnets.0.nonexistent") is None
