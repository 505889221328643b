"""LoRA files as users have them, converted into low-rank updates of the work directory's weights (numpy only).

Two formats are read (docs/lora.md), for the UNet and the text encoders (`text_encoder`, SDXL's `text_encoder_2`):
- diffusers/PEFT, as `save_lora_weights` writes it: `<part>.<module>.lora_A.weight` (r, in[, kh, kw]) and
  `<part>.<module>.lora_B.weight` (out, r[, 1, 1]) with part `unet`, `text_encoder` or `text_encoder_2`, or
  `lora.down.weight` / `lora.up.weight` (what diffusers' training scripts save after
  `convert_state_dict_to_diffusers`); the scale alpha / r (alpha / sqrt(r) with rsLoRA) comes from the PEFT
  configuration diffusers stores in the file's metadata (`lora_adapter_metadata`: `<part>.lora_alpha`,
  `<part>.alpha_pattern`, `<part>.use_rslora`), else from `<module>.alpha` keys, else alpha = r (scale 1), as
  diffusers loads such files;
- kohya/A1111: `lora_unet_<module with _ for .>` (diffusers layout, or the original SGM layout of kohya's SDXL
  files: trt_distri/lora_sgm.py), `lora_te_` / `lora_te1_` (text_encoder), `lora_te2_` (text_encoder_2), each
  with `.lora_down.weight`, `.lora_up.weight` and `.alpha` (scale alpha / r; 1 without an alpha).
A module's update is `scale * up @ down`, added to the weight `<module>.weight` of that part of the work directory:
linear weights are stored transposed there, (in, out), so the update is transposed too; convolutions (1x1 and 3x3)
keep (out, in, kh, kw). Text encoders exported before their weights were named (export/weight_names.py) take no
LoRA: their layers are refused with a message saying to export again.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trt_distri.errors import ConfigError
from trt_distri.safetensors_np import read_safetensors

UNET = "unet"
#: key prefix -> (part of the model, kohya format)
_PREFIXES = (("lora_unet_", UNET, True), ("lora_te1_", "text_encoder", True), ("lora_te2_", "text_encoder_2", True),
             ("lora_te_", "text_encoder", True), ("unet.", UNET, False), ("text_encoder_2.", "text_encoder_2", False),
             ("text_encoder.", "text_encoder", False), ("base_model.model.", UNET, False))
_PART = re.compile(r"^(?P<module>.+?)\.(?:(?P<peft>lora_[AB]|lora\.down|lora\.up)(?:\.[\w-]+)?\.weight"
                   r"|(?P<kohya>lora_(?:down|up))\.weight|(?P<alpha>alpha))$")
_UNSUPPORTED = {"lora_magnitude_vector": "DoRA", "dora_scale": "DoRA", "lora_mid": "LoCon with a mid (Tucker) "
                "factor", "hada_": "LyCORIS LoHa", "lokr_": "LyCORIS LoKr", "lora_B.bias": "a LoRA bias"}
METADATA_KEY = "lora_adapter_metadata"
_CLIP_ROOT = "text_model."
Shapes = Mapping[str, tuple[int, ...]]


class LoraError(ConfigError):
    """A LoRA file that cannot be applied to this work directory (format, keys or shapes)."""


@dataclass(frozen=True)
class LoraTargets:
    """What LoRA files are converted against: the stored shape of every weight of the work directory's UNet and
    text encoders (None: a text encoder exported before its weights were named), and the UNet's diffusers
    configuration (for kohya names in the original SGM layout)."""

    unet: Shapes
    text_encoders: Mapping[str, Shapes | None] = field(default_factory=dict)
    unet_config: Mapping | None = None
    unused: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """text encoder -> weights its graph does not read (layers past its outputs): LoRA layers on them are skipped"""

    def shapes(self, part: str) -> Shapes | None:
        return self.unet if part == UNET else self.text_encoders.get(part)


@dataclass(frozen=True)
class LowRank:
    """One module's update: `scale * up @ down`, with down (r, in[, kh, kw]) and up (out, r[, 1, 1])."""

    down: np.ndarray
    up: np.ndarray
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def matrices(self, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
        """(up (out, r), down (r, in*kh*kw)) as C-contiguous matrices of `dtype`."""
        up = np.ascontiguousarray(np.asarray(self.up).reshape(self.up.shape[0], self.rank), dtype=dtype)
        down = np.ascontiguousarray(np.asarray(self.down).reshape(self.rank, -1), dtype=dtype)
        return up, down

    def delta(self, shape: tuple[int, ...]) -> np.ndarray:
        """The update (float32) in the stored layout of a weight of `shape`: (in, out) linear, (out, in, kh, kw)."""
        up, down = self.matrices()
        if len(shape) == 2:
            return (down.T * np.float32(self.scale)) @ up.T
        return ((up * np.float32(self.scale)) @ down).reshape(shape)


@dataclass(frozen=True)
class Adapter:
    """A LoRA file converted for one work directory: UNet weight name -> its low-rank update (`layers`), and the
    same per text encoder (`text_layers`: encoder name -> weight name -> update)."""

    path: Path
    layers: Mapping[str, LowRank]
    format: str  # "peft" or "kohya"
    text_layers: Mapping[str, Mapping[str, LowRank]] = field(default_factory=dict)

    def part(self, name: str) -> "Adapter":
        """The adapter's updates of one text encoder, as an adapter of that encoder alone."""
        return Adapter(self.path, self.text_layers.get(name, {}), self.format)


def load_adapter(path: str | Path, targets: LoraTargets) -> Adapter:
    """The LoRA at `path` as updates of the weights in `targets`. LoraError names the first key that matches no
    weight, and how many matched when some did."""
    path = Path(path)
    tensors, metadata = read_safetensors(path)
    _refuse_unsupported(path, tensors)
    modules, unmatched, fmt = _group(path, tensors)
    _check_parts(path, modules, targets)
    lookups: dict[str, dict[str, str]] = {}
    parts: dict[str, dict[str, LowRank]] = {}
    skipped = 0  # layers on weights no graph reads
    alphas = _PeftAlphas(metadata.get(METADATA_KEY), path) if fmt == "peft" else None
    for (part, module), entry in modules.items():
        shapes, unused = targets.shapes(part), targets.unused.get(part, frozenset())
        if fmt == "kohya" and part not in lookups:
            lookups[part] = _kohya_lookup(part, [*shapes, *unused], targets.unet_config if part == UNET else None)
        name = lookups[part].get(module) if fmt == "kohya" else _weight_name(part, module, {*shapes, *unused})
        if name not in shapes:
            if name in unused:
                skipped += 1
            else:
                unmatched.append(entry.get("key", module))
            continue
        down, up = _factors(path, module, entry)
        scale = _scale(entry.get("alpha"), alphas, part, module, down.shape[0])
        _check_shape(path, module, down, up, shapes[name])
        parts.setdefault(part, {})[name] = LowRank(down, up, scale)
    _check_matched(path, sum(map(len, parts.values())) + skipped, unmatched)
    unet = parts.pop(UNET, {})
    return Adapter(path, unet, fmt, parts)


def _weight_name(part: str, module: str, known: set[str]) -> str:
    """`<module>.weight`, where a text encoder's module is also looked for with or without `text_model.` (CLIP
    checkpoints and LoRA files have it; transformers 5's CLIPTextModel does not)."""
    names = [f"{m}.weight" for m in _aliases(part, module)]
    return next((n for n in names if n in known), names[0])


def _aliases(part: str, module: str) -> list[str]:
    if part == UNET:
        return [module]
    return [module, module[len(_CLIP_ROOT):] if module.startswith(_CLIP_ROOT) else _CLIP_ROOT + module]


def _scale(alpha: float | None, alphas: "_PeftAlphas | None", part: str, module: str, rank: int) -> float:
    if alpha is None and alphas is not None:
        alpha = alphas.alpha(part, module, rank)
    rslora = alphas is not None and alphas.rslora(part)
    return 1.0 if alpha is None else float(alpha) / (math.sqrt(rank) if rslora else rank)


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
        for marker, what in _UNSUPPORTED.items():
            if marker in key:
                raise LoraError(f"{path} holds {what} ({key!r}), which trt-distri does not apply. Note: expected "
                                "plain LoRA factors (lora_A/lora_B or lora_down/lora_up, alpha). Fix: merge it into a "
                                "plain LoRA, or fuse it into the model and export again")


def _check_parts(path: Path, modules: Mapping[tuple[str, str], dict], targets: LoraTargets) -> None:
    """Refuse layers of a text encoder that the work directory lacks, or exported before its weights were named."""
    for part in sorted({part for part, _ in modules} - {UNET}):
        key = next(entry["key"] for (p, _), entry in modules.items() if p == part)
        if part not in targets.text_encoders:
            have = ", ".join([UNET, *targets.text_encoders])
            raise LoraError(f"{path} has LoRA layers for {part} (first: {key!r}), which this work directory does not "
                            f"have. Note: expected layers of {have}. Fix: use a LoRA trained for this model")
        if targets.text_encoders[part] is None:
            raise LoraError(f"{path} has LoRA layers for {part} (first: {key!r}), but this work directory was exported"
                            " before trt-distri named the text encoders' weights, so they cannot take LoRA. Fix: "
                            "export it again with this version (`trt-distri export ... --overwrite`), or use a "
                            "LoRA without text-encoder layers")


def _group(path: Path, tensors: Mapping[str, np.ndarray]) -> tuple[dict[tuple[str, str], dict], list[str], str]:
    """(part, module) -> {"down", "up", "alpha", "key"}, keys that are not LoRA parts, and the format."""
    modules: dict[tuple[str, str], dict] = {}
    unmatched: list[str] = []
    formats = set()
    for key, value in tensors.items():
        part, module, kohya = _split_prefix(key)
        match = _PART.match(module)
        if match is None:
            unmatched.append(key)
            continue
        kind = match["peft"] or match["kohya"] or "alpha"
        formats.add("kohya" if kohya or match["kohya"] else "peft")
        entry = modules.setdefault((part, match["module"]), {"key": key})
        if kind == "alpha":
            entry["alpha"] = float(np.asarray(value, np.float32).reshape(-1)[0])
        else:
            entry["down" if kind in ("lora_A", "lora.down", "lora_down") else "up"] = value
    if not modules:
        raise LoraError(f"{path} holds no LoRA layers (first key: {next(iter(tensors), 'none')!r}). Note: expected "
                        "diffusers/PEFT keys (unet.<module>.lora_A.weight) or kohya keys "
                        "(lora_unet_<module>.lora_down.weight). Fix: pass a LoRA .safetensors file")
    if len(formats) > 1:
        raise LoraError(f"{path} mixes diffusers/PEFT and kohya keys. Note: expected one format. Fix: convert it "
                        "to one format")
    return modules, unmatched, formats.pop()


def _split_prefix(key: str) -> tuple[str, str, bool]:
    """(part of the model, the key without its prefix, whether the prefix is kohya's); unprefixed: the UNet."""
    for prefix, part, kohya in _PREFIXES:
        if key.startswith(prefix):
            return part, key[len(prefix):], kohya
    return UNET, key, False


def _kohya_lookup(part: str, names: Iterable[str], unet_config: Mapping | None) -> dict[str, str]:
    """kohya module name (dots replaced by underscores) -> weight name; with a UNet configuration, the names of
    the original SGM layout too (kohya's SDXL files)."""
    modules = {name[:-len(".weight")]: name for name in names if name.endswith(".weight")}
    lookup = {alias.replace(".", "_"): name for module, name in modules.items()
              for alias in _aliases(part, module)}
    if unet_config is not None and "down_block_types" in unet_config:
        from trt_distri.lora_sgm import SgmNames

        sgm = SgmNames(unet_config)
        for module, name in modules.items():
            other = sgm(module)
            if other is not None:
                lookup.setdefault(other.replace(".", "_"), name)
    return lookup


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
                    "keys of this model's UNet or text encoders (diffusers/PEFT unet.<module>.lora_A.weight, "
                    "text_encoder.<module>...; kohya lora_unet_<module>.lora_down.weight, lora_te1_<module>...). "
                    "Fix: use a LoRA trained for this model's architecture")


class _PeftAlphas:
    """alpha per module from diffusers' PEFT metadata (a LoraConfig as a dict per part, keys `<part>.<field>`)."""

    def __init__(self, text: str | None, path: Path) -> None:
        self.configs: dict[str, dict] = {}
        if not text:
            return
        try:
            for key, value in json.loads(text).items():
                part, _, name = key.rpartition(".")
                self.configs.setdefault(part, {})[name] = value
        except (ValueError, AttributeError):
            raise LoraError(f"{path}: its {METADATA_KEY} metadata is not JSON. Fix: save the LoRA again") from None

    def rslora(self, part: str) -> bool:
        return bool(self.configs.get(part, {}).get("use_rslora"))

    def alpha(self, part: str, module: str, rank: int) -> float:
        config = self.configs.get(part, {})
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?(?:{pattern})", module):
                return float(value)
        default = config.get("lora_alpha")
        return float(rank if default is None else default)
