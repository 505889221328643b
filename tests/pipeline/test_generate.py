"""Prompt to image on the CPU: PNG with 1 and 2 ranks, equality with diffusers' own pipeline, determinism."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trt_distri.cli import main
from trt_distri.png import read_png

PROMPT = "a red fox in the snow"


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def diffusers_image(folder, steps: int, seed: int, negative: str | None = None) -> np.ndarray:
    """The same saved pipeline run by diffusers itself (DDIM from its scheduler config, as trt-distri makes it)."""
    import torch

    from oracles.diffusers_schedule import make_scheduler
    from trt_distri.pipeline_models import load_pipeline

    pipe = load_pipeline(folder)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(PROMPT, negative_prompt=negative, num_inference_steps=steps, guidance_scale=5.0, height=128,
               width=128, generator=torch.Generator().manual_seed(seed), output_type="np")
    return (out.images[0] * 255).round().astype(np.uint8)


@pytest.mark.parametrize("ranks", [1, 2])
def test_cli_writes_a_png(workdir, tmp_path, capsys, ranks):
    out = tmp_path / "image.png"
    argv = ["run", str(workdir("tiny-sdxl", ranks)), "--prompt", PROMPT, "--device", "cpu", "--steps", "3",
            "--warmup-steps", "1", "-o", str(out)]
    assert main(argv) == 0
    image = read_png(out.read_bytes())
    assert image.shape == (128, 128, 3) and image.std() > 1  # not a constant image
    err = capsys.readouterr().err
    assert "denoise [" in err and f"on {ranks} CPU rank(s)" in err and "GN corrected-async" in err


@pytest.mark.parametrize("name, ranks", [("tiny-sdxl", 1), ("tiny-sdxl", 2), ("tiny-sd", 1)])
def test_synchronous_image_equals_diffusers(workdir, saved_pipeline, name, ranks):
    from trt_distri.pipeline import generate_image

    steps = 4
    ours = generate_image(workdir(name, ranks), PROMPT, steps=steps, warmup_steps=steps, seed=3, device="cpu")
    reference = diffusers_image(saved_pipeline(name), steps, seed=3)
    assert ours.image.shape == reference.shape
    assert psnr_uint8(ours.image, reference) >= 40.0


def test_negative_prompt_equals_diffusers(workdir, saved_pipeline):
    from trt_distri.pipeline import generate_image

    ours = generate_image(workdir("tiny-sd"), PROMPT, negative_prompt="blurry", steps=3, warmup_steps=3, seed=1,
                          device="cpu")
    assert psnr_uint8(ours.image, diffusers_image(saved_pipeline("tiny-sd"), 3, 1, negative="blurry")) >= 40.0


def test_same_seed_same_image(workdir):
    from trt_distri.pipeline import generate_image

    run = lambda seed: generate_image(workdir("tiny-sdxl"), PROMPT, steps=2, seed=seed, device="cpu")  # noqa: E731
    first, again, other = run(5), run(5), run(6)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.latents, again.latents)
    assert not np.array_equal(first.image, other.image)


def test_latent_output_is_npy(workdir, tmp_path):
    out = tmp_path / "z.npy"
    assert main(["run", str(workdir("tiny-sdxl")), "--prompt", PROMPT, "--device", "cpu", "--steps", "2",
                 "--output-type", "latent", "-o", str(out)]) == 0
    assert np.load(out).shape == (1, 4, 16, 16)


def test_encoders_and_vae_load_as_transient_sessions(workdir, monkeypatch):
    """The text encoders and the VAE run in the main process beside rank 0's UNet process on the first GPU: they
    must not keep device memory in the process-wide ONNX Runtime arena once they are dropped. The backend class is
    patched, so every load is seen whichever module holds a reference to the backend or its registry."""
    from trt_distri.engines.onnxruntime_backend import OnnxRuntimeBackend
    from trt_distri.pipeline import generate_image

    real, loads = OnnxRuntimeBackend.load, []

    def recording(self, path, options):
        loads.append((Path(path).name, options.transient))
        return real(self, path, options)

    monkeypatch.setattr(OnnxRuntimeBackend, "load", recording)
    generate_image(workdir("tiny-sdxl"), "a fox", steps=2, seed=0)
    transient = {name for name, flag in loads if flag}
    assert transient == {"text_encoder.onnx", "text_encoder_2.onnx", "vae_decoder.onnx"}, loads
    unet = [flag for name, flag in loads if name.startswith(("warmup.", "steady.", "step."))]
    assert unet and not any(unet), loads  # the UNet segments (run_local loads them each time) share the arena


@pytest.mark.parametrize("keep", [True, False])
def test_generator_keeps_encoders_and_vae_loaded(workdir, monkeypatch, keep):
    """The API loads the text encoders and the VAE once and keeps them to close() (keep_parts_loaded, the
    default); without it, each image loads them again. The images are the same either way."""
    from trt_distri import pipeline, prompt
    from trt_distri.api import Generator

    loads = []
    for module, name in ((prompt, "PromptEncoder"), (pipeline, "VaeDecoder")):
        cls = getattr(module, name)
        monkeypatch.setattr(module, name, type(name, (cls,), {"__init__": lambda self, *a, _cls=cls, **k: (
            loads.append(_cls.__name__), _cls.__init__(self, *a, **k))[1]}))
    with Generator(workdir("tiny-sdxl"), device="cpu", keep_parts_loaded=keep) as generator:
        first, second = (generator.generate("a fox", steps=2, seed=3).image for _ in range(2))
    assert sorted(loads) == sorted(["PromptEncoder", "VaeDecoder"] * (1 if keep else 2))
    np.testing.assert_array_equal(first, second)


def test_initial_latents_replace_the_seeded_noise(workdir):
    """latents= (diffusers' meaning: the unscaled initial noise) drawn as seed 5 draws it gives seed 5's image, from a
    prompt and from embeddings alike."""
    from trt_distri.api import Generator
    from trt_distri.noise import randn
    from trt_distri.prompt import PromptEncoder

    with Generator(workdir("tiny-sd"), device="cpu") as g:
        i = g.info
        noise = randn((1, i.latent_channels, i.latent_height, i.latent_width), 5)
        seeded = g.generate(PROMPT, steps=2, seed=5)
        given = g.generate(PROMPT, steps=2, seed=0, latents=noise[0])  # (C, h, w) gets its batch of 1
        emb = PromptEncoder(g.workdir, g.manifest).encode(PROMPT)
        from_embeddings = g.generate_from_embeddings(emb.cond, emb.uncond, steps=2, latents=noise)
    assert np.array_equal(given.latents, seeded.latents) and np.array_equal(given.image, seeded.image)
    assert np.array_equal(from_embeddings.latents, seeded.latents)


@pytest.mark.parametrize("latents, message", [
    (np.zeros((1, 4, 16, 15), np.float32), r"wrong shape. Note: expected \(1, 4, 16, 16\)"),
    (np.zeros((1, 4, 16, 16), np.int32), "must be floating point"),
    (np.full((1, 4, 16, 16), np.nan, np.float32), "NaN or infinity"),
])
def test_bad_initial_latents_are_refused(workdir, latents, message):
    from trt_distri.api import Generator, InvalidArgumentError

    with Generator(workdir("tiny-sd"), device="cpu") as g, pytest.raises(InvalidArgumentError, match=message):
        g.generate(PROMPT, steps=1, latents=latents)
