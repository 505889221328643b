"""Helpers shared by tests (importable as `from helpers import rel_err`; also the `rel_err` fixture)."""
from __future__ import annotations

import math

import numpy as np


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device and dtype
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (Frobenius) as a float, for numpy arrays and torch tensors of the same shape."""
    a, b = _to_numpy(a), _to_numpy(b)
    if a.shape != b.shape:
        raise ValueError(f"rel_err needs equal shapes. Note: got {a.shape} and {b.shape}")
    diff, ref = float(np.linalg.norm(a - b)), float(np.linalg.norm(b))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def manifest_json(**fields) -> dict:
    """A complete manifest.json object of the current version for a one-rank work directory, with `fields`
    replacing the top-level entries (hand-made work directories: graph_sets, weights, precision, ...)."""
    from trt_distri.manifest import FORMAT, VERSION

    plan = {"height": 64, "width": 64, "vae_scale": 8, "devices": 1, "num_downsamples": 0, "latent_height": 8,
            "latent_width": 8, "levels": [{"rows": 8, "width": 8}]}
    step = {"name": "step.000", "file": "graphs/step.000.onnx", "exchange_range": [0, 0], "inputs": [],
            "outputs": []}
    data = {"format": FORMAT, "version": VERSION, "precision": "fp32", "gn_mode": "corrected-async", "batch": 1,
            "guidance": False, "cfg_split": False, "gpus": 1, "plan": plan,
            "model": {"source": "hand-made", "sdxl": False, "in_channels": 4, "out_channels": 4,
                      "cross_attention_dim": 8, "config": {}},
            "conditioning": {"text_len": 77, "inputs": [{"name": "encoder_hidden_states", "shape": [77, 8]}]},
            "exchange": {"bytes": 0, "entries": []}, "graph_sets": {"warmup": [], "steady": []}, "step": step,
            "weights": {"file": "graphs/weights.bin", "bytes": 0, "sha256": ""}}
    return {**data, **fields}
