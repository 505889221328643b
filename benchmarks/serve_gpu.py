"""`trt-distri serve` on a GPU host: each request's latency against the API's steady-state generation time.

  python benchmarks/serve_gpu.py --size 2048 --gpus 2 --requests 10 --steps 30 --root /tmp/serve-bench

1. Exports the SDXL architecture with random weights at SIZE x SIZE for GPUS GPUs (fp16 UNet; reused from ROOT when
   already there) and prepares its ONNX Runtime graphs.
2. API: a `trt_distri.api.Generator` on the GPUs generates --api-warmup images, then --api-runs timed ones; the
   steady state is the median of the timed ones' `Result.seconds` (prompt to image, ranks kept loaded). It is closed
   before the server starts, so that both never share the GPUs.
3. Server: `trt-distri serve ROOT/work --device cuda` in a subprocess; one warm-up request (recorded apart: it pays
   the CUDA graph capture, as the API's warm-up images do), then --requests sequential requests to /v1/generate,
   each timed by the client from sending the request to the last byte of the PNG. SIGTERM stops the server.
Recorded: device (nvidia-smi -L, driver), date, command, the API's times, each request's latency and its ratio to the
steady state, and whether every request is within 5 % of it (none more than 5 % slower; faster is fine). Results: benchmarks/results/serve_gpu.json (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from trt_distri.api import Generator
from trt_distri.cli_serve import start_serve_process
from trt_distri.config import ExportRequest, Precision
from trt_distri.engines.build import build_workdir
from trt_distri.export.pipeline_export import export_pipeline
from trt_distri.manifest import MANIFEST_FILE

from bench_report import driver_version

RESULTS = Path(__file__).parent / "results"
PROMPT = "a lighthouse on a cliff at dawn, detailed oil painting"
TOLERANCE = 0.05


def prepare(args: argparse.Namespace) -> Path:
    name = args.model.replace(":", "-")
    work = args.root / f"{name}-{args.size}-g{args.gpus}-{args.dtype}{'-split' if args.cfg_split else ''}"
    if not (work / MANIFEST_FILE).is_file():
        export_pipeline(ExportRequest(model=args.model, height=args.size, width=args.size, gpus=args.gpus,
                                      out_dir=work, cfg_split=args.cfg_split, precision=Precision(args.dtype)))
    build_workdir(work, "ort")
    return work


def api_times(work: Path, device: str, steps: int, warmup: int, runs: int) -> list[float]:
    with Generator(work, device) as gen:
        for i in range(warmup):
            gen.generate(PROMPT, steps=steps, seed=i)
        return [round(gen.generate(PROMPT, steps=steps, seed=100 + i).seconds, 3) for i in range(runs)]


def timed_request(url: str, steps: int, seed: int) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=3600)
    body = json.dumps({"prompt": PROMPT, "steps": steps, "seed": seed})
    start = time.perf_counter()
    try:
        conn.request("POST", "/v1/generate", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        latency = time.perf_counter() - start
    finally:
        conn.close()
    if resp.status != 200:
        raise SystemExit(f"request {seed} failed with {resp.status}: {data[:500]!r}")
    return {"seed": seed, "latency_s": round(latency, 3),
            "generation_s": float(resp.getheader("X-Generation-Seconds")), "png_bytes": len(data)}


def serve_times(work: Path, device: str, steps: int, requests: int) -> tuple[dict, list[dict]]:
    proc, url = start_serve_process(work, "--device", device, "--timeout", "3600", timeout_s=1800)
    try:
        warm = timed_request(url, steps, 0)
        return warm, [timed_request(url, steps, 1 + i) for i in range(requests)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:sdxl", help="what to export (default random:sdxl)")
    parser.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke test of the script")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--cfg-split", action="store_true", help="each guidance branch on half of the GPUs")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--api-warmup", type=int, default=2)
    parser.add_argument("--api-runs", type=int, default=5)
    parser.add_argument("--root", type=Path, default=Path("/tmp/serve-bench"))
    parser.add_argument("--out", type=Path, default=RESULTS / "serve_gpu.json")
    args = parser.parse_args()
    work = prepare(args)
    api = api_times(work, args.device, args.steps, args.api_warmup, args.api_runs)
    steady = statistics.median(api)
    warm, rows = serve_times(work, args.device, args.steps, args.requests)
    for row in rows:
        row["ratio"] = round(row["latency_s"] / steady, 4)
    gpus = _gpus() if args.device == "cuda" else ["cpu"]
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": gpus,
              "driver": driver_version(), "host": os.uname().nodename,
              "command": "python benchmarks/serve_gpu.py " + " ".join(sys.argv[1:]),
              "model": args.model, "dtype": args.dtype, "size": args.size, "gpus": args.gpus, "cfg_split": args.cfg_split, "steps": args.steps,
              "api_seconds": api, "api_steady_s": steady, "serve_warmup_request": warm, "requests": rows,
              "max_ratio": max(r["ratio"] for r in rows),
              "within_5_percent": all(r["ratio"] <= 1 + TOLERANCE for r in rows)}  # none more than 5 % slower
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("api_steady_s", "max_ratio", "within_5_percent")}))
    print(args.out)


def _gpus() -> list[str]:
    return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()


if __name__ == "__main__":
    main()
