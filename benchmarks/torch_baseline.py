"""The baseline every user knows: the diffusers UNet in PyTorch on one GPU (for benchmarks/bench.py)."""
from __future__ import annotations

import numpy as np


def torch_baseline(unet_cpu, size: int, steps: int = 5) -> dict:
    """The diffusers UNet in PyTorch on GPU 0: fp16, SDPA, batch 2 (guidance), eager and replayed as one CUDA
    graph; device-event medians."""
    import copy

    import torch

    from trt_distri.models import TEXT_EMBEDS_DIM

    unet = copy.deepcopy(unet_cpu).cuda()  # the CPU model stays for the next size
    b, h = 2, size // 8
    x = torch.randn(b, 4, h, h, device="cuda", dtype=torch.float16)
    t = torch.tensor([500.0], device="cuda")
    enc = torch.randn(b, 77, 2048, device="cuda", dtype=torch.float16)
    added = {"text_embeds": torch.randn(b, TEXT_EMBEDS_DIM["sdxl"], device="cuda", dtype=torch.float16),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * b, device="cuda", dtype=torch.float16)}

    def call():
        return unet(x, t, enc, added_cond_kwargs=added).sample

    def timed(fn) -> float:
        times = []
        for i in range(steps + 2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(end))
        return float(np.median(times))

    out = {"size": size, "torch": torch.__version__}
    with torch.no_grad():
        out["eager_ms"] = round(timed(call), 1)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    call()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                call()
            out["cuda_graph_ms"] = round(timed(graph.replay), 1)
            del graph
        except Exception as exc:  # noqa: BLE001 - recorded: the eager figure still stands
            out["cuda_graph_error"] = f"{type(exc).__name__}: {exc}"
    out["projected_50_s"] = round(50 * min(out["eager_ms"], out.get("cuda_graph_ms", 1e9)) / 1000, 2)
    return out  # the model and graph are freed with this frame
