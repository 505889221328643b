"""Issue 15 on a GPU host: the first image of a fresh `trt-distri run` against the steady-state generation of the
Python API, and peak device memory per GPU (nvidia-smi memory.used, sampled every 100 ms), for one case.

  python benchmarks/first_image.py --size 2048 --gpus 2 --steps 30 --root /tmp/fi --out OUT/first_image_2048.json

Exports the SDXL architecture with random weights as a whole pipeline (fp16 UNet, text encoders, VAE) for SIZE on
GPUS GPUs (patches only), builds its ONNX Runtime engines, then
1. runs `trt-distri run WORKDIR --prompt ... --device cuda --gpus GPUS --steps STEPS -o image.png` as a fresh
   process (wall time from start to exit; its own summary line gives the stages);
2. in this process, creates `trt_distri.api.Generator(WORKDIR, device="cuda")` and generates REPEATS images of the
   same prompt: create time, first generation, and the median of the later ones (steady state).
Peak memory is sampled over each of the two, per GPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from peak_memory import NvidiaSmiPeak

PROMPT = "a red fox in the snow, detailed photograph"


def export(size: int, gpus: int, root: Path) -> Path:
    workdir = root / f"sdxl-{size}-g{gpus}"
    if not (workdir / "manifest.json").is_file():
        cmd = [sys.executable, "-c", "from trt_distri.cli import main; raise SystemExit(main())", "export",
               "--random-weights", "sdxl", "--height", str(size), "--width", str(size), "--gpus", str(gpus),
               "--no-cfg-split", "--dtype", "fp16", "--overwrite", "-o", str(workdir)]
        subprocess.run(cmd, check=True)
    from trt_distri.engines.build import build_workdir

    build_workdir(workdir, "ort")
    return workdir


def fresh_run(workdir: Path, gpus: int, steps: int) -> dict:
    cmd = [sys.executable, "-c", "from trt_distri.cli import main; raise SystemExit(main())", "run", str(workdir), "--prompt", PROMPT, "--device", "cuda", "--gpus", str(gpus),
           "--steps", str(steps), "--seed", "0", "-o", str(workdir / "fresh.png"), "--overwrite"]
    start = time.perf_counter()
    with NvidiaSmiPeak() as peak:
        done = subprocess.run(cmd, capture_output=True, text=True)
    return {"command": " ".join(cmd), "rc": done.returncode, "wall_s": round(time.perf_counter() - start, 2),
            "summary": done.stderr.strip().splitlines()[-3:], "peak_gib": peak.gib}


def api_runs(workdir: Path, steps: int, repeats: int) -> dict:
    from trt_distri.api import Generator

    with NvidiaSmiPeak() as peak:
        start = time.perf_counter()
        generator = Generator(workdir, device="cuda")
        create_s = time.perf_counter() - start
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            generator.generate(PROMPT, steps=steps, seed=0)
            seconds.append(time.perf_counter() - t0)
        generator.close()
    return {"create_s": round(create_s, 2), "generation_s": [round(s, 2) for s in seconds],
            "steady_s": round(statistics.median(seconds[1:]), 2), "peak_gib": peak.gib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path("/tmp/first-image"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import torch

    workdir = export(args.size, args.gpus, args.root)
    record = {"size": args.size, "gpus": args.gpus, "steps": args.steps, "device": torch.cuda.get_device_name(0),
              "date": datetime.date.today().isoformat(), "command": " ".join(["python"] + sys.argv)}
    record["fresh_run"] = fresh_run(workdir, args.gpus, args.steps)
    record["api"] = api_runs(workdir, args.steps, args.repeats)
    record["first_over_steady"] = round(record["fresh_run"]["wall_s"] / record["api"]["steady_s"], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
