"""LoRA files as users have them, converted into low-rank updates of the work directory's weights (numpy only).

Two formats are read (docs/lora.md):
- diffusers/PEFT, as `save_lora_weights` writes it: `unet.<module>.lora_A.weight` (r, in[, kh, kw]) and
  `unet.<module>.lora_B.weight` (out, r[, 1, 1]), or `lora.down.weight` / `lora.up.weight` (what diffusers'
  training scripts save after `convert_state_dict_to_diffusers`); the scale alpha / r (alpha / sqrt(r) with rsLoRA) comes from the
  PEFT configuration diffusers stores in the file's metadata (`lora_adapter_metadata`: `unet.lora_alpha`,
  `unet.alpha_pattern`, `unet.use_rslora`), else from `<module>.alpha` keys, else alpha = r (scale 1), as diffusers
  loads such files;
- kohya/A1111: `lora_unet_<module with _ for .>.lora_down.weight`, `.lora_up.weight` and `.alpha` (scale
  alpha / r; 1 without an alpha).
A module's update is `scale * up @ down`, added to the weight `<module>.weight` of the work directory: linear
weights are stored transposed there, (in, out), so the update is transposed too; convolutions (1x1 and 3x3) keep
(out, in, kh, kw). Text-encoder layers (`text_encoder.`, `text_encoder_2.`, `lora_te1_`, `lora_te2_`) are refused:
the exported text encoders' weights carry names the ONNX exporter generated, which no LoRA key can be matched to.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.safetensors_np import read_safetensors

_TEXT_ENCODER_PREFIXES = ("text_encoder.", "text_encoder_2.", "lora_te_", "lora_te1_", "lora_te2_")
_UNET_PREFIXES = ("unet.", "base_model.model.")
_PART = re.compile(r"^(?P<module>.+?)\.(?:(?P<peft>lora_[AB]|lora\.down|lora\.up)(?:\.[\w-]+)?\.weight"
                   r"|(?P<kohya>lora_(?:down|up))\.weight|(?P<alpha>alpha))$")
_UNSUPPORTED = {"lora_magnitude_vector": "DoRA", "dora_scale": "DoRA", "lora_mid": "LoCon with a mid (Tucker) "
                "factor", "hada_": "LyCORIS LoHa", "lokr_": "LyCORIS LoKr", "lora_B.bias": "a LoRA bias"}
METADATA_KEY = "lora_adapter_metadata"


class LoraError(ConfigError):
    """A LoRA file that cannot be applied to this work directory (format, keys or shapes)."""


@dataclass(frozen=True)
class LowRank:
    """One module's update: `scale * up @ down`, with down (r, in[, kh, kw]) and up (out, r[, 1, 1])."""

    down: np.ndarray
    up: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, shape: tuple[int, ...]) -> np.ndarray:
        """The update (float32) in the stored layout of a weight of `shape`: (in, out) linear, (out, in, kh, kw)."""
        up = np.asarray(self.up, np.float32).reshape(self.up.shape[0], self.rank)
        down = np.asarray(self.down, np.float32).reshape(self.rank, -1)
        if len(shape) == 2:
            return (down.T * np.float32(self.scale)) @ up.T
        return ((up * np.float32(self.scale)) @ down).reshape(shape)


@dataclass(frozen=True)
class Adapter:
    """A LoRA file converted for one work directory: weight name -> its low-rank update."""

    path: Path
    layers: Mapping[str, LowRank]
    format: str  # "peft" or "kohya"


def load_adapter(path: str | Path, shapes: Mapping[str, tuple[int, ...]]) -> Adapter:
    """The LoRA at `path` as updates of the weights named in `shapes` (name -> stored shape). LoraError names the
    first key that matches no weight, and how many matched when some did."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    _refuse_unsupported(path, tensors)
    modules, unmatched, fmt = _group(path, tensors)
    lookup = _kohya_lookup(shapes) if fmt == "kohya" else None
    layers: dict[str, LowRank] = {}
    alphas = _PeftAlphas(metadata.get(METADATA_KEY), path) if fmt == "peft" else None
    for module, parts in modules.items():
        name = lookup.get(module) if lookup is not None else f"{module}.weight"
        if name not in shapes:
            unmatched.append(parts.get("key", module))
            continue
        down, up = _factors(path, module, parts)
        alpha = parts.get("alpha")
        if alpha is None and alphas is not None:
            alpha = alphas.alpha(module, down.shape[0])
        rank = down.shape[0]
        scale = 1.0 if alpha is None else float(alpha) / (math.sqrt(rank) if alphas and alphas.rslora else rank)
        _check_shape(path, module, down, up, shapes[name])
        layers[name] = LowRank(down, up, scale)
    _check_matched(path, len(layers), unmatched)
    return Adapter(path, layers, fmt)


def parse_lora_arg(text: str) -> tuple[Path, float]:
    """`FILE[:SCALE]` (the CLI's --lora) -> (path, scale); the scale defaults to 1."""
    head, sep, tail = text.rpartition(":")
    if sep and head and _is_number(tail):
        return Path(head), float(tail)
    return Path(text), 1.0


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _refuse_unsupported(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    for key in tensors:
        if key.startswith(_TEXT_ENCODER_PREFIXES):
            count = sum(k.startswith(_TEXT_ENCODER_PREFIXES) for k in tensors)
            raise LoraError(f"{path} has {count} text-encoder LoRA tensors (first: {key!r}); trt-distri applies LoRA "
                            "to the UNet only. Note: expected UNet keys (unet.*, lora_unet_*). Fix: use a LoRA trained "
                            "for the UNet alone, or save only its UNet layers (diffusers: save_lora_weights with "
                            "unet_lora_layers only; kohya: drop the lora_te* keys)")
        for marker, what in _UNSUPPORTED.items():
            if marker in key:
                raise LoraError(f"{path} holds {what} ({key!r}), which trt-distri does not apply. Note: expected "
                                "plain LoRA factors (lora_A/lora_B or lora_down/lora_up, alpha). Fix: merge it into a "
                                "plain LoRA, or fuse it into the model and export again")


def _group(path: Path, tensors: Mapping[str, np.ndarray]) -> tuple[dict[str, dict], list[str], str]:
    """module -> {"down", "up", "alpha", "key"}, keys that are not LoRA parts, and the format."""
    modules: dict[str, dict] = {}
    unmatched: list[str] = []
    formats = set()
    for key, value in tensors.items():
        module, kohya = key, key.startswith("lora_unet_")
        for prefix in ("lora_unet_",) + _UNET_PREFIXES:
            module = module[len(prefix):] if module.startswith(prefix) else module
        match = _PART.match(module)
        if match is None:
            unmatched.append(key)
            continue
        part = match["peft"] or match["kohya"] or "alpha"
        formats.add("kohya" if kohya or match["kohya"] else "peft")
        entry = modules.setdefault(match["module"], {"key": key})
        if part == "alpha":
            entry["alpha"] = float(np.asarray(value, np.float32).reshape(-1)[0])
        else:
            entry["down" if part in ("lora_A", "lora.down", "lora_down") else "up"] = value
    if not modules:
        raise LoraError(f"{path} holds no LoRA layers (first key: {next(iter(tensors), 'none')!r}). Note: expected "
                        "diffusers/PEFT keys (unet.<module>.lora_A.weight) or kohya keys "
                        "(lora_unet_<module>.lora_down.weight). Fix: pass a LoRA .safetensors file")
    if len(formats) > 1:
        raise LoraError(f"{path} mixes diffusers/PEFT and kohya keys. Note: expected one format. Fix: convert it "
                        "to one format")
    return modules, unmatched, formats.pop()


def _kohya_lookup(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, str]:
    """kohya module name (dots replaced by underscores) -> weight name."""
    return {name[:-len(".weight")].replace(".", "_"): name for name in shapes if name.endswith(".weight")}


def _factors(path: Path, module: str, parts: dict) -> tuple[np.ndarray, np.ndarray]:
    if "down" not in parts or "up" not in parts:
        missing = "down (lora_A / lora_down)" if "down" not in parts else "up (lora_B / lora_up)"
        raise LoraError(f"{path}: layer {module!r} lacks its {missing} factor. Note: expected both factors of "
                        "every layer. Fix: save the LoRA again")
    return parts["down"], parts["up"]


def _check_shape(path: Path, module: str, down: np.ndarray, up: np.ndarray, shape: tuple[int, ...]) -> None:
    """Linear weights are stored (in, out): down (r, in), up (out, r); convolutions (out, in, kh, kw): down
    (r, in, kh, kw), up (out, r, 1, 1)."""
    rank = down.shape[0]
    out, fan_in = (shape[1], shape[0]) if len(shape) == 2 else (shape[0], int(np.prod(shape[1:])))
    kernel_ok = len(shape) == 2 or down.ndim == 2 or tuple(down.shape[2:]) == tuple(shape[2:])
    fits = (up.ndim >= 2 and up.shape[:2] == (out, rank) and int(np.prod(up.shape[2:])) == 1
            and int(np.prod(down.shape[1:])) == fan_in and kernel_ok)
    if not fits:
        want_down = [rank, *(shape[1:] if len(shape) == 4 else shape[:1])]
        want_up = [out, rank] + ([1, 1] if len(shape) == 4 else [])
        raise LoraError(f"{path}: layer {module!r} does not fit this model. Note: expected down {want_down} and up "
                        f"{want_up}, got {list(down.shape)} and {list(up.shape)}. Fix: use a LoRA trained for this "
                        "model's architecture")


def _check_matched(path: Path, matched: int, unmatched: list[str]) -> None:
    if not unmatched:
        return
    total = matched + len(unmatched)
    what = (f"none of the {total} layers of {path} matches" if not matched else
            f"only {matched} of the {total} layers of {path} match")
    raise LoraError(f"{what} a weight of this work directory; first unmatched key: {unmatched[0]!r}. Note: expected "
                    "keys of this model's UNet (diffusers/PEFT unet.<module>.lora_A.weight or kohya "
                    "lora_unet_<module>.lora_down.weight). Fix: use a LoRA trained for this model's architecture")


class _PeftAlphas:
    """alpha per module from diffusers' PEFT metadata (LoraConfig as a dict, keys prefixed `unet.`)."""

    def __init__(self, text: str | None, path: Path) -> None:
        self.alpha_default, self.patterns, self.rslora = None, {}, False
        if not text:
            return
        try:
            config = {k.split(".", 1)[1]: v for k, v in json.loads(text).items() if k.startswith("unet.")}
        except (ValueError, AttributeError):
            raise LoraError(f"{path}: its {METADATA_KEY} metadata is not JSON. Fix: save the LoRA again") from None
        self.alpha_default = config.get("lora_alpha")
        self.patterns = config.get("alpha_pattern") or {}
        self.rslora = bool(config.get("use_rslora"))

    def alpha(self, module: str, rank: int) -> float:
        for pattern, value in self.patterns.items():
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                return float(value)
        return float(rank if self.alpha_default is None else self.alpha_default)
