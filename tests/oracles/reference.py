"""Independent eager-PyTorch reference of DistriFusion displaced patch parallelism on a diffusers UNet.

This is what the ONNX export is checked against, so it shares no code with `trt_distri.export` beyond the
`PatchPlan`. It runs the diffusers model's own modules and follows docs/design.md:

- every `nn.Conv2d` whose kernel is taller than one row reads halo rows from its neighbours
  (`halo.<conv>.top` / `halo.<conv>.bottom`);
- every self-attention (`Attention` that is not cross-attention) attends to its own fresh keys/values and the
  other ranks' stale ones (`kv.<attn>`);
- every `nn.GroupNorm` combines per-rank group statistics by `gn_mode` (`gn.<norm>`).

Halo rows: a conv with padding `a` (rows) and stride `s` needs `a` rows above its patch and
`b = kernel - a - s` rows below it. Rank r-1 therefore sends its *last a* rows (`.bottom`) and rank r+1 its
*first b* rows (`.top`); an entry with zero rows is not written (stride-2 downsamplers have no `.top`).

The ranks of an asynchronous call run together, folded into the batch dimension (rank-major: batch chunk r is
rank r's patch). Nothing in the UNet mixes batch items, and the patch-aware modules unfold the chunks, so this
is the same computation as one UNet per rank, while a `sync` GroupNorm can still read this step's statistics of
every rank.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trt_distri.errors import ConfigError, UnsupportedModelError
from trt_distri.export.plan import PatchPlan

GN_MODES = ("corrected-async", "stale", "separate", "sync")

Store = list[dict[str, Tensor]]


@dataclass
class _Context:
    """State of one call: `full` (one image, capture) or `patch` (n patches folded into the batch)."""

    mode: str
    n: int
    fresh: Store = field(default_factory=list)
    stale: Store | None = None


def halo_rows(conv: nn.Conv2d) -> tuple[int, int]:
    """(rows needed above the patch, rows needed below it) of a conv = (padding, kernel - padding - stride)."""
    a = conv.padding[0]
    return a, conv.kernel_size[0] - a - conv.stride[0]


def group_stats(x: Tensor, groups: int) -> Tensor:
    """fp32 stack([E[x], E[x^2]]) over each group of x (B, C, ...): shape (2, B, G)."""
    g = x.float().reshape(x.shape[0], groups, -1)
    return torch.stack([g.mean(-1), (g * g).mean(-1)])


def combine_stats(fresh: Tensor, stale: Tensor | None, mode: str) -> tuple[Tensor, Tensor]:
    """Per-rank (mean, biased variance), each (n, B, G), from fresh and stale stats of shape (n, 2, B, G)."""
    n = fresh.shape[0]
    if mode == "sync":
        stats = fresh.mean(0, keepdim=True).expand_as(fresh)
    elif mode == "separate":
        stats = fresh
    elif mode == "stale":
        stats = (fresh - stale + stale.sum(0, keepdim=True)) / n
    else:  # corrected-async
        stats = stale.mean(0, keepdim=True) + (fresh - stale)
    mean, var = stats[:, 0], stats[:, 1] - stats[:, 0] ** 2
    if mode == "corrected-async":
        local_var = fresh[:, 1] - fresh[:, 0] ** 2
        var = torch.where(var < 0, local_var, var)
    return mean, var


def _per_rank(x: Tensor, n: int, dim: int) -> list[Tensor]:
    """Split x into the n equal ranges of `dim` that the ranks own."""
    if x.shape[dim] % n:
        raise ConfigError(f"size {x.shape[dim]} of dim {dim} does not split into {n} patches")
    return list(x.chunk(n, dim))


class _SelfAttnProcessor:
    """Processor of a self-attention: default behaviour (plus K/V capture) in full mode, displaced in patch mode."""

    def __init__(self, ref: "PatchReference", name: str, original: Any) -> None:
        self.ref, self.name, self.original = ref, name, original

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args: Any,
                 **kwargs: Any) -> Tensor:
        ctx = self.ref._ctx
        if ctx is None or ctx.mode == "full":
            if ctx is not None:  # capture: the default processor computes the same to_k/to_v of hidden_states
                self._capture(ctx, attn.to_k(hidden_states), attn.to_v(hidden_states))
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise UnsupportedModelError(
                f"self-attention {self.name} got an attention mask, context or 4-D input. Note: patch parallelism "
                f"supports plain (B, L, C) self-attention")
        return self._patch(ctx, attn, hidden_states)

    def _capture(self, ctx: _Context, key: Tensor, value: Tensor) -> None:
        for r, (k, v) in enumerate(zip(_per_rank(key, ctx.n, 1), _per_rank(value, ctx.n, 1))):
            ctx.fresh[r][f"kv.{self.name}"] = torch.stack([k, v])

    def _gather_kv(self, ctx: _Context, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """Keys/values of every rank: own fresh in its slot, the others' stale ones, concatenated by sequence."""
        entry, ks, vs = f"kv.{self.name}", [], []
        own = [torch.stack([k, v]) for k, v in zip(key.chunk(ctx.n), value.chunk(ctx.n))]
        for r in range(ctx.n):
            ctx.fresh[r][entry] = own[r]
            kv = torch.cat([own[r] if j == r else ctx.stale[j][entry] for j in range(ctx.n)], dim=2)
            ks.append(kv[0])
            vs.append(kv[1])
        return torch.cat(ks), torch.cat(vs)

    def _patch(self, ctx: _Context, attn: nn.Module, hidden_states: Tensor) -> Tensor:
        """AttnProcessor2_0 math (diffusers 0.42.1) with keys/values gathered over the ranks."""
        batch = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key, value = self._gather_kv(ctx, attn.to_k(hidden_states), attn.to_v(hidden_states))
        head_dim = key.shape[-1] // attn.heads
        q, k, v = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class PatchReference:
    """DistriFusion displaced patch parallelism of a diffusers UNet2DConditionModel, in eager PyTorch.

    `fresh[r]` holds rank r's fresh exchange values of the last call, keyed by entry name; they are the stale
    values of the next asynchronous call.
    """

    def __init__(self, unet: nn.Module, plan: PatchPlan, gn_mode: str = "corrected-async") -> None:
        if gn_mode not in GN_MODES:
            raise ConfigError(f"unknown GroupNorm mode {gn_mode!r}. Note: expected one of {list(GN_MODES)}")
        self.unet, self.plan, self.gn_mode = unet, plan, gn_mode
        self.convs = {k: m for k, m in unet.named_modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1}
        self.norms = {k: m for k, m in unet.named_modules() if isinstance(m, nn.GroupNorm)}
        self.attns = {k: m for k, m in unet.named_modules()
                      if hasattr(m, "set_processor") and hasattr(m, "to_k") and not m.is_cross_attention}
        self._check_supported()
        self.fresh: Store = []
        self._stale: Store | None = None
        self._ctx: _Context | None = None

    def _check_supported(self) -> None:
        for name, conv in self.convs.items():
            if conv.padding_mode != "zeros" or conv.dilation != (1, 1) or isinstance(conv.padding, str):
                raise UnsupportedModelError(f"conv {name} uses padding mode {conv.padding_mode!r}, dilation "
                                            f"{conv.dilation} or padding {conv.padding!r}. Note: expected zero "
                                            f"padding by numbers and dilation 1")
            if min(halo_rows(conv)) < 0:
                raise UnsupportedModelError(f"conv {name} has kernel {conv.kernel_size}, stride {conv.stride} and "
                                            f"padding {conv.padding}: it needs a negative number of halo rows")
        for name, attn in self.attns.items():
            if any(getattr(attn, a, None) is not None for a in ("spatial_norm", "group_norm", "norm_q", "norm_k")):
                raise UnsupportedModelError(f"self-attention {name} uses a spatial/group/q/k norm. Note: "
                                            f"patch parallelism supports the plain SD attention")

    @torch.no_grad()
    def __call__(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
                 added_cond_kwargs: dict[str, Tensor] | None = None, *, sync: bool) -> Tensor:
        """sample: full latent (B, 4, h, w). Returns the full noise prediction: the patches joined by rows."""
        self._check_sample(sample)
        if not sync and self._stale is None:
            raise ConfigError("an asynchronous (sync=False) call needs the stale values of an earlier call. "
                              "Fix: make the first call (warm-up step) with sync=True")
        n = self.plan.devices
        ctx = _Context("full" if sync else "patch", n, [{} for _ in range(n)], self._stale)
        with self._installed(ctx):
            if sync:
                out = self._run(sample, timestep, encoder_hidden_states, added_cond_kwargs)
            else:
                out = self._run_patches(sample, timestep, encoder_hidden_states, added_cond_kwargs)
        self.fresh = ctx.fresh
        self._stale = ctx.fresh
        return out

    def _check_sample(self, sample: Tensor) -> None:
        expected = (self.plan.latent_height, self.plan.latent_width)
        if tuple(sample.shape[-2:]) != expected:
            raise ConfigError(f"latent size does not match the plan. Note: expected {expected}, "
                              f"got {tuple(sample.shape[-2:])}")

    def _run(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
             added_cond_kwargs: dict[str, Tensor] | None) -> Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, added_cond_kwargs=added_cond_kwargs,
                         return_dict=False)[0]

    def _run_patches(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
                     added_cond_kwargs: dict[str, Tensor] | None) -> Tensor:
        """Every rank's patch, folded rank-major into the batch; the conditioning is repeated per rank."""
        n = self.plan.devices
        patches = torch.cat(_per_rank(sample, n, 2))
        t = torch.as_tensor(timestep, device=sample.device)
        t = t if t.numel() == 1 else t.reshape(-1).repeat(n)
        rep = functools.partial(_repeat_batch, n=n)
        added = None if added_cond_kwargs is None else {k: rep(v) for k, v in added_cond_kwargs.items()}
        out = self._run(patches, t, rep(encoder_hidden_states), added)
        return torch.cat(out.chunk(n), dim=2)

    @contextlib.contextmanager
    def _installed(self, ctx: _Context) -> Iterator[None]:
        """Dispatch the convs, norms and self-attentions on `ctx` for the duration of one call."""
        originals = {name: attn.processor for name, attn in self.attns.items()}
        try:
            self._ctx = ctx
            for name, conv in self.convs.items():
                conv.forward = functools.partial(self._conv_forward, name, conv)
            for name, norm in self.norms.items():
                norm.forward = functools.partial(self._norm_forward, name, norm)
            for name, attn in self.attns.items():
                attn.set_processor(_SelfAttnProcessor(self, name, originals[name]))
            yield
        finally:
            self._ctx = None
            for module in [*self.convs.values(), *self.norms.values()]:
                module.__dict__.pop("forward", None)
            for name, attn in self.attns.items():
                attn.set_processor(originals[name])

    # --- Conv2d -------------------------------------------------------------------------------------------------

    def _record_halos(self, ctx: _Context, name: str, conv: nn.Conv2d, local: list[Tensor]) -> None:
        a, b = halo_rows(conv)
        for r, x in enumerate(local):
            if b:
                ctx.fresh[r][f"halo.{name}.top"] = x[:, :, :b].clone()
            if a:
                ctx.fresh[r][f"halo.{name}.bottom"] = x[:, :, x.shape[2] - a:].clone()

    def _conv_forward(self, name: str, conv: nn.Conv2d, x: Tensor) -> Tensor:
        ctx = self._ctx
        if ctx.mode == "full":
            self._record_halos(ctx, name, conv, _per_rank(x, ctx.n, 2))
            return type(conv).forward(conv, x)
        local = x.chunk(ctx.n)
        self._record_halos(ctx, name, conv, local)
        source = ctx.fresh if name == "conv_in" else ctx.stale  # the latent's halo is always this step's
        padded = torch.cat([self._with_halo(source, name, conv, r, xr) for r, xr in enumerate(local)])
        return F.conv2d(padded, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation,
                        conv.groups)

    def _with_halo(self, source: Store, name: str, conv: nn.Conv2d, rank: int, x: Tensor) -> Tensor:
        """cat(rank-1's `.bottom` (zeros for rank 0), x, rank+1's `.top` (zeros for the last rank)) by rows."""
        a, b = halo_rows(conv)
        above = source[rank - 1][f"halo.{name}.bottom"] if rank > 0 and a else _zero_rows(x, a)
        below = source[rank + 1][f"halo.{name}.top"] if rank < len(source) - 1 and b else _zero_rows(x, b)
        return torch.cat([above, x, below], dim=2)

    # --- GroupNorm ----------------------------------------------------------------------------------------------

    def _norm_forward(self, name: str, norm: nn.GroupNorm, x: Tensor) -> Tensor:
        ctx = self._ctx
        entry = f"gn.{name}"
        if ctx.mode == "full":
            for r, xr in enumerate(_per_rank(x, ctx.n, 2)):
                ctx.fresh[r][entry] = group_stats(xr, norm.num_groups)
            return type(norm).forward(norm, x)
        local = x.chunk(ctx.n)
        fresh = torch.stack([group_stats(xr, norm.num_groups) for xr in local])
        for r in range(ctx.n):
            ctx.fresh[r][entry] = fresh[r]
        stale = None if self.gn_mode in ("sync", "separate") else torch.stack([s[entry] for s in ctx.stale])
        mean, var = combine_stats(fresh, stale, self.gn_mode)
        return _normalize(x, norm, mean, var)


def _normalize(x: Tensor, norm: nn.GroupNorm, mean: Tensor, var: Tensor) -> Tensor:
    """GroupNorm of x (n*B, C, ...) in fp32 with per-rank group statistics mean/var of shape (n, B, G)."""
    n, batch, groups = mean.shape
    g = x.float().reshape(n, batch, groups, -1)
    y = (g - mean[..., None]) / torch.sqrt(var[..., None] + norm.eps)
    y = y.reshape(x.shape)
    if norm.affine:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        y = y * norm.weight.float().reshape(shape) + norm.bias.float().reshape(shape)
    return y.to(x.dtype)


def _zero_rows(x: Tensor, rows: int) -> Tensor:
    """`rows` rows of zeros shaped like x (B, C, h, W): the halo of a border rank."""
    return x.new_zeros(x.shape[0], x.shape[1], rows, x.shape[3])


def _repeat_batch(x: Tensor, n: int) -> Tensor:
    """x repeated n times along the batch dim (rank-major)."""
    return x.repeat(n, *([1] * (x.ndim - 1)))
