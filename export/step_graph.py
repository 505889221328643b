"""The scheduler step as a tiny fp32 graph, so the runtime steps latents on the device with the same backend.

Inputs: `noise_pred` (G, C, h, w): G = 2 with guidance ([uncond; cond], from one UNet call of batch 2, or from the
two guidance groups' batch-1 calls when the guidance split applies), else 1; `latents`,
`latents_prev`, `eps_prev` (1, C, h, w), `coef` (6,) = [a, d, b, c, guidance_scale, next_input_scale] of
trt_distri.schedule.Step. Outputs: `latents_next` = a x + d x_prev + b eps + c eps_prev, `eps` (guided noise), and
`sample_next` = next_input_scale * latents_next repeated to the UNet's batch `unet_batch`.
"""
from __future__ import annotations

import numpy as np

from trt_distri.export.onnx_builder import Builder

def step_graph(unet_batch: int, channels: int, rows: int, width: int, guided: bool) -> Builder:
    b = Builder(np.dtype(np.float32))
    b.scope = "step"
    shape = (1, channels, rows, width)
    noise = b.input("noise_pred", (2 if guided else 1, channels, rows, width), np.float32, "noise_pred")
    x = b.input("latents", shape, np.float32, "latents")
    x_prev = b.input("latents_prev", shape, np.float32, "latents_prev")
    eps_prev = b.input("eps_prev", shape, np.float32, "eps_prev")
    coef = b.input("coef", (6,), np.float32, "coef")
    k = [b.op("Gather", [coef, b.const(i)], (), attrs={"axis": 0}) for i in range(6)]
    if guided:
        uncond, cond = b.slice(noise, 0, 0, 1), b.slice(noise, 0, 1, 2)
        eps = b.add(uncond, b.mul(k[4], b.op("Sub", [cond, uncond], shape), shape), shape)
    else:
        eps = noise
    nxt = b.mul(k[0], x, shape)
    for coefficient, term in ((k[1], x_prev), (k[2], eps), (k[3], eps_prev)):
        nxt = b.add(nxt, b.mul(coefficient, term, shape), shape)
    scaled = b.mul(k[5], nxt, shape)
    sample = b.concat([scaled] * unet_batch, axis=0)
    b.output(nxt, "latents_next", "latents")
    b.output(eps, "eps", "eps")
    b.output(sample, "sample_next", "sample")
    return b
