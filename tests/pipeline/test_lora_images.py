"""LoRA adapters on every rank (docs/lora.md), on the CPU with the tiny SDXL pipeline: `trt-distri run --lora`
equals diffusers with the same LoRA fused, for 1 and 2 ranks; two adapters with scales equal diffusers' weighted
mix; clearing gives the base image bit for bit; the API switches adapters on loaded ranks."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from trt_distri.cli import main
from trt_distri.engines.build import build_workdir
from trt_distri.png import read_png

sys.path.insert(0, str(Path(__file__).parent))
from lora_helpers import PROMPT, diffusers_lora_image, make_lora, psnr_uint8  # noqa: E402

STEPS = 4


@pytest.fixture(scope="module")
def built(workdir):
    """ranks -> the tiny SDXL work directory with ONNX Runtime engines (LoRA writes their shared weights)."""
    done = {}

    def get(ranks: int) -> Path:
        if ranks not in done:
            build_workdir(workdir("tiny-sdxl", ranks), "ort")
            done[ranks] = workdir("tiny-sdxl", ranks)
        return done[ranks]

    return get


@pytest.fixture(scope="module")
def loras(saved_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    folder = saved_pipeline("tiny-sdxl")
    return [make_lora(folder, root / "a.safetensors", seed=1), make_lora(folder, root / "b.safetensors", seed=2,
                                                                          rank=2, alpha=2.0, strength=0.6)]


def _cli_image(workdir: Path, out: Path, *extra: str) -> "np.ndarray":  # noqa: F821
    argv = ["run", str(workdir), "--prompt", PROMPT, "--device", "cpu", "--steps", str(STEPS), "--warmup-steps",
            str(STEPS), "--seed", "3", "-o", str(out), "--overwrite", *extra]
    assert main(argv) == 0
    return read_png(out.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_cli_lora_equals_diffusers_fused(built, loras, saved_pipeline, tmp_path, ranks):
    ours = _cli_image(built(ranks), tmp_path / "lora.png", "--lora", f"{loras[0]}:0.8")
    reference = diffusers_lora_image(saved_pipeline("tiny-sdxl"), [(loras[0], 0.8)], STEPS, seed=3)
    base = diffusers_lora_image(saved_pipeline("tiny-sdxl"), [], STEPS, seed=3)
    assert psnr_uint8(reference, base) < 30.0  # the LoRA changes the image visibly
    assert psnr_uint8(ours, reference) >= 40.0


@pytest.mark.slow
def test_two_adapters_equal_diffusers_weighted_mix(built, loras, saved_pipeline, tmp_path):
    mix = [(loras[0], 0.7), (loras[1], -0.8)]
    ours = _cli_image(built(1), tmp_path / "mix.png", *[a for p, s in mix for a in ("--lora", f"{p}:{s}")])
    reference = diffusers_lora_image(saved_pipeline("tiny-sdxl"), mix, STEPS, seed=3)
    single = diffusers_lora_image(saved_pipeline("tiny-sdxl"), mix[:1], STEPS, seed=3)
    assert psnr_uint8(reference, single) < 35.0  # the second adapter matters
    assert psnr_uint8(ours, reference) >= 40.0


@pytest.mark.slow
def test_generator_switches_and_clears_bit_for_bit(built, loras, saved_pipeline):
    from trt_distri.api import Generator

    args = dict(steps=STEPS, warmup_steps=STEPS, seed=3)
    with Generator(built(2), device="cpu") as gen:
        base = gen.generate(PROMPT, **args).image
        gen.set_loras([(loras[1], 1.0)])
        gen.set_loras([(loras[0], 0.8)])  # a switch: the first adapter's weights go back to the base
        switched = gen.generate(PROMPT, **args).image
        gen.clear_loras()
        cleared = gen.generate(PROMPT, **args).image
    reference = diffusers_lora_image(saved_pipeline("tiny-sdxl"), [(loras[0], 0.8)], STEPS, seed=3)
    assert psnr_uint8(switched, reference) >= 40.0
    assert (cleared == base).all()
