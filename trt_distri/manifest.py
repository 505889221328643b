"""The manifest: the contract between export, engines and runtime (docs/design.md), as typed records.

`manifest.json` is read here and nowhere else: `Manifest.load(workdir)` parses it, checks its format and version
and every field's type (a `ManifestError` names the field, what was expected and what was found, and says to
export again), and returns frozen records. Writers build the same records (or a JSON object, checked the same
way by `Manifest.from_json`) and `save` them atomically. This module imports neither torch nor onnx.
"""
from __future__ import annotations

import enum
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trt_distri.errors import ManifestError
from trt_distri.typed_json import FieldError, decode, encode

FORMAT = "trt-distri/manifest"
VERSION = 2  # 2: the `conditioning` section replaced `text_len`
MANIFEST_FILE = "manifest.json"
ALIGN = 256  # bytes: every exchange entry and the exchange area itself are aligned to this
GRAPH_SETS = ("warmup", "steady")
_DTYPE_BYTES = {"float16": 2, "float32": 4, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}


def nbytes(shape, dtype: str) -> int:
    """Bytes of a dense tensor of `shape` and numpy dtype name `dtype`."""
    size = _DTYPE_BYTES[dtype]
    for d in shape:
        size *= d
    return size


class Role(str, enum.Enum):
    """What a segment input or output is; the runtime places a tensor by its role."""

    SAMPLE = "sample"
    TIMESTEP = "timestep"
    ENCODER_HIDDEN_STATES = "encoder_hidden_states"
    TEXT_EMBEDS = "text_embeds"
    TIME_IDS = "time_ids"
    ACTIVATION = "activation"  # produced by one segment, read by a later one of the same step
    FRESH = "fresh"  # written into this rank's exchange area (sent to the peers)
    STALE = "stale"  # read from a peer's slot of the gathered area (`source`)
    NOISE_PRED = "noise_pred"
    COEF = "coef"
    LATENTS = "latents"
    LATENTS_PREV = "latents_prev"
    EPS_PREV = "eps_prev"
    EPS = "eps"


# ---- the UNet's segments ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """Where a stale input comes from: exchange entry `entry` of the rank `peer` places away (modulo the ranks
    when `wrap`; zeros past the border otherwise)."""

    entry: str
    peer: int
    wrap: bool


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: Role
    layer: str | None = None
    source: Source | None = None  # stale inputs only

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.dtype)


@dataclass(frozen=True)
class Segment:
    """One graph: a contiguous run of the rank graph's nodes (or the scheduler step)."""

    name: str
    file: str  # relative to the work directory
    exchange_range: tuple[int, int]  # bytes of the exchange area its fresh outputs occupy; (0, 0) for none
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise ManifestError(f"segment {self.name} has no input {name!r}. Note: expected one of "
                            f"{[s.name for s in self.inputs]}. Fix: export again")


@dataclass(frozen=True)
class ExchangeEntry:
    name: str
    layer: str
    role: str  # the kind of tensor: halo, kv, gn, ...
    shape: tuple[int, ...]
    dtype: str
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Exchange:
    """A rank's exchange area: every fresh tensor at its byte offset."""

    bytes: int
    entries: tuple[ExchangeEntry, ...]

    def by_name(self) -> dict[str, ExchangeEntry]:
        return {e.name: e for e in self.entries}


@dataclass(frozen=True)
class Level:
    rows: int
    width: int


@dataclass(frozen=True)
class Plan:
    """Rows of the latent each patch rank owns at every resolution level (export.plan.PatchPlan, as written)."""

    height: int
    width: int
    vae_scale: int
    devices: int
    num_downsamples: int
    latent_height: int
    latent_width: int
    levels: tuple[Level, ...]


@dataclass(frozen=True)
class Weights:
    file: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ModelInfo:
    source: str
    sdxl: bool
    in_channels: int
    out_channels: int
    cross_attention_dim: int
    config: dict  # the diffusers UNet configuration, as exported


@dataclass(frozen=True)
class ConditioningInput:
    """A per-call UNet input that comes from the prompt: `shape` is one guidance branch's row (no batch)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Conditioning:
    """The UNet's prompt-dependent inputs, in graph-input order; `text_len` tokens per prompt."""

    text_len: int
    inputs: tuple[ConditioningInput, ...]

    def find(self, name: str) -> ConditioningInput | None:
        return next((i for i in self.inputs if i.name == name), None)


# ---- pipeline parts (work directories exported from a pipeline) ------------------------------------------------
@dataclass(frozen=True)
class WeightRef:
    """Where a graph's external initializer lives in its data file (also the rows of an engine's metadata)."""

    name: str
    offset: int
    length: int
    dtype: str
    shape: tuple[int, ...]

    def to_json(self) -> list:
        return [self.name, self.offset, self.length, self.dtype, list(self.shape)]

    @classmethod
    def from_json(cls, row: list) -> "WeightRef":
        name, offset, length, dtype, shape = row
        return cls(str(name), int(offset), int(length), str(dtype), tuple(int(d) for d in shape))


@dataclass(frozen=True)
class GraphWeights:
    """A graph's external data file (relative to the work directory) and every initializer it holds; linear
    weights are named `<module>.weight` and stored (in, out) (export/weight_names.py). `unused`: the model's linear
    weights the graph does not read (layers past its outputs), which LoRA layers may name and change nothing."""

    file: str
    tensors: tuple[WeightRef, ...]
    unused: tuple[str, ...] = ()


@dataclass(frozen=True)
class GraphIO:
    name: str
    shape: tuple[int | str, ...]  # a str names a dynamic dimension
    dtype: str
    layer: str | None = None


@dataclass(frozen=True)
class TextEncoder:
    name: str
    file: str
    tokenizer: str  # folder of tokenizer.json, relative to the work directory
    inputs: tuple[GraphIO, ...]
    outputs: tuple[GraphIO, ...]
    max_length: int
    weights: GraphWeights | None = None  # None: exported before text-encoder weights were named (no LoRA)

    @property
    def pooled(self) -> bool:
        return any(o.name == "pooled" for o in self.outputs)


@dataclass(frozen=True)
class Vae:
    file: str
    inputs: tuple[GraphIO, ...]
    outputs: tuple[GraphIO, ...]
    scale: int
    scaling_factor: float
    sample_size: int
    shift_factor: float | None = None
    latents_mean: tuple[float, ...] | float | None = None
    latents_std: tuple[float, ...] | float | None = None


@dataclass(frozen=True)
class PipelineInfo:
    kind: str  # "sd" or "sdxl"
    class_name: str = field(metadata={"key": "class"})
    force_zeros_for_empty_prompt: bool = False


@dataclass(frozen=True)
class SchedulerInfo:
    class_name: str = field(metadata={"key": "class"})
    config: dict = field(default_factory=dict)


# ---- the whole manifest -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    """A work directory's manifest; `root` is the work directory (not part of the JSON)."""

    root: Path = field(metadata={"json": False})
    format: str
    version: int
    model: ModelInfo
    precision: str
    gn_mode: str
    batch: int
    guidance: bool
    cfg_split: bool
    gpus: int
    plan: Plan
    conditioning: Conditioning
    exchange: Exchange
    graph_sets: dict[str, tuple[Segment, ...]]
    step: Segment
    weights: Weights
    export_seconds: float | None = None
    pipeline: PipelineInfo | None = None
    text_encoders: tuple[TextEncoder, ...] | None = None
    vae: Vae | None = None
    scheduler: SchedulerInfo | None = None
    pipeline_export_seconds: float | None = None

    @property
    def devices(self) -> int:
        return self.plan.devices

    @property
    def groups(self) -> int:
        """Guidance groups: 2 when the two guidance branches run on separate halves of the GPUs."""
        return 2 if self.cfg_split else 1

    def segments(self, graph_set: str) -> tuple[Segment, ...]:
        try:
            return self.graph_sets[graph_set]
        except KeyError:
            raise ManifestError(f"{self.root / MANIFEST_FILE} has no graph set {graph_set!r}. Note: expected one of "
                                f"{sorted(self.graph_sets)}") from None

    def unet_segments(self) -> list[Segment]:
        """Every segment of every graph set (not the step graph)."""
        return [s for segments in self.graph_sets.values() for s in segments]

    def graph_path(self, segment: Segment) -> Path:
        return self.root / segment.file

    def with_parts(self, **parts: Any) -> "Manifest":
        """A copy with top-level fields replaced (a pipeline export adds its parts)."""
        return replace(self, **parts)

    def save(self) -> None:
        """Write manifest.json into `root` atomically."""
        path = self.root / MANIFEST_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(encode(self), indent=1))
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, root: str | Path, data: dict) -> "Manifest":
        """The records of a parsed manifest.json, every field checked (ManifestError naming the first bad one)."""
        root = Path(root)
        path = root / MANIFEST_FILE
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            got = (data.get("format"), data.get("version")) if isinstance(data, dict) else (type(data).__name__, None)
            raise ManifestError(f"{path} is not a trt-distri manifest of version {VERSION}. Note: expected format "
                                f"{FORMAT!r} v{VERSION}, got {got[0]!r} v{got[1]}. Fix: export again with this "
                                "version of trt-distri (`trt-distri export ... --overwrite`)")
        try:
            return decode(cls, data, root=root)
        except FieldError as exc:
            raise ManifestError(f"{path} is damaged or from another version: field {exc}. Fix: export again with "
                                "this version of trt-distri (`trt-distri export ... --overwrite`)") from None

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(f"{path} does not exist. Fix: run `trt-distri export ... -o {root}` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"{path} is not valid JSON ({e}). Fix: export again with --overwrite") from None
        return cls.from_json(root, data)


def decode_record(cls: type, data: Any, where: str = "") -> Any:
    """One record of the manifest (a Segment, ...) from its JSON value; ManifestError on a bad field."""
    try:
        return decode(cls, data, where)
    except FieldError as exc:
        raise ManifestError(f"{cls.__name__} record: field {exc}. Fix: export again") from None


# ---- writer helpers (export) -----------------------------------------------------------------------------------
def exchange_layout(outputs: list[dict]) -> dict:
    """Byte offsets of every fresh tensor in a rank's exchange area, in emission order, ALIGN-byte aligned."""
    entries, pos = [], 0
    for out in outputs:
        if out["role"] != Role.FRESH:
            continue
        pos += -pos % ALIGN
        size = nbytes(out["shape"], out["dtype"])
        entries.append({"name": out["name"], "layer": out["layer"], "role": out["name"].split(".")[0],
                        "shape": out["shape"], "dtype": out["dtype"], "offset": pos, "nbytes": size})
        pos += size
    pos += -pos % ALIGN
    return {"bytes": pos, "entries": entries}


def exchange_range(segment_outputs: list[dict], layout: dict) -> list[int]:
    """[start, stop) of the exchange area that a segment's fresh outputs occupy ([0, 0] when it has none)."""
    by_name = {e["name"]: e for e in layout["entries"]}
    fresh = [by_name[o["name"]] for o in segment_outputs if o["role"] == Role.FRESH]
    if not fresh:
        return [0, 0]
    return [min(e["offset"] for e in fresh), max(e["offset"] + e["nbytes"] for e in fresh)]
