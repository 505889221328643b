"""Where the time of an asynchronous step goes: GPU kernel time by kind, one rank of a work directory on one GPU.

  python benchmarks/profile_gpu.py WORKDIR [--rank R] [--steps 6] [--out profile.json]

Runs rank R of WORKDIR alone on GPU 0 with the exchange skipped (the no-comm diagnostic: the compute of one patch,
which is what the gap between an N-GPU step and 1/N of a 1-GPU step is made of), every step asynchronous. One run
warms up (ONNX Runtime picks its convolution algorithms on the first run), the second is traced with PyTorch's
profiler (CUPTI sees every kernel of the process, ONNX Runtime's included). Reported per step: device-event step
time, summed kernel time by kind (convolution, GEMM, attention, normalisation, copies/concatenation,
element-wise, other), the busy fraction (kernel time / step time: below 1, the GPU waits for the host), and the
25 costliest kernels. torch is needed here only for its profiler.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from trt_distri.cli_run import random_inputs
from trt_distri.manifest import Manifest
from trt_distri.runtime.cuda import CudaDevice
from trt_distri.runtime.executor import RankExecutor, RunOptions
from trt_distri.runtime.generation import rank_inputs
from trt_distri.runtime.layout import RankLayout
from trt_distri.runtime.sessions import session_opener

KINDS = [  # first match wins
    ("attention", r"fmha|flash|attention|mha|softmax"),
    ("convolution", r"conv|fprop|implicit|winograd|dgrad|nhwc|nchw"),
    ("gemm", r"gemm|nvjet|cublas|cutlass|xmma|matmul"),
    ("normalisation", r"norm|reduce|welford|mean|variance"),
    ("copy/concat", r"concat|copy|slice|transpose|memcpy|memset|pad|gather|split"),
    ("element-wise", r"elementwise|binary|unary|add|mul|cast|gelu|silu|sigmoid|sub|div|sqrt|pow|erf|where|expand"),
]


class SoloComm:
    """This rank alone: no exchange is made (no_comm); the final gather keeps only this rank's patch."""

    def __init__(self, rank: int, size: int, device: CudaDevice) -> None:
        self.rank, self.size, self.dev = rank, size, device

    def all_gather(self, src: int, dst: int, nbytes: int, stream: int) -> None:
        self.dev.copy(dst + self.rank * nbytes, src, nbytes, stream)

    def exchange(self, *args) -> None:
        raise AssertionError("profile runs skip the exchange")

    def swap_with_partner(self, *args) -> None:
        raise SystemExit("profile a work directory without the guidance split")

    def close(self) -> None:
        pass


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, low)), "other")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    manifest = Manifest.load(args.workdir)
    device = CudaDevice(0)
    options = RunOptions(warmup_steps=-1, no_comm=True)  # every step asynchronous, no exchange
    executor = RankExecutor(manifest, RankLayout.from_manifest(manifest, args.rank),
                            session_opener(manifest, "ort", 0), device, SoloComm(args.rank, manifest.devices, device),
                            options)
    inputs = random_inputs(manifest, args.steps, "ddim", 5.0, seed=0)
    latents, cond = rank_inputs(inputs, manifest, args.rank)
    executor.generate(latents, cond, inputs.schedule)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        executor.generate(latents, cond, inputs.schedule)
        torch.cuda.synchronize()
    step_ms = statistics.median(executor.times.async_ms)
    kernels: dict[str, float] = {}
    for avg in prof.key_averages():
        us = getattr(avg, "self_device_time_total", None) or getattr(avg, "self_cuda_time_total", 0)
        if us:
            kernels[avg.key] = kernels.get(avg.key, 0.0) + us / 1000 / args.steps
    by_kind: dict[str, float] = {}
    for name, ms in kernels.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + ms
    busy = sum(kernels.values())
    report = {"workdir": str(args.workdir), "rank": args.rank, "devices": manifest.devices,
              "gpu": torch.cuda.get_device_name(0), "steps": args.steps, "step_ms": round(step_ms, 2),
              "kernel_ms_per_step": round(busy, 2), "busy_fraction": round(busy / step_ms, 3),
              "by_kind_ms": {k: round(v, 2) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
              "top_kernels_ms": [[name[:140], round(ms, 3)] for name, ms in
                                 sorted(kernels.items(), key=lambda kv: -kv[1])[:25]],
              "sessions": len(executor.sessions)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
