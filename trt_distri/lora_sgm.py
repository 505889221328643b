"""Module paths of a diffusers UNet in the original Stable Diffusion (SGM/LDM) layout, as kohya SDXL LoRAs name them.

kohya's sd-scripts train SDXL on the original UNet, so its LoRA keys name modules `input_blocks.4.1.transformer_
blocks.0.attn1.to_q` where diffusers says `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`. The block
mapping (the same facts diffusers' `_maybe_map_sgm_blocks_to_diffusers` uses), for levels i with L_i layers:
- `conv_in` = input_blocks.0.0; down level i's resnet j = input_blocks.n.0 and attention j = input_blocks.n.1,
  n counting from 1 over the levels' layers and downsamplers; its downsampler = input_blocks.n.0.op;
- mid_block.resnets.0 / attentions.0 / resnets.1 = middle_block.0 / 1 / 2;
- up level i's resnet j (L_i + 1 of them) = output_blocks.n.0, attention j = output_blocks.n.1, n counting from 0;
  its upsampler = output_blocks.<last n>.2.conv after an attention, else .1.conv;
- time_embedding.linear_1/_2 = time_embed.0/.2, add_embedding.linear_1/_2 = label_emb.0.0/.2,
  conv_norm_out = out.0, conv_out = out.2;
- inside a resnet: norm1 = in_layers.0, conv1 = in_layers.2, time_emb_proj = emb_layers.1, norm2 = out_layers.0,
  conv2 = out_layers.3, conv_shortcut = skip_connection. Transformer blocks keep their names.
Only the direction diffusers -> SGM is computed (from the UNet configuration): a kohya key is then looked up among
the work directory's weights, so no underscore-separated name is ever parsed.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_MID = {"resnets.0": "middle_block.0", "attentions.0": "middle_block.1", "resnets.1": "middle_block.2"}
_BLOCK = re.compile(r"^(?P<side>down_blocks|up_blocks)\.(?P<level>\d+)\.(?P<kind>resnets|attentions|downsamplers"
                    r"|upsamplers)\.(?P<index>\d+)(?P<rest>(\..+)?)$")


class SgmNames:
    """diffusers module path -> SGM module path for one UNet configuration (None where there is none)."""

    def __init__(self, config: Mapping) -> None:
        down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
        layers = config["layers_per_block"]
        down_layers = list(layers) if isinstance(layers, (list, tuple)) else [int(layers)] * len(down_types)
        self.blocks: dict[str, str] = {}
        n = 1
        for level, (kind, count) in enumerate(zip(down_types, down_layers)):
            for j in range(count):
                self.blocks[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{n}.0"
                self.blocks[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{n}.1"
                n += 1
            if level < len(down_types) - 1:
                self.blocks[f"down_blocks.{level}.downsamplers.0"] = f"input_blocks.{n}.0"
                n += 1
        n = 0
        for level, (kind, count) in enumerate(zip(up_types, reversed(down_layers))):
            for j in range(count + 1):
                self.blocks[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{n}.0"
                self.blocks[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{n}.1"
                n += 1
            has_attention = "Attn" in kind
            self.blocks[f"up_blocks.{level}.upsamplers.0"] = f"output_blocks.{n - 1}.{2 if has_attention else 1}"

    def __call__(self, module: str) -> str | None:
        if module in _TOP:
            return _TOP[module]
        if module.startswith("mid_block."):
            head, _, rest = module[len("mid_block."):].partition(".")
            inner, _, rest = rest.partition(".")
            block = _MID.get(f"{head}.{inner}")
            return None if block is None else _inner(block, head, rest)
        match = _BLOCK.match(module)
        if match is None:
            return None
        key = f"{match['side']}.{match['level']}.{match['kind']}.{match['index']}"
        block = self.blocks.get(key)
        if block is None:
            return None
        rest = match["rest"].lstrip(".")
        if match["kind"] == "downsamplers":
            return f"{block}.op" if rest == "conv" else None
        return _inner(block, match["kind"], rest)


def _inner(block: str, kind: str, rest: str) -> str | None:
    """The SGM path of `rest` (the module path inside a resnet, attention or upsampler) under `block`."""
    if kind == "resnets":
        head, _, tail = rest.partition(".")
        mapped = _RESNET.get(head)
        return None if mapped is None else ".".join(p for p in (block, mapped, tail) if p)
    return ".".join(p for p in (block, rest) if p)
