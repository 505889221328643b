"""Bad input gives one clear line with the fix: long prompts, missing or incomplete models, wrong settings."""
from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest

from trt_distri.cli import main
from trt_distri.manifest import Manifest


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("trt-distri: error:"), lines
    return lines[-1]


def test_long_prompt_is_truncated_with_one_short_warning(workdir, caplog):
    """SDXL has two tokenizers: a 20,000-character prompt gives one warning, of one short line."""
    from trt_distri.prompt import PromptEncoder, PromptTokenizer

    work = workdir("tiny-sdxl")
    tokenizer = PromptTokenizer(work / "tokenizer", 77)
    long = "a red fox " * 2000
    assert tokenizer(long).shape == (1, 77) and tokenizer.overflow(long)[0] > 77
    encoder = PromptEncoder(work, Manifest.load(work))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trt_distri.prompt"):
        encoder.encode(long)
    ours = [r.getMessage() for r in caplog.records if r.name == "trt_distri.prompt"]
    assert len(ours) == 1 and "truncated" in ours[0] and "77" in ours[0] and len(ours[0]) < 200, ours
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trt_distri.prompt"):
        encoder.encode("a red fox")
    assert not [r for r in caplog.records if r.name == "trt_distri.prompt"]


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


def _nothing_loaded(monkeypatch):
    """Prompt encoding and denoising fail the test: a check must come before them."""
    def boom(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr("trt_distri.pipeline.encode_prompt", boom)
    monkeypatch.setattr("trt_distri.pipeline.denoise", boom)


@pytest.mark.parametrize("extra, expected", [
    (["--guidance", "nan"], "invalid guidance"),
    (["--guidance", "inf"], "invalid guidance"),
    (["--steps", "1000"], "invalid steps: DDIM with steps_offset 1"),
    (["--steps", "100000"], "invalid steps. Note: expected 1..1024"),
    (["--scheduler", "euler", "--steps", "1025"], "expected 1..1024"),
    (["--seed", str(2**70)], "invalid seed"),
    (["--seed", "-1"], "invalid seed"),
    (["--warmup-steps", "-1"], "invalid warmup_steps"),
    (["--repeat", "0"], "invalid repeat"),
    (["--gpus", "3"], "exported for 1 rank"),
    (["--prompt", "\udcff\udcfe"], "not valid UTF-8"),
    (["--negative-prompt", "\udcc3"], "not valid UTF-8"),
])
def test_run_arguments_are_checked_before_any_work(capsys, monkeypatch, workdir, tmp_path, extra, expected):
    _nothing_loaded(monkeypatch)
    out = tmp_path / "i.png"
    argv = ["run", str(workdir("tiny-sd")), "--prompt", "x", "--device", "cpu", "--steps", "1", "-o", str(out)]
    assert main(argv + extra) == 2
    line = _error(capsys)
    assert expected in line and "Fix:" in line and "internal error" not in line
    assert not out.exists()


@pytest.mark.parametrize("out, expected", [
    ("missing/i.png", "the folder {tmp}/missing does not exist. Fix: create it"),
    ("file.txt/i.png", "{tmp}/file.txt is a file, not a folder"),
    (".", "is a folder"),
])
def test_run_output_is_checked_before_any_work(capsys, monkeypatch, workdir, tmp_path, out, expected):
    _nothing_loaded(monkeypatch)
    (tmp_path / "file.txt").write_text("keep")
    argv = ["run", str(workdir("tiny-sd")), "--prompt", "x", "--device", "cpu", "--steps", "1",
            "-o", str(tmp_path / out)]
    assert main(argv) == 2
    assert expected.format(tmp=tmp_path) in _error(capsys)


@pytest.mark.parametrize("command", ["run", "build"])
@pytest.mark.parametrize("path, value", [(("plan", "height"), "128"), (("conditioning", "text_len"), [77]),
                                         (("graph_sets", "steady"), "x")])
def test_manifest_fields_of_the_wrong_type_are_one_line(capsys, workdir, tmp_path, command, path, value):
    work = tmp_path / "w"
    shutil.copytree(workdir("tiny-sd"), work)
    data = json.loads((work / "manifest.json").read_text())
    *parents, key = path
    target = data
    for p in parents:
        target = target[p]
    target[key] = value
    (work / "manifest.json").write_text(json.dumps(data))
    argv = {"run": ["run", str(work), "--prompt", "x", "--device", "cpu", "--steps", "1", "-o",
                    str(tmp_path / "i.png")], "build": ["build", str(work), "--backend", "ort"]}[command]
    assert main(argv) == 2
    line = _error(capsys)
    assert "manifest.json" in line and "Fix:" in line
