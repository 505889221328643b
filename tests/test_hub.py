"""Model ids (trt_distri.hub): a Hugging Face cache laid out as the Hub writes it (blobs, snapshots/<commit>/ links,
refs/<name>), populated with the tiny random pipeline and read with HF_HUB_OFFLINE=1: nothing touches the network."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from trt_distri.cli import main
from trt_distri.errors import ConfigError
from trt_distri.hub import download_patterns, is_model_id, resolve_model
from trt_distri.manifest import Manifest

REPO = "tiny-org/tiny-sdxl"


def populate_cache(cache: Path, repo: str, folder: Path, ref: str = "main") -> Path:
    """Copy `folder` into the cache as the Hub does: content-addressed blobs, a snapshot of relative symlinks named
    by a commit, and refs/<ref> holding that commit. Returns the snapshot folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    commit = hashlib.sha1(b"".join(str(p.relative_to(folder)).encode() + p.read_bytes() for p in files)).hexdigest()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(plain folder, folder saved with variant="fp16") of the tiny SDXL pipeline."""
    from trt_distri.pipeline_models import random_pipeline

    root = tmp_path_factory.mktemp("saved")
    pipe = random_pipeline("tiny-sdxl", seed=0)
    pipe.save_pretrained(root / "plain")
    pipe.save_pretrained(root / "fp16", variant="fp16")
    return root / "plain", root / "fp16"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # a model id is never a folder of the working directory here
    return cache


def _export(model: str, out: Path, *extra: str) -> int:
    return main(["export", model, "--height", "128", "--width", "128", "--dtype", "fp32", "--no-cfg-split",
                 "-o", str(out), *extra])


def _weights(work: Path) -> dict[str, bytes]:
    """The exported weights: the UNet's graphs/weights.bin and the encoders' <graph>.data files."""
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(work.rglob("*")) if p.suffix in (".bin", ".data")}


def test_export_by_id_from_offline_cache_equals_export_of_the_folder(saved, offline_cache, tmp_path):
    snapshot = populate_cache(offline_cache, REPO, saved[0])
    assert _export(REPO, tmp_path / "by-id") == 0
    assert _export(str(saved[0]), tmp_path / "by-folder") == 0
    manifest = Manifest.load(tmp_path / "by-id")
    assert manifest.model.source == str(snapshot)
    assert manifest.text_encoders and manifest.vae is not None
    weights = _weights(tmp_path / "by-id")
    assert "graphs/weights.bin" in weights and "encoders/vae_decoder.onnx.data" in weights
    assert weights == _weights(tmp_path / "by-folder")


def test_variant_fp16_from_cache(saved, offline_cache, tmp_path, capsys):
    snapshot = populate_cache(offline_cache, REPO, saved[1])
    assert _export(REPO, tmp_path / "work", "--variant", "fp16") == 0
    assert Manifest.load(tmp_path / "work").model.source == str(snapshot)
    capsys.readouterr()
    assert _export(REPO, tmp_path / "plain") == 2  # only fp16 files in the cache
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no safetensors weights for unet" in err and "--variant fp16" in err


def test_offline_without_the_model_names_the_cache_and_the_fix(offline_cache, tmp_path, capsys):
    assert _export("someone/not-cached", tmp_path / "work") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(offline_cache / "models--someone--not-cached") in err
    assert "HF_HUB_OFFLINE=1" in err and "Fix:" in err and not (tmp_path / "work").exists()


def test_revision_picks_its_snapshot(saved, offline_cache):
    main_snapshot = populate_cache(offline_cache, REPO, saved[0])
    tagged = populate_cache(offline_cache, REPO, saved[1], ref="v1")
    assert resolve_model(REPO) == str(main_snapshot)
    assert resolve_model(REPO, revision="v1", variant="fp16") == str(tagged)
    assert resolve_model(REPO, revision=tagged.name, variant="fp16") == str(tagged)  # a commit
    with pytest.raises(ConfigError, match="not in the Hugging Face cache"):
        resolve_model(REPO, revision="v2")


def test_revision_and_variant_refused_where_they_do_not_apply(saved):
    with pytest.raises(ConfigError, match="--revision v1 applies to a Hub model id"):
        resolve_model(str(saved[0]), revision="v1")
    with pytest.raises(ConfigError, match="--variant fp16 applies to a model folder or id"):
        resolve_model("random:tiny-sdxl", variant="fp16")
    assert resolve_model(str(saved[1]), variant="fp16") == str(saved[1])  # a local folder keeps its variant


def test_model_ids_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local").mkdir(parents=True)
    assert is_model_id("stabilityai/stable-diffusion-xl-base-1.0") and is_model_id("gpt2")
    assert not is_model_id("org/local")  # an existing folder wins, as in diffusers
    assert not is_model_id("random:tiny-sdxl") and not is_model_id("a/b/c") and not is_model_id("../x")


SDXL_FILES = ["model_index.json", "sd_xl_base_1.0.safetensors", "scheduler/scheduler_config.json",
              "tokenizer/vocab.json", "tokenizer_2/merges.txt", "text_encoder/config.json",
              "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors", "text_encoder/flax_model.msgpack",
              "text_encoder_2/model.fp16.safetensors", "text_encoder_2/model.safetensors", "unet/config.json",
              "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
              "unet/openvino_model.bin", "vae/diffusion_pytorch_model.safetensors", "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
              "vae_decoder/model.onnx", "vae_1_0/diffusion_pytorch_model.safetensors"]
PARTS = ["unet", "vae", "text_encoder", "text_encoder_2", "scheduler", "tokenizer", "tokenizer_2"]


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_download_patterns_fetch_only_what_export_reads(variant):
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = download_patterns(PARTS, variant)
    got = set(filter_repo_objects(SDXL_FILES, allow_patterns=allow, ignore_patterns=ignore))
    weights = {"text_encoder/model{}.safetensors", "text_encoder_2/model{}.safetensors",
               "unet/diffusion_pytorch_model{}.safetensors", "vae/diffusion_pytorch_model{}.safetensors"}
    tag = f".{variant}" if variant else ""
    expected = {"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer_2/merges.txt",
                "text_encoder/config.json", "unet/config.json", "vae/config.json",
                *(w.format(tag) for w in weights)}
    assert got == expected
