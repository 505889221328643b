"""ONNX graphs of a pipeline's text encoders and VAE decoder, traced with torch.onnx.export (fp32).

Unlike the UNet (emitted node by node, because it is cut into patches), these run whole on one device, so tracing
is enough. Each graph is wrapped so that its outputs are exactly what the pipeline consumes, under names chosen
here:
- SD 1.x/2.x text encoder: `input_ids` (1, 77) int64 -> `hidden` (1, 77, D), the last hidden state (final norm);
- SDXL text encoders: `hidden` is the penultimate hidden state; the second also gives `pooled` (1, P), the
  projected end-of-text embedding;
- VAE decoder: `latents` (1, 4, h, w) fp32, already divided by the scaling factor -> `image` (1, 3, 8h, 8w) in
  [-1, 1]; h and w are dynamic, so the same graph decodes whole latents and tiles (trt_distri.vae_tiles).
Weights go to one external data file per graph, so no graph meets protobuf's 2 GB limit (SDXL's second encoder
holds 2.8 GB in fp32). A text encoder's linear weights are named after their modules (export/weight_names.py) and
its entry lists every external weight (name, offset, length, dtype, shape): LoRA adapters are applied to them in
place at run time, without onnx (engines/lora_apply.py).
"""
from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import torch

from trt_distri.config import TEXT_LEN

log = logging.getLogger(__name__)
OPSET = 18


class _TextEncoder(torch.nn.Module):
    def __init__(self, encoder, penultimate: bool, pooled: bool) -> None:
        super().__init__()
        self.encoder, self.penultimate, self.pooled = encoder, penultimate, pooled

    def forward(self, input_ids: torch.Tensor):
        out = self.encoder(input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-2] if self.penultimate else out.last_hidden_state
        return (hidden, out.text_embeds) if self.pooled else hidden


class _VaeDecoder(torch.nn.Module):
    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, return_dict=False)[0]


def export_text_encoder(encoder, path: Path, sdxl: bool, pooled: bool, text_len: int = TEXT_LEN) -> dict:
    """Write the encoder's graph to `path`; return its manifest entry, less the files' paths (the caller knows
    them relative to the work directory): `weight_tensors` are the graph's external weights, `unused_weights` the
    encoder's linear weights that the graph does not read."""
    from trt_distri.export.weight_names import name_linear_weights

    encoder = encoder.float().eval()
    module = _TextEncoder(encoder, penultimate=sdxl, pooled=pooled)
    ids = torch.zeros(1, text_len, dtype=torch.int64)
    outputs = ["hidden", "pooled"] if pooled else ["hidden"]
    named, unused = _export(module, (ids,), path, ["input_ids"], outputs, None,
                            lambda m: name_linear_weights(m, encoder))
    log.debug("%s: %d linear weights named after their modules, %d unused", path.name, named, len(unused))
    cfg = encoder.config
    entry = {"inputs": [{"name": "input_ids", "shape": [1, text_len], "dtype": "int64"}],
             "outputs": [{"name": "hidden", "shape": [1, text_len, cfg.hidden_size], "dtype": "float32",
                          "layer": "penultimate" if sdxl else "last"}],
             "max_length": text_len, "weight_tensors": _external_weights(path), "unused_weights": unused}
    if pooled:
        entry["outputs"].append({"name": "pooled", "shape": [1, cfg.projection_dim], "dtype": "float32"})
    return entry


def export_vae_decoder(vae, path: Path, sample_latent: int = 8) -> dict:
    """Write the VAE decoder (post_quant_conv + decoder) with dynamic height and width; return its entry."""
    module = _VaeDecoder(vae.float().eval())
    latents = torch.zeros(1, vae.config.latent_channels, sample_latent, sample_latent)
    dynamic = {"latents": {2: "h", 3: "w"}, "image": {2: "H", 3: "W"}}
    _export(module, (latents,), path, ["latents"], ["image"], dynamic)
    cfg = vae.config
    scale = 2 ** (len(cfg.block_out_channels) - 1)
    return {"inputs": [{"name": "latents", "shape": [1, cfg.latent_channels, "h", "w"], "dtype": "float32"}],
            "outputs": [{"name": "image", "shape": [1, cfg.out_channels, "H", "W"], "dtype": "float32"}],
            "scale": scale, "scaling_factor": float(cfg.scaling_factor),
            "shift_factor": _optional(cfg, "shift_factor"), "latents_mean": _optional(cfg, "latents_mean"),
            "latents_std": _optional(cfg, "latents_std"), "sample_size": int(cfg.sample_size)}


def _optional(cfg, key: str):
    value = cfg.get(key) if hasattr(cfg, "get") else getattr(cfg, key, None)
    return None if value is None else (list(map(float, value)) if isinstance(value, (list, tuple)) else float(value))


def _external_weights(path: Path) -> list:
    """Every initializer of the graph at `path` kept in its external data file, as manifest records."""
    import onnx

    from trt_distri.engines.ort_weights import engine_weights
    from trt_distri.typed_json import encode

    return encode(engine_weights(onnx.load(str(path), load_external_data=False)))


def _export(module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic: dict | None,
            edit=None):
    """Trace into a scratch folder (the tracer writes one file per tensor above 2 GB), apply `edit` to the
    model proto (returns what `edit` returns), then save the graph with every weight in one `<graph>.data` file
    beside it."""
    import onnx

    scratch = path.parent / f".{path.stem}.trace"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings on shape checks that are constant for these inputs
            torch.onnx.export(module, args, str(scratch / path.name), input_names=inputs, output_names=outputs,
                              dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, external_data=True)
        model = onnx.load(str(scratch / path.name), load_external_data=True)
        result = edit(model) if edit is not None else None
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.debug("exported %s", path)
    return result
