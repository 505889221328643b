"""Tests of the eager PyTorch reference of displaced patch parallelism (`trt_distri.reference`)."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor

from trt_distri.errors import ConfigError
from trt_distri.export.plan import make_plan
from trt_distri.models import TEXT_EMBEDS_DIM, UNET_CONFIGS, random_unet
from oracles.reference import GN_MODES, PatchReference, combine_stats


def rel_err(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@functools.lru_cache(maxsize=None)
def unet(name: str) -> torch.nn.Module:
    return random_unet(name)


def inputs(name: str, h: int, w: int, batch: int = 1, seed: int = 1) -> tuple:
    """(sample, timestep, encoder_hidden_states, added_cond_kwargs) for a latent of h x w."""
    g = torch.Generator().manual_seed(seed)
    cfg = UNET_CONFIGS[name]
    sample = torch.randn(batch, 4, h, w, generator=g)
    enc = torch.randn(batch, 7, cfg["cross_attention_dim"], generator=g)
    added = None
    if name in TEXT_EMBEDS_DIM:
        added = {"text_embeds": torch.randn(batch, TEXT_EMBEDS_DIM[name], generator=g),
                 "time_ids": torch.tensor([[h * 8.0, w * 8.0, 0.0, 0.0, h * 8.0, w * 8.0]] * batch)}
    return sample, torch.tensor(421.0), enc, added


def full_output(name: str, args: tuple) -> Tensor:
    sample, t, enc, added = args
    with torch.no_grad():
        return unet(name)(sample, t, enc, added_cond_kwargs=added).sample


def reference(name: str, h: int, w: int, n: int, gn_mode: str = "corrected-async") -> PatchReference:
    return PatchReference(unet(name), make_plan(unet(name).config, h * 8, w * 8, n), gn_mode)


CASES = [("tiny-sd", 16, 16, 1), ("tiny-sd", 16, 16, 2), ("tiny-sd", 16, 16, 4),
         ("tiny-sdxl", 16, 16, 2), ("tiny-sdxl", 16, 16, 4)]


@pytest.mark.parametrize("name,h,w,n", CASES)
def test_async_after_sync_with_same_inputs_is_exact(name: str, h: int, w: int, n: int) -> None:
    args = inputs(name, h, w)
    expected = full_output(name, args)
    for mode in GN_MODES:
        ref = reference(name, h, w, n, mode)
        ref(*args, sync=True)
        err = rel_err(ref(*args, sync=False), expected)
        if mode == "separate" and n > 1:
            assert err > 1e-4, "separate GroupNorm must differ from the full image"
        else:
            assert err <= 1e-5, (mode, err)


@pytest.mark.parametrize("name,h,w,n", CASES)
def test_sync_call_is_the_full_unet(name: str, h: int, w: int, n: int) -> None:
    args = inputs(name, h, w)
    out = reference(name, h, w, n)(*args, sync=True)
    assert rel_err(out, full_output(name, args)) <= 1e-6


@pytest.mark.parametrize("name,h,w,n", CASES[1:])
def test_fresh_values_of_sync_and_async_paths_agree(name: str, h: int, w: int, n: int) -> None:
    args = inputs(name, h, w)
    ref = reference(name, h, w, n)
    ref(*args, sync=True)
    captured = ref.fresh
    ref(*args, sync=False)
    for rank, (want, got) in enumerate(zip(captured, ref.fresh)):
        assert want.keys() == got.keys()
        for entry, value in want.items():
            assert got[entry].shape == value.shape, entry
            assert rel_err(got[entry], value) <= 1e-5 or value.norm() == 0, (rank, entry)


def test_entry_names_and_shapes() -> None:
    ref = reference("tiny-sdxl", 16, 16, 2)
    ref(*inputs("tiny-sdxl", 16, 16, batch=2), sync=True)
    fresh = ref.fresh[0]
    assert fresh["halo.conv_in.top"].shape == (2, 4, 1, 16)
    assert fresh["halo.conv_in.bottom"].shape == (2, 4, 1, 16)
    assert fresh["halo.down_blocks.0.downsamplers.0.conv.bottom"].shape == (2, 16, 1, 16)
    assert "halo.down_blocks.0.downsamplers.0.conv.top" not in fresh
    assert fresh["halo.up_blocks.0.upsamplers.0.conv.top"].shape == (2, 64, 1, 8)
    assert fresh["kv.down_blocks.1.attentions.0.transformer_blocks.0.attn1"].shape == (2, 2, 32, 32)
    assert fresh["gn.down_blocks.1.attentions.0.norm"].shape == (2, 2, 8)
    assert fresh["gn.conv_norm_out"].dtype == torch.float32
    assert not any("attn2" in k for k in fresh)
    assert not any("conv_shortcut" in k for k in fresh)


@pytest.mark.parametrize("name,n", [("tiny-sd", 2), ("tiny-sdxl", 4)])
def test_non_square_batch_two(name: str, n: int) -> None:
    h, w = 32, 48
    args = inputs(name, h, w, batch=2)
    expected = full_output(name, args)
    ref = reference(name, h, w, n)
    assert rel_err(ref(*args, sync=True), expected) <= 1e-6
    assert rel_err(ref(*args, sync=False), expected) <= 1e-5
    other = inputs(name, h, w, batch=2, seed=2)
    drift = rel_err(ref(*other, sync=False), full_output(name, other))
    assert 0 < drift < 1.0  # stale activations: close to, but not, the full image


def test_async_before_sync_is_an_error() -> None:
    ref = reference("tiny-sd", 16, 16, 2)
    with pytest.raises(ConfigError, match="sync=True"):
        ref(*inputs("tiny-sd", 16, 16), sync=False)


def test_bad_mode_and_size_are_errors() -> None:
    with pytest.raises(ConfigError, match="GroupNorm mode"):
        reference("tiny-sd", 16, 16, 2, "bogus")
    with pytest.raises(ConfigError, match="latent size"):
        reference("tiny-sd", 16, 16, 2)(*inputs("tiny-sd", 32, 16), sync=True)


def test_combine_stats_matches_sync_when_stale_is_fresh() -> None:
    fresh = torch.stack([torch.stack([m, m * m + v]) for m, v in
                         [(torch.randn(2, 4), torch.rand(2, 4)) for _ in range(3)]])
    want_mean, want_var = combine_stats(fresh, None, "sync")
    for mode in ("corrected-async", "stale"):
        mean, var = combine_stats(fresh, fresh.clone(), mode)
        assert torch.allclose(mean, want_mean, atol=1e-6) and torch.allclose(var, want_var, atol=1e-6)


def test_unet_is_restored_after_a_call() -> None:
    ref = reference("tiny-sd", 16, 16, 2)
    args = inputs("tiny-sd", 16, 16)
    ref(*args, sync=True)
    ref(*args, sync=False)
    assert "forward" not in ref.unet.conv_in.__dict__
    assert all(type(a.processor).__name__ == "AttnProcessor2_0" for a in ref.attns.values())
