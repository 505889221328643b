"""GPU check of loaded ranks kept between generations (api.Generator on CUDA over runtime.gpu.GpuRankPool).

    python benchmarks/reuse_check.py [--gpus N] [--steps S] [--out benchmarks/results/reuse_check.json]

With the embedded tiny pipeline exported for N GPUs: one Generator generates three times (CUDA graphs by default:
its ranks are reused) and once more with cuda_graph=False; the times of each generation and whether every image
equals the first are written as JSON. The first generation carries the one-time costs (first runs, capture).
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np

from trt_distri.api import Generator
from trt_distri.embedded import embedded_workdir


def generations(workdir: Path, steps: int, count: int, cuda_graph: bool | None) -> tuple[list[float], list]:
    gen = Generator(workdir, device="cuda", cuda_graph=cuda_graph)
    try:
        times, images = [], []
        for _ in range(count):
            t0 = time.perf_counter()
            images.append(gen.generate("a red fox", steps=steps).latents)
            times.append(round(time.perf_counter() - t0, 3))
        return times, images
    finally:
        gen.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reuse_check.json")
    args = ap.parse_args()
    workdir = embedded_workdir(args.gpus)
    t0 = time.perf_counter()
    graph_s, graph_latents = generations(workdir, args.steps, 3, None)
    plain_s, plain_latents = generations(workdir, args.steps, 1, False)
    first = graph_latents[0]
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "gpus": args.gpus, "steps": args.steps,
              "model": "embedded tiny pipeline (fp32)", "default_generations_s": graph_s,
              "no_cuda_graph_generation_s": plain_s[0],
              "max_abs_diff_to_first": [float(np.abs(x - first).max()) for x in graph_latents + plain_latents],
              "total_s": round(time.perf_counter() - t0, 1),
              "command": f"python benchmarks/reuse_check.py --gpus {args.gpus} --steps {args.steps}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
