"""Bad input gives one clear line with the fix: long prompts, missing or incomplete models, wrong settings."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from trt_distri.cli import main


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("trt-distri: error:"), lines
    return lines[-1]


def test_long_prompt_is_truncated_with_a_warning(workdir, caplog):
    from trt_distri.prompt import PromptTokenizer

    tokenizer = PromptTokenizer(workdir("tiny-sd") / "tokenizer", 77)
    long = "a red fox " * 20
    with caplog.at_level(logging.WARNING, logger="trt_distri.prompt"):
        ids = tokenizer(long)
    assert ids.shape == (1, 77) and ids[0, -1] == tokenizer(long)[0, -1]
    assert any("truncated" in r.message and "77" in r.message for r in caplog.records)
    caplog.clear()
    short = tokenizer("a red fox")
    assert not caplog.records and short.shape == (1, 77)


def test_tokenizer_equals_transformers(workdir):
    from transformers import CLIPTokenizer

    from trt_distri.prompt import PromptTokenizer

    folder = workdir("tiny-sdxl") / "tokenizer"
    ours, theirs = PromptTokenizer(folder, 77), CLIPTokenizer.from_pretrained(folder)
    for text in ("a red fox", "", "The thing, and a ring!? " * 12):
        expected = theirs(text, padding="max_length", max_length=77, truncation=True).input_ids
        assert ours(text)[0].tolist() == expected


def test_missing_model_folder(capsys, tmp_path):
    assert main(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "w")]) == 2
    assert "config.json" in _error(capsys)


def test_incomplete_pipeline_folder_names_the_missing_part(capsys, saved_pipeline, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(saved_pipeline("tiny-sd"), folder)
    shutil.rmtree(folder / "vae")
    assert main(["export", str(folder), "--height", "128", "--width", "128", "-o", str(tmp_path / "w")]) == 2
    line = _error(capsys)
    assert "incomplete" in line and "vae" in line and "save_pretrained" in line


def test_resolution_not_valid_for_the_model(capsys, tmp_path):
    assert main(["export", "--random-weights", "tiny-sd", "--height", "100", "-o", str(tmp_path / "w")]) == 2
    assert "height 100" in _error(capsys)


@pytest.mark.parametrize("extra, expected", [
    (["--height", "256"], "exported for 128x128"),
    (["--gpus", "0,1"], "exported for 1 rank"),
])
def test_workdir_exported_for_other_settings(capsys, workdir, tmp_path, extra, expected):
    argv = ["run", str(workdir("tiny-sd")), "--prompt", "x", "--device", "cpu", "--steps", "1",
            "-o", str(tmp_path / "i.png"), *extra]
    assert main(argv) == 2
    line = _error(capsys)
    assert expected in line and "Fix:" in line
    assert not (tmp_path / "i.png").exists()


def test_prompt_on_a_unet_only_workdir(capsys, tmp_path):
    work = tmp_path / "w"
    assert main(["export", "--random-weights", "tiny-sd", "--height", "128", "--width", "128", "--unet-only",
                 "--dtype", "fp32", "-o", str(work)]) == 0
    assert "text_encoders" not in json.loads((work / "manifest.json").read_text())
    assert main(["run", str(work), "--prompt", "x", "--device", "cpu", "-o", str(tmp_path / "i.png")]) == 2
    assert "no text encoders" in _error(capsys)


def test_existing_output_is_kept_without_overwrite(capsys, workdir, tmp_path):
    out = tmp_path / "image.png"
    out.write_bytes(b"keep")
    argv = ["run", str(workdir("tiny-sd")), "--prompt", "x", "--device", "cpu", "--steps", "1", "-o", str(out)]
    assert main(argv) == 2
    assert "--overwrite" in _error(capsys) and out.read_bytes() == b"keep"
    assert main(argv + ["--overwrite"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_without_workdir_or_prompt(capsys, tmp_path):
    assert main(["run", "-o", str(tmp_path / "x.npy")]) == 2
    assert "--prompt" in _error(capsys)


def test_random_weights_and_model_together(capsys, tmp_path):
    assert main(["export", "random:tiny-sd", "--random-weights", "sd15", "-o", str(tmp_path / "w")]) == 2
    assert "one of them" in _error(capsys)


def test_png_round_trip():
    from trt_distri.png import png_bytes, read_png

    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(read_png(png_bytes(image)), image)
