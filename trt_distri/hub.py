"""Model ids (`stabilityai/stable-diffusion-xl-base-1.0`) resolved as diffusers resolves them.

`resolve_model` turns what `trt-distri export` was given into a local folder:
- `random:<name>` and existing local folders are returned unchanged;
- anything else that is a valid Hub repository id is looked up in the Hugging Face cache first and downloaded where
  a network exists (`huggingface_hub.snapshot_download`, the function diffusers' `from_pretrained` calls), only the
  files export needs: `model_index.json`, the scheduler and tokenizer folders, and the configs and safetensors
  weights (of `variant`, such as fp16, when given) of the UNet, VAE and text encoders.

The cache folder follows the Hub's own environment variables, read at each call: `HF_HUB_CACHE`, else `HF_HOME/hub`,
else `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. `HF_HUB_OFFLINE=1` forbids every network
call: the model must then be in the cache (a snapshot folder for the revision, or `refs/<revision>`).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from trt_distri.config import RANDOM_PREFIX
from trt_distri.errors import ConfigError, MissingPackageError

log = logging.getLogger(__name__)
_TRUE = {"1", "ON", "YES", "TRUE"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?$")
#: Model parts whose weights export loads, and the parts it reads whole (small: configs, vocabularies).
WEIGHT_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
WHOLE_PARTS = ("scheduler", "tokenizer", "tokenizer_2")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the Hub library finds it (see the module docstring)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def is_model_id(model: str) -> bool:
    """True for what the Hub accepts as a repository id and is not a local path or random:<name>."""
    if model.startswith(RANDOM_PREFIX) or Path(model).exists():
        return False
    return bool(_REPO_ID.match(model)) and ".." not in model and not model.endswith((".", "-"))


def resolve_model(model: str, revision: str | None = None, variant: str | None = None,
                  unet_only: bool = False) -> str:
    """A local folder (or random:<name>) for `model`; model ids come from the cache or the Hub."""
    if not is_model_id(model):
        random = model.startswith(RANDOM_PREFIX)
        for flag, value, applies in (("--revision", revision, "a Hub model id"),
                                     ("--variant", variant if random else None, "a model folder or id")):
            if value is not None:
                raise ConfigError(f"{flag} {value} applies to {applies}. Note: got {model!r}, which is "
                                  f"{'random weights' if random else 'a local path'}. Fix: drop {flag}")
        return model
    root = _snapshot(model, revision, ["model_index.json", "config.json"])
    index = root / "model_index.json"
    if not index.is_file() and not (root / "config.json").is_file():
        raise ConfigError(f"{model} is neither a diffusers pipeline nor a UNet. Note: expected model_index.json "
                          f"or config.json in {root}. Fix: pass the id of a diffusers model")
    parts = pipeline_parts(json.loads(index.read_text()), unet_only) if index.is_file() else [""]
    root = _snapshot(model, revision, *download_patterns(parts, variant))
    _check_weights(model, root, variant, parts)
    log.info("model %s: %s", model, root)
    return str(root)


def download_patterns(parts: list[str], variant: str | None) -> tuple[list[str], list[str] | None]:
    """snapshot_download's allow and ignore patterns for the model parts export reads ("" for a UNet repository's
    root): configs, tokenizers, and the safetensors weights of `variant` (without one: name.safetensors only)."""
    allow = ["model_index.json"] if parts != [""] else []
    for part in parts:
        prefix = f"{part}/" if part else ""
        if part in WHOLE_PARTS:
            allow.append(f"{prefix}*")
        elif variant:
            allow += [f"{prefix}config.json", f"{prefix}*.{variant}.safetensors",
                      f"{prefix}*.{variant}-*-of-*.safetensors", f"{prefix}*.safetensors.index.{variant}.json"]
        else:
            allow += [f"{prefix}config.json", f"{prefix}*.safetensors", f"{prefix}*.safetensors.index.json"]
    # Without a variant, leave out the variants' files (name.fp16.safetensors): diffusers loads name.safetensors.
    ignore = None if variant else [f"{p}/*.*.safetensors" if p else "*.*.safetensors" for p in parts
                                   if p not in WHOLE_PARTS]
    return allow, ignore


def pipeline_parts(index: dict, unet_only: bool = False) -> list[str]:
    """The parts of a pipeline's model_index.json that export reads."""
    if unet_only:
        return ["unet"]
    return [p for p in WEIGHT_PARTS + WHOLE_PARTS if isinstance(index.get(p), list) and index[p][0] is not None]


def _weights(folder: Path, variant: str | None) -> list[Path]:
    found = list(folder.glob("*.safetensors"))
    if variant:
        return [f for f in found if f".{variant}." in f.name or f".{variant}-" in f.name]
    return [f for f in found if f.name.count(".") == 1]  # name.safetensors: variants add a second dot


def _check_weights(model: str, root: Path, variant: str | None, parts: list[str]) -> None:
    missing = [p or "." for p in parts if p not in WHOLE_PARTS and not _weights(root / p, variant)]
    if missing:
        kind = f"{variant} " if variant else ""
        fix = "drop --variant" if variant else "pass --variant fp16 (where the model has fp16 files)"
        raise ConfigError(f"{model} has no {kind}safetensors weights for {', '.join(missing)} in {root}. Note: "
                          "export reads safetensors files only. Fix: " + fix + ", or convert the weights with "
                          "diffusers (save_pretrained) and pass that folder")


def _snapshot(model: str, revision: str | None, patterns: list[str], ignore: list[str] | None = None) -> Path:
    try:
        from huggingface_hub import errors, snapshot_download
    except ModuleNotFoundError as exc:
        raise MissingPackageError("model ids need the package 'huggingface_hub', which is not installed. Fix: "
                                  "pip install -e '.[export]'") from exc
    cache, offline = hub_cache_dir(), hub_offline()
    folder = cache / ("models--" + model.replace("/", "--"))
    try:
        return Path(snapshot_download(model, revision=revision, cache_dir=cache, local_files_only=offline,
                                      allow_patterns=patterns, ignore_patterns=ignore))
    except errors.LocalEntryNotFoundError as exc:  # offline, or the Hub unreachable, and not in the cache
        why = "HF_HUB_OFFLINE=1 forbids downloading it" if offline else f"the Hub could not be reached ({exc})"
        raise ConfigError(f"{model}{'@' + revision if revision else ''} is not in the Hugging Face cache "
                          f"({folder}) and {why}; no local folder {model!r} exists either. Fix: download it once "
                          "where a network exists (unset HF_HUB_OFFLINE, or `hf download "
                          f"{model}`) and copy {cache} here (or set HF_HUB_CACHE to it), or pass a local folder") \
            from None
    except errors.GatedRepoError as exc:
        raise ConfigError(f"{model} is gated on the Hub: {_first_line(exc)}. Fix: accept its licence on the model's "
                          "page and log in (`hf auth login`, or HF_TOKEN)") from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(f"no model {model} on the Hub (or it is private), and no local folder {model!r}. Fix: "
                          "check the id, log in for a private model (`hf auth login`), or pass a local folder") \
            from None
    except errors.RevisionNotFoundError:
        raise ConfigError(f"{model} has no revision {revision!r}. Fix: pass a branch, tag or commit of the model "
                          "(or drop --revision for main)") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
