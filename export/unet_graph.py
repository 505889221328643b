"""Emit one rank's UNet as an ONNX graph (onnx-graphsurgeon) with stale inputs and fresh outputs.

The graph is rank-independent (docs/design.md): border ranks are fed zero halos. Layers are read from the diffusers
modules themselves (heads, eps, strides), so SD 1.x/2.x- and SDXL-shaped UNets are covered by the same code.
Tensors that cross ranks are named after the diffusers module path: `halo.<conv>.top`, `k.<attn1>` and
`v.<attn1>`, `gn.<norm>`.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs
import torch

from trt_distri.config import TEXT_LEN
from trt_distri.export.onnx_builder import Builder
from trt_distri.export.plan import PatchPlan
from trt_distri.export.unet_check import check_supported



def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().cpu().numpy()


class RankGraph:
    """Emits the graph of one patch; `gn_formula` picks how GroupNorm combines statistics across ranks."""

    def __init__(self, unet, plan: PatchPlan, batch: int, dtype: np.dtype, gn_formula: str,
                 text_len: int = TEXT_LEN, weights: dict | None = None, warmup: bool = False):
        check_supported(unet)
        self.unet, self.plan, self.batch, self.n = unet, plan, batch, plan.devices
        self.gn_formula = gn_formula
        # warm-up emission (synchronous steps, `exact` statistics): a GroupNorm -> SiLU -> conv chain exchanges the
        # conv's halo rows before normalisation, in the GroupNorm's cut (`rawhalo.<conv>.*`), so it needs one cut
        if warmup and gn_formula != "exact":
            raise ValueError(f"the warm-up emission needs gn_formula 'exact', not {gn_formula!r}")
        self.warmup = warmup
        self.text_len = text_len
        self.b = Builder(np.dtype(dtype))
        if weights is not None:
            self.b.weights = weights  # shared by every graph set, so each weight is converted and stored once
        self.level = 0

    # ---- entry ---------------------------------------------------------------------------------------------
    def emit(self) -> Builder:
        b, u, cfg = self.b, self.unet, self.unet.config
        rows, width = self.plan.level_rows(0), self.plan.level_width(0)
        sample = b.input("sample", (self.batch, cfg.in_channels, rows, width), np.float32, "sample")
        t = b.input("timestep", (1,), np.float32, "timestep")
        enc = b.input("encoder_hidden_states", (self.batch, self.text_len, cfg.cross_attention_dim),
                      np.float32, "encoder_hidden_states")
        self.enc = b.cast(enc, b.dtype)
        b.scope = "time_embedding"
        self.temb = self._time_embedding(t)
        x = b.cast(sample, b.dtype)
        h = self._conv(x, u.conv_in, "conv_in", latent=True)
        res = [h]
        for i, block in enumerate(u.down_blocks):
            if i:  # conv_in joins the first down block
                b.cut("block", f"down_blocks.{i}")
            h, res = self._down_block(h, block, f"down_blocks.{i}", res)
        b.cut("block", "mid_block")
        h = self._mid_block(h, u.mid_block, "mid_block")
        for i, block in enumerate(u.up_blocks):
            b.cut("block", f"up_blocks.{i}")
            h = self._up_block(h, block, f"up_blocks.{i}", res)
        b.cut("block", "conv_out")
        b.scope = "conv_out"
        h = self._norm_silu_conv(h, u.conv_norm_out, "conv_norm_out", u.conv_out, "conv_out")
        b.output(b.cast(h, np.float32), "noise_pred", "noise_pred")
        return b

    # ---- embeddings ----------------------------------------------------------------------------------------
    def _sinusoid(self, t, proj) -> object:
        """diffusers `get_timestep_embedding` in fp32; `t` is (N,)."""
        b, half = self.b, proj.num_channels // 2
        exponent = -math.log(10000) * torch.arange(0, half, dtype=torch.float32) / (half - proj.downscale_freq_shift)
        freqs = b.const(torch.exp(exponent).numpy()[None, :], np.float32)
        arg = b.mul(b.unsqueeze(t, 1), freqs, (t.shape[0], half))
        sin, cos = b.op("Sin", [arg], arg.shape), b.op("Cos", [arg], arg.shape)
        parts = [cos, sin] if proj.flip_sin_to_cos else [sin, cos]
        return b.concat(parts, axis=1)

    def _mlp(self, x, emb, name: str):
        x = self.b.linear(x, _np(emb.linear_1.weight), _np(emb.linear_1.bias), f"{name}.linear_1")
        x = self.b.silu(x)
        return self.b.linear(x, _np(emb.linear_2.weight), _np(emb.linear_2.bias), f"{name}.linear_2")

    def _time_embedding(self, t):
        b, u = self.b, self.unet
        temb = self._mlp(b.cast(self._sinusoid(t, u.time_proj), b.dtype), u.time_embedding, "time_embedding")
        if u.config.addition_embed_type != "text_time":
            return temb
        cfg = u.config
        text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        text = b.input("text_embeds", (self.batch, text_dim), np.float32, "text_embeds")
        ids = b.input("time_ids", (self.batch, 6), np.float32, "time_ids")
        flat = b.reshape(ids, (self.batch * 6,))
        time_embeds = b.reshape(self._sinusoid(flat, u.add_time_proj), (self.batch, 6 * cfg.addition_time_embed_dim))
        add = b.cast(b.concat([text, time_embeds], axis=1), b.dtype)
        aug = self._mlp(add, u.add_embedding, "add_embedding")
        return b.add(temb, aug, aug.shape)

    # ---- exchanged layers ----------------------------------------------------------------------------------
    @staticmethod
    def _halo_rows(conv) -> tuple[int, int]:
        """(rows above, rows below) of its patch that `conv` reads: `a` = padding, `b` = kernel - padding - stride."""
        k, s, ph = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        return ph, k - ph - s

    def _conv(self, x, conv, name: str, latent: bool = False, halos=None):
        """A conv on this patch's rows; kernels > 1 read halo rows of the neighbouring patches.

        `halos` = (rows above, rows below) already computed this step (warm-up GroupNorm chains): the usual
        `halo.<conv>.top/.bottom` are still written (the first asynchronous step reads them) but not read, and no
        cut follows them."""
        b = self.b
        k, s = conv.kernel_size[0], conv.stride[0]
        ph, pw = conv.padding
        rows, width = x.shape[2], x.shape[3]
        out_rows, out_w = rows // s, (width + 2 * pw - conv.kernel_size[1]) // s + 1
        w, bias = _np(conv.weight), _np(conv.bias)
        if k == 1 or self.n == 1:
            return b.conv(x, w, bias, name, s, [ph, pw, ph, pw], out_rows, out_w)
        above, below = self._halo_rows(conv)
        parts = []
        # rank r-1 reads our first `below` rows as its rows below; rank r+1 our last `above` rows as its rows above
        if below:
            b.output(b.slice(x, 2, 0, below), f"halo.{name}.top", "fresh", layer=name)
        if above:
            b.output(b.slice(x, 2, rows - above, rows), f"halo.{name}.bottom", "fresh", layer=name)
        if halos is not None:
            parts = [p for p in (halos[0], x, halos[1]) if p is not None]
            return b.conv(b.concat(parts, axis=2), w, bias, name, s, [0, pw, 0, pw], out_rows, out_w)
        b.cut("latent-halo" if latent else "halo", name)
        if above:
            parts.append(self._stale(f"halo.{name}.above", (x.shape[0], x.shape[1], above, width), x.dtype, name,
                                     entry=f"halo.{name}.bottom", peer=-1))
        parts.append(x)
        if below:
            parts.append(self._stale(f"halo.{name}.below", (x.shape[0], x.shape[1], below, width), x.dtype, name,
                                     entry=f"halo.{name}.top", peer=1))
        return b.conv(b.concat(parts, axis=2), w, bias, name, s, [0, pw, 0, pw], out_rows, out_w)

    def _norm_silu_conv(self, x, norm, norm_name: str, conv, conv_name: str):
        """conv(silu(group_norm(x))). In the warm-up emission the conv's halo rows are exchanged as rows of `x`
        (`rawhalo.<conv>.*`) in the GroupNorm's cut and normalised here with this step's global statistics, which
        saves the halo's own cut. Border ranks read zero raw rows; `valid.<conv>` (ones, zeros at the border) then
        makes their normalised rows zero, as the conv's zero padding requires."""
        b = self.b
        k = conv.kernel_size[0]
        if not self.warmup or self.n == 1 or k == 1:
            return self._conv(b.silu(self._group_norm(x, norm, norm_name)), conv, conv_name)
        above, below = self._halo_rows(conv)
        rows = x.shape[2]

        def raw_rows():  # emitted just before the GroupNorm's cut, with its statistics
            if below:
                b.output(b.slice(x, 2, 0, below), f"rawhalo.{conv_name}.top", "fresh", layer=conv_name)
            if above:
                b.output(b.slice(x, 2, rows - above, rows), f"rawhalo.{conv_name}.bottom", "fresh", layer=conv_name)
            b.output(self._ones_like_corner(x), f"valid.{conv_name}", "fresh", layer=conv_name)

        h, normalise = self._group_norm(x, norm, norm_name, before_cut=raw_rows)
        h = b.silu(h)
        halos = []
        for side, count, entry_side, peer in (("above", above, "bottom", -1), ("below", below, "top", 1)):
            if not count:
                halos.append(None)
                continue
            raw = self._stale(f"rawhalo.{conv_name}.{side}", (x.shape[0], x.shape[1], count, x.shape[3]), x.dtype,
                              conv_name, entry=f"rawhalo.{conv_name}.{entry_side}", peer=peer)
            valid = self._stale(f"valid.{conv_name}.{side}", (1, 1, 1, 1), b.dtype, conv_name,
                                entry=f"valid.{conv_name}", peer=peer)
            halos.append(b.mul(b.silu(normalise(raw)), valid))
        return self._conv(h, conv, conv_name, halos=halos)

    def _ones_like_corner(self, x):
        """A (1, 1, 1, 1) one computed on the device from x's first element (x - x + 1). A constant graph output
        would be folded into an initializer that ONNX Runtime copies into the bound output with a synchronous
        default-stream memcpy on every run, which CUDA-graph capture refuses (seen on 2 x H200)."""
        b = self.b
        corner = b.op("Slice", [x, b.const([0, 0, 0, 0]), b.const([1, 1, 1, 1]), b.const([0, 1, 2, 3])], (1, 1, 1, 1))
        return b.add(b.op("Sub", [corner, corner], (1, 1, 1, 1)), b.const(np.ones((1, 1, 1, 1)), b.dtype))

    def _stale(self, name: str, shape, dtype, layer: str, entry: str, peer: int, wrap: bool = False):
        return self.b.input(name, shape, dtype, "stale", layer=layer,
                            source={"entry": entry, "peer": peer, "wrap": wrap})

    def _group_norm(self, x, norm, name: str, before_cut=None):
        """GroupNorm of this patch with global statistics. With `before_cut` (a callable that emits more fresh
        outputs before the statistics' cut) it returns (y, normalise), where `normalise` applies the same global
        statistics and affine to other rows of the same channels."""
        b = self.b
        weight, bias = _np(norm.weight), _np(norm.bias)
        if self.n == 1:
            return b.op("GroupNormalization", [x, b.weight(f"{name}.weight", weight), b.weight(f"{name}.bias", bias)],
                        x.shape, attrs={"num_groups": norm.num_groups, "epsilon": float(norm.eps), "stash_type": 1})
        bsz, c, rows, width = x.shape
        g = norm.num_groups
        x32 = b.cast(b.reshape(x, (bsz, g, c // g * rows * width)), np.float32)
        mean, sq = b.reduce_mean(x32, 2), b.reduce_mean(b.mul(x32, x32), 2)
        local = b.concat([b.unsqueeze(mean, 0), b.unsqueeze(sq, 0)], axis=0)
        if self.gn_formula != "separate":
            b.output(local, f"gn.{name}", "fresh", layer=name)
        if before_cut is not None:
            before_cut()
        b.cut("gn", name)
        gmean, gsq = self._combine_stats(local, name, (2, bsz, g))
        var = b.op("Sub", [gsq, b.mul(gmean, gmean)], gmean.shape)
        if self.gn_formula == "corrected-async":
            local_var = b.op("Sub", [sq, b.mul(mean, mean)], mean.shape)
            negative = b.op("Less", [var, b.const(0.0, np.float32)], var.shape, dtype=np.bool_)
            var = b.op("Where", [negative, local_var, var], var.shape, dtype=np.float32)
        inv = b.op("Reciprocal", [b.op("Sqrt", [b.add(var, b.const(float(norm.eps), np.float32))], var.shape)],
                   var.shape)

        def normalise(v, v32=None):
            v32 = v32 if v32 is not None else b.cast(b.reshape(v, (bsz, g, c // g * v.shape[2] * width)), np.float32)
            centered = b.op("Sub", [v32, b.unsqueeze(gmean, 2)], v32.shape)
            y = b.cast(b.reshape(b.mul(centered, b.unsqueeze(inv, 2)), v.shape), b.dtype)
            y = b.mul(y, b.weight(f"{name}.weight", weight.reshape(c, 1, 1)))
            return b.add(y, b.weight(f"{name}.bias", bias.reshape(c, 1, 1)))

        y = normalise(x, x32)
        return y if before_cut is None else (y, normalise)

    def _combine_stats(self, local, name: str, shape):
        """Global (E[x], E[x^2]) per group from this rank's fresh statistics and the peers' stale ones."""
        b, f = self.b, self.gn_formula
        if f == "separate":
            return b.take(local, 0), b.take(local, 1)
        first = 0 if f == "corrected-async" else 1
        peers = [self._stale(f"gn.{name}.peer{k}", shape, np.float32, name, f"gn.{name}", k, wrap=True)
                 for k in range(first, self.n)]
        total = peers[0]
        for p in peers[1:] + ([] if f == "corrected-async" else [local]):
            total = b.add(total, p)
        stats = b.mul(total, b.const(1.0 / self.n, np.float32))
        if f == "corrected-async":  # stale global + (fresh own - stale own)
            stats = b.add(stats, b.op("Sub", [local, peers[0]], local.shape))
        return b.take(stats, 0), b.take(stats, 1)

    def _attention(self, x, attn, name: str, context=None):
        """diffusers Attention (AttnProcessor2_0 semantics) on tokens (B, L, C) with opset-23 `Attention`."""
        b = self.b
        src = x if context is None else context
        q = b.linear(x, _np(attn.to_q.weight), _np(attn.to_q.bias), f"{name}.to_q")
        k = b.linear(src, _np(attn.to_k.weight), _np(attn.to_k.bias), f"{name}.to_k")
        v = b.linear(src, _np(attn.to_v.weight), _np(attn.to_v.bias), f"{name}.to_v")
        if context is None and self.n > 1:
            k, v = self._exchange_kv(k, v, name)
        out_shape = tuple(q.shape[:2]) + (v.shape[2],)
        o = b.op("Attention", [q, k, v], out_shape,
                 attrs={"q_num_heads": attn.heads, "kv_num_heads": attn.heads, "scale": float(attn.scale)})
        return b.linear(o, _np(attn.to_out[0].weight), _np(attn.to_out[0].bias), f"{name}.to_out.0")

    def _exchange_kv(self, k, v, name: str):
        """Keys and values are separate exchange entries: stale inputs bind straight to the peers' bytes (no
        unpacking copy); the fresh outputs are written once and attention concatenates own + peers."""
        b = self.b
        b.output(k, f"k.{name}", "fresh", layer=name)
        b.output(v, f"v.{name}", "fresh", layer=name)
        b.cut("kv", name)

        def everyone(kind: str, own):
            peers = [self._stale(f"{kind}.{name}.peer{p}", tuple(own.shape), own.dtype, name, f"{kind}.{name}", p,
                                 wrap=True) for p in range(1, self.n)]
            return b.concat([own] + peers, axis=1)

        return everyone("k", k), everyone("v", v)

    # ---- blocks --------------------------------------------------------------------------------------------
    def _resnet(self, x, r, name: str):
        b = self.b
        b.scope = name
        h = self._norm_silu_conv(x, r.norm1, f"{name}.norm1", r.conv1, f"{name}.conv1")
        t = b.linear(b.silu(self.temb), _np(r.time_emb_proj.weight), _np(r.time_emb_proj.bias),
                     f"{name}.time_emb_proj")
        h = b.add(h, b.reshape(t, (t.shape[0], t.shape[1], 1, 1)), h.shape)
        h = self._norm_silu_conv(h, r.norm2, f"{name}.norm2", r.conv2, f"{name}.conv2")
        if r.conv_shortcut is not None:
            x = self._conv(x, r.conv_shortcut, f"{name}.conv_shortcut")
        out = b.add(x, h, h.shape)
        if r.output_scale_factor != 1.0:
            out = b.mul(out, b.const(1.0 / r.output_scale_factor, b.dtype))
        return out

    def _transformer(self, x, t2d, name: str):
        b = self.b
        b.scope = name
        bsz, c, rows, width = x.shape
        h = self._group_norm(x, t2d.norm, f"{name}.norm")
        linear = t2d.use_linear_projection
        if not linear:
            h = self._conv(h, t2d.proj_in, f"{name}.proj_in")
        inner = h.shape[1]
        h = b.reshape(b.transpose(h, (0, 2, 3, 1)), (bsz, rows * width, inner))
        if linear:
            h = b.linear(h, _np(t2d.proj_in.weight), _np(t2d.proj_in.bias), f"{name}.proj_in")
        for j, blk in enumerate(t2d.transformer_blocks):
            h = self._basic_block(h, blk, f"{name}.transformer_blocks.{j}")
        b.scope = name
        if linear:
            h = b.linear(h, _np(t2d.proj_out.weight), _np(t2d.proj_out.bias), f"{name}.proj_out")
        h = b.transpose(b.reshape(h, (bsz, rows, width, h.shape[2])), (0, 3, 1, 2))
        if not linear:
            h = self._conv(h, t2d.proj_out, f"{name}.proj_out")
        return b.add(h, x, x.shape)

    def _layer_norm(self, x, ln, name: str):
        b = self.b
        return b.op("LayerNormalization", [x, b.weight(f"{name}.weight", _np(ln.weight)),
                                           b.weight(f"{name}.bias", _np(ln.bias))],
                    x.shape, attrs={"axis": -1, "epsilon": float(ln.eps)})

    def _basic_block(self, h, blk, name: str):
        b = self.b
        b.scope = name
        h = b.add(self._attention(self._layer_norm(h, blk.norm1, f"{name}.norm1"), blk.attn1, f"{name}.attn1"), h)
        n2 = self._layer_norm(h, blk.norm2, f"{name}.norm2")
        h = b.add(self._attention(n2, blk.attn2, f"{name}.attn2", context=self.enc), h)
        n3 = self._layer_norm(h, blk.norm3, f"{name}.norm3")
        return b.add(self._feed_forward(n3, blk.ff, f"{name}.ff"), h)

    def _feed_forward(self, x, ff, name: str):
        b = self.b
        geglu, out = ff.net[0], ff.net[2]
        p = b.linear(x, _np(geglu.proj.weight), _np(geglu.proj.bias), f"{name}.net.0.proj")
        half = p.shape[-1] // 2
        hidden, gate = b.slice(p, 2, 0, half), b.slice(p, 2, half, 2 * half)
        g = b.op("Gelu", [gate], gate.shape, attrs={"approximate": "none"})  # GEGLU uses exact F.gelu
        return b.linear(b.mul(hidden, g), _np(out.weight), _np(out.bias), f"{name}.net.2")

    def _down_block(self, h, block, name: str, res: list):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for j, (r, a) in enumerate(zip(block.resnets, attentions)):
            h = self._resnet(h, r, f"{name}.resnets.{j}")
            if a is not None:
                h = self._transformer(h, a, f"{name}.attentions.{j}")
            res.append(h)
        for j, d in enumerate(block.downsamplers or []):
            self.b.scope = f"{name}.downsamplers.{j}"
            h = self._conv(h, d.conv, f"{name}.downsamplers.{j}.conv")
            res.append(h)
        return h, res

    def _mid_block(self, h, block, name: str):
        h = self._resnet(h, block.resnets[0], f"{name}.resnets.0")
        for j, (a, r) in enumerate(zip(block.attentions, block.resnets[1:])):
            h = self._transformer(h, a, f"{name}.attentions.{j}")
            h = self._resnet(h, r, f"{name}.resnets.{j + 1}")
        return h

    def _up_block(self, h, block, name: str, res: list):
        b = self.b
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for j, (r, a) in enumerate(zip(block.resnets, attentions)):
            h = b.concat([h, res.pop()], axis=1)
            h = self._resnet(h, r, f"{name}.resnets.{j}")
            if a is not None:
                h = self._transformer(h, a, f"{name}.attentions.{j}")
        for j, up in enumerate(block.upsamplers or []):
            b.scope = f"{name}.upsamplers.{j}"
            bsz, c, rows, width = h.shape
            scales = b.const([1.0, 1.0, 2.0, 2.0], np.float32)
            h = b.op("Resize", [h, gs.Variable.empty(), scales], (bsz, c, 2 * rows, 2 * width),
                     attrs={"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                            "nearest_mode": "floor"})
            h = self._conv(h, up.conv, f"{name}.upsamplers.{j}.conv")
        return h
