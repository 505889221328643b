"""DistriPipeline (trt_distri.diffusers_pipeline): called like diffusers, it gives the CLI's and diffusers' images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_generate import PROMPT, diffusers_image, psnr_uint8
from trt_distri import DistriPipeline
from trt_distri.api import InvalidArgumentError
from trt_distri.pipeline import generate_image

STEPS = 3


@pytest.fixture(scope="module")
def pipe(workdir):
    with DistriPipeline.from_workdir(workdir("tiny-sdxl"), device="cpu") as p:
        yield p


def test_output_types_equal_the_cli_path(pipe, workdir):
    ref = generate_image(workdir("tiny-sdxl"), PROMPT, "blurry", STEPS, 5.0, 11, device="cpu")
    kwargs = dict(negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=5.0, seed=11)
    images = pipe(PROMPT, output_type="np", **kwargs).images
    assert images.shape == (1, 128, 128, 3) and images.dtype == np.float32
    np.testing.assert_array_equal((images[0] * 255).round().astype(np.uint8), ref.image)
    pil = pipe(PROMPT, **kwargs).images
    assert len(pil) == 1 and pil[0].size == (128, 128)
    np.testing.assert_array_equal(np.asarray(pil[0]), ref.image)
    np.testing.assert_array_equal(pipe(PROMPT, output_type="latent", **kwargs).images, ref.latents)


def test_a_seeded_torch_generator_gives_diffusers_image(pipe, saved_pipeline):
    """The one-line switch: the same call as diffusers' (all steps synchronous) gives diffusers' image."""
    out = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=5.0, height=128, width=128,
               generator=torch.Generator().manual_seed(3), warmup_steps=STEPS, output_type="np")
    ours = (out.images[0] * 255).round().astype(np.uint8)
    assert psnr_uint8(ours, diffusers_image(saved_pipeline("tiny-sdxl"), STEPS, 3)) >= 40


def test_prompt_lists_and_images_per_prompt_follow_seeds(pipe):
    out = pipe(["a", "b"], num_inference_steps=2, num_images_per_prompt=2, seed=5, output_type="latent").images
    assert out.shape[0] == 4
    for i, prompt in enumerate(["a", "a", "b", "b"]):
        one = pipe(prompt, num_inference_steps=2, seed=5 + i, output_type="latent").images
        np.testing.assert_array_equal(out[i:i + 1], one)


def test_used_generator_and_latents(pipe):
    g = torch.Generator().manual_seed(4)
    torch.randn(8, generator=g)  # no longer fresh
    info = pipe.generator.info
    shape = (1, info.latent_channels, info.latent_height, info.latent_width)
    expected = torch.randn(shape, generator=torch.Generator().manual_seed(4).set_state(g.get_state()))
    by_gen = pipe(PROMPT, num_inference_steps=2, generator=g, output_type="latent").images
    by_latents = pipe(PROMPT, num_inference_steps=2, latents=expected, output_type="latent").images
    np.testing.assert_array_equal(by_gen, by_latents)


def test_bad_calls_raise_the_api_errors(pipe):
    with pytest.raises(InvalidArgumentError, match="invalid size"):
        pipe(PROMPT, num_inference_steps=2, height=256)
    with pytest.raises(InvalidArgumentError, match="given twice"):
        pipe(PROMPT, seed=1, generator=torch.Generator().manual_seed(1))
    with pytest.raises(InvalidArgumentError, match="output_type"):
        pipe(PROMPT, output_type="pt")
    with pytest.raises(InvalidArgumentError, match="negative prompt"):
        pipe(["a", "b"], negative_prompt=["x"])
