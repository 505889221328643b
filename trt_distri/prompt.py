"""Prompts to text conditioning with a work directory's tokenizers and exported text encoders (no torch).

Mirrors diffusers' `encode_prompt`: SD 1.x/2.x condition on the encoder's last hidden state; SDXL on the two
encoders' penultimate hidden states joined along the features, plus the second encoder's pooled embedding and the
size/crop `time_ids`. An empty negative prompt is diffusers' `negative_prompt=None`: SDXL pipelines with
`force_zeros_for_empty_prompt` then use zeros, other pipelines encode "".
Tokenizers are `tokenizer.json` files read by the `tokenizers` library; a prompt longer than the encoder's limit
is truncated with a warning, as diffusers does.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_distri.errors import ManifestError, MissingPackageError
from trt_distri.manifest import Manifest, Plan, TextEncoder

log = logging.getLogger(__name__)


@dataclass
class PromptEmbeddings:
    """Text conditioning of both guidance branches (fp32); the pieces of runtime.generation.GenerationInputs."""

    cond: np.ndarray  # (1, S, D)
    uncond: np.ndarray | None  # (1, S, D); None without guidance
    text_embeds: np.ndarray | None = None  # (2, P) [uncond; cond] or (1, P); SDXL only
    time_ids: np.ndarray | None = None  # (2, 6) or (1, 6); SDXL only


def default_time_ids(plan: Plan, rows: int) -> np.ndarray:
    """SDXL's size/crop conditioning for the work directory's image size, no crop: (rows, 6) fp32."""
    size = [plan.height, plan.width, 0, 0, plan.height, plan.width]
    return np.asarray([size] * rows, np.float32)


class PromptTokenizer:
    """CLIP tokenization to a fixed length: special tokens, truncation, padding with the tokenizer's pad token."""

    def __init__(self, folder: Path, max_length: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise MissingPackageError("prompts need the package 'tokenizers'. Fix: pip install tokenizers") from exc
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ManifestError(f"{path} does not exist. Note: expected the tokenizer saved by `trt-distri export`. "
                                "Fix: export the pipeline again")
        self.max_length = max_length
        self._raw = Tokenizer.from_file(str(path))
        self._raw.no_truncation()
        self._raw.no_padding()
        self._fixed = Tokenizer.from_file(str(path))
        pad = _pad_token(folder)
        pad_id = self._fixed.token_to_id(pad)
        if pad_id is None:
            raise ManifestError(f"the pad token {pad!r} of {folder} is not in its vocabulary. Fix: export again")
        self._fixed.enable_truncation(max_length)
        self._fixed.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad)

    def __call__(self, text: str) -> np.ndarray:
        """Token ids (1, max_length) int64, cut to the encoder's length (see `overflow`)."""
        return np.asarray([self._fixed.encode(text).ids], np.int64)

    def overflow(self, text: str) -> tuple[int, str]:
        """(tokens of `text` with special tokens, the start of what is cut away: "" when it fits)."""
        full = self._raw.encode(text).ids
        if len(full) <= self.max_length:
            return len(full), ""
        return len(full), self._raw.decode(full[self.max_length - 1:self.max_length + 7])


def _weight_store(backend, workdir: Path, encoder: TextEncoder, device: int | None):
    """A shared store over the encoder's external weights (None: not listed in the manifest, or sharing off)."""
    if encoder.weights is None:
        return None
    return backend.shared_weight_store(workdir / encoder.weights.file, device)


def _pad_token(folder: Path) -> str:
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text()) if config.is_file() else {}
    pad = data.get("pad_token") or data.get("eos_token") or "<|endoftext|>"
    return pad["content"] if isinstance(pad, dict) else str(pad)


class PromptEncoder:
    """The tokenizers and text-encoder sessions of a work directory (ONNX Runtime, CPU or one GPU), with LoRA
    `adapters` ((adapter, scale) pairs, trt_distri.lora) applied to the encoders' weights. Encoders whose weights
    the manifest lists read them from a store of their own (engines/ort_weights.py), which `set_adapters` writes;
    `close` frees the sessions, then the stores."""

    def __init__(self, workdir: Path, manifest: Manifest, device: int | None = None, adapters=()) -> None:
        from trt_distri.engines.backend import LoadOptions, onnx_runner
        from trt_distri.engines.lora_apply import TextEncoderLoras

        if manifest.text_encoders is None or manifest.pipeline is None:
            raise ManifestError(f"{workdir} has no text encoders: it was exported from a UNet alone. Note: expected "
                                "the manifest key 'text_encoders'. Fix: export a pipeline folder (with "
                                "text_encoder/, tokenizer/, vae/) or random:<name> with `trt-distri export`")
        self.manifest, self.pipeline = manifest, manifest.pipeline
        backend = onnx_runner()
        stores = {e.name: _weight_store(backend, workdir, e, device) for e in manifest.text_encoders}
        self.parts = [(PromptTokenizer(workdir / e.tokenizer, e.max_length),
                       backend.load(workdir / e.file, LoadOptions(device, transient=True, shared_weights=(
                           None if stores[e.name] is None else (stores[e.name], e.weights.tensors)))), e)
                      for e in manifest.text_encoders]
        self._stores = [store for store in stores.values() if store is not None]
        self.loras = TextEncoderLoras({e.name: (e.weights.tensors if e.weights else (), stores[e.name])
                                       for e in manifest.text_encoders})
        if adapters:
            self.set_adapters(adapters)

    def set_adapters(self, adapters) -> None:
        """Apply exactly the text-encoder layers of these (adapter, scale) pairs ([]: the base weights)."""
        self.loras.set(adapters)

    def close(self) -> None:
        """Free the sessions, then the weight stores they read (idempotent)."""
        self.parts = []
        self.loras.close()
        for store in self._stores:
            store.close()
        self._stores = []

    @property
    def sdxl(self) -> bool:
        return self.pipeline.kind == "sdxl"

    def _encode(self, text: str) -> tuple[np.ndarray, np.ndarray | None]:
        hidden, pooled = [], None
        for tokenizer, session, _ in self.parts:
            out = session.run_host({"input_ids": tokenizer(text)})
            hidden.append(out["hidden"])
            pooled = out.get("pooled", pooled)
        return np.concatenate(hidden, axis=-1).astype(np.float32), pooled

    def warn_if_cut(self, text: str, name: str) -> None:
        """One short warning when `text` is longer than the first text encoder takes (as diffusers, it is cut)."""
        tokenizer = self.parts[0][0]
        tokens, cut = tokenizer.overflow(text)
        if cut:
            log.warning("the %s is %d tokens long and the text encoder takes %d: it was truncated before %r...",
                        name, tokens, tokenizer.max_length, cut)

    def encode(self, prompt: str, negative_prompt: str = "", guided: bool = True) -> PromptEmbeddings:
        self.warn_if_cut(prompt, "prompt")
        if guided:
            self.warn_if_cut(negative_prompt, "negative prompt")
        cond, pooled = self._encode(prompt)
        uncond = neg_pooled = None
        if guided:
            if not negative_prompt and self.pipeline.force_zeros_for_empty_prompt:
                uncond, neg_pooled = np.zeros_like(cond), None if pooled is None else np.zeros_like(pooled)
            else:
                uncond, neg_pooled = self._encode(negative_prompt)
        if not self.sdxl:
            return PromptEmbeddings(cond, uncond)
        text = np.concatenate([neg_pooled, pooled]) if guided else pooled
        return PromptEmbeddings(cond, uncond, text.astype(np.float32),
                                default_time_ids(self.manifest.plan, 2 if guided else 1))
