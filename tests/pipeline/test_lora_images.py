"""LoRA adapters on every rank and on the text encoders (docs/lora.md), on the CPU with the tiny SDXL pipeline:
`trt-distri run --lora` equals diffusers with the same LoRA (UNet and both text encoders) fused, for 1 and 2 ranks;
two adapters with scales equal diffusers' weighted mix; clearing gives the base image bit for bit; the API switches
adapters on loaded ranks; a kohya SDXL file (original SGM names) equals the diffusers-format file; a work directory
exported before text-encoder weights were named refuses text-encoder layers in one line."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from trt_distri.cli import main
from trt_distri.engines.build import build_workdir
from trt_distri.png import read_png

sys.path.insert(0, str(Path(__file__).parent))
from lora_helpers import (PROMPT, TEXT_ENCODERS, diffusers_lora_image, make_lora, psnr_uint8,  # noqa: E402
                          to_kohya_sgm)

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
    return [make_lora(folder, root / "a.safetensors", seed=1, text_encoders=TEXT_ENCODERS, text_strength=2.0),
            make_lora(folder, root / "b.safetensors", seed=2, rank=2, alpha=2.0, strength=0.6,
                      text_encoders=("text_encoder_2",))]


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
    unet_only = diffusers_lora_image(saved_pipeline("tiny-sdxl"), [(loras[0], 0.8)], STEPS, seed=3,
                                     components=("unet",))
    assert psnr_uint8(reference, base) < 30.0  # the LoRA changes the image visibly
    assert psnr_uint8(reference, unet_only) < 32.0  # and its text-encoder layers matter
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


@pytest.mark.slow
def test_kohya_sgm_file_equals_the_diffusers_format(built, loras, saved_pipeline, tmp_path):
    """kohya's SDXL names (lora_unet_input_blocks_4_1_..., lora_te1_text_model_...) give the same updates as the
    diffusers/PEFT file they were renamed from, layer by layer, and the same image, which is also diffusers' image
    with the kohya file (diffusers converts the SGM names itself: the test's renaming is the real format)."""
    from trt_distri.engines.lora_apply import load_adapters
    from trt_distri.manifest import Manifest

    sgm = to_kohya_sgm(loras[0], tmp_path / "sgm.safetensors")
    manifest = Manifest.load(built(1))
    (peft, _), (kohya, _) = load_adapters(manifest, "ort", [(loras[0], 1.0), (sgm, 1.0)])
    assert kohya.format == "kohya" and set(kohya.layers) == set(peft.layers)
    assert {k: set(v) for k, v in kohya.text_layers.items()} == {k: set(v) for k, v in peft.text_layers.items()}
    pairs = [(kohya.layers, peft.layers)] + [(kohya.text_layers[k], peft.text_layers[k]) for k in peft.text_layers]
    for ours, theirs in pairs:
        for name, low in theirs.items():
            assert ours[name].scale == low.scale
            np.testing.assert_array_equal(ours[name].down, low.down)
            np.testing.assert_array_equal(ours[name].up, low.up)
    a = _cli_image(built(1), tmp_path / "peft.png", "--lora", f"{loras[0]}:0.8")
    b = _cli_image(built(1), tmp_path / "sgm.png", "--lora", f"{sgm}:0.8")
    assert (a == b).all()
    assert psnr_uint8(b, diffusers_lora_image(saved_pipeline("tiny-sdxl"), [(sgm, 0.8)], STEPS, seed=3)) >= 40.0


@pytest.mark.slow
def test_text_layers_on_an_old_export_ask_for_a_new_one(built, loras, tmp_path, capsys):
    """A work directory exported before text-encoder weights were named (no `weights` in its text encoders):
    text-encoder layers fail in one line saying to export again, before anything runs."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(built(1), old)
    data = json.loads((old / "manifest.json").read_text())
    for encoder in data["text_encoders"]:
        del encoder["weights"]
    (old / "manifest.json").write_text(json.dumps(data))
    argv = ["run", str(old), "--prompt", PROMPT, "--device", "cpu", "--steps", "1", "--warmup-steps", "1",
            "-o", str(tmp_path / "x.png"), "--lora", str(loras[0])]
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "text_encoder" in lines[0] and "export it again" in lines[0]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.gpu
def test_text_encoder_lora_on_a_gpu(built, loras):
    """The text encoders on GPU 0 (ONNX Runtime CUDA, weights in a device store) take the LoRA as on the CPU, and
    clearing it gives the base embeddings bit for bit."""
    from trt_distri.engines.lora_apply import load_adapters
    from trt_distri.manifest import Manifest
    from trt_distri.prompt import PromptEncoder

    manifest = Manifest.load(built(1))
    adapters = load_adapters(manifest, "ort", [(loras[0], 0.8)])
    cpu = PromptEncoder(built(1), manifest, None, adapters)
    gpu = PromptEncoder(built(1), manifest, 0)
    try:
        base = gpu.encode(PROMPT)
        gpu.set_adapters(adapters)
        ours, reference = gpu.encode(PROMPT), cpu.encode(PROMPT)
        assert np.abs(ours.cond - base.cond).max() > 0.1  # the adapter reached the GPU's kernels
        np.testing.assert_allclose(ours.cond, reference.cond, atol=2e-3)
        np.testing.assert_allclose(ours.text_embeds, reference.text_embeds, atol=2e-3)
        gpu.set_adapters([])
        cleared = gpu.encode(PROMPT)
        assert (cleared.cond == base.cond).all() and (cleared.text_embeds == base.text_embeds).all()
    finally:
        cpu.close()
        gpu.close()
