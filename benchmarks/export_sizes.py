"""Export time, graph count and bytes on disk for the SDXL-architecture UNet (random weights), fp16.

Usage: python benchmarks/export_sizes.py [--sizes 2048 3840] [--devices 2 4] [--workdir /tmp/trt-distri-sizes]
Writes benchmarks/results/export_sizes.{json,md}. Each work directory is deleted after it is measured.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import shutil
import time
from pathlib import Path

import torch

from trt_distri.config import ExportRequest, Precision
from trt_distri.export.exporter import export_unet
from trt_distri.manifest import Manifest
from trt_distri.models import random_unet

RESULTS = Path(__file__).parent / "results"


def measure(unet, size: int, devices: int, root: Path) -> dict:
    out = root / f"sdxl-{size}-n{devices}"
    req = ExportRequest("random:sdxl", size, size, devices, out, cfg_split=False, precision=Precision.FP16,
                        overwrite=True)
    start = time.perf_counter()
    manifest = Manifest.load(export_unet(req, unet=unet).parent)
    seconds = time.perf_counter() - start
    files = list((out / "graphs").iterdir())
    graph_bytes = sum(f.stat().st_size for f in files if f.suffix == ".onnx")
    row = {"size": size, "devices": devices, "batch": req.batch, "export_s": round(seconds, 1),
           "warmup_graphs": len(manifest.segments("warmup")), "steady_graphs": len(manifest.segments("steady")),
           "graph_bytes": graph_bytes, "weights_bytes": manifest.weights.bytes,
           "exchange_bytes_per_rank": manifest.exchange.bytes, "exchange_entries": len(manifest.exchange.entries)}
    shutil.rmtree(out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 3840])
    ap.add_argument("--devices", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/trt-distri-sizes"))
    args = ap.parse_args()
    start = time.perf_counter()
    unet = random_unet("sdxl", dtype=torch.float16)
    load_s = time.perf_counter() - start
    rows = [measure(unet, s, n, args.workdir) for s in args.sizes for n in args.devices]
    info = {"date": datetime.date.today().isoformat(), "host": f"{platform.processor() or platform.machine()}, "
            f"CPU only", "command": "python benchmarks/export_sizes.py", "model": "sdxl (random weights), fp16",
            "unet_init_s": round(load_s, 1), "peak_rss_gib": round(resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 2**20, 1), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_sizes.json").write_text(json.dumps(info, indent=1))
    lines = [f"# SDXL UNet export: sizes and times ({info['date']})", "",
             f"Command: `{info['command']}` on {info['host']}; model {info['model']}; guidance batch 2 per patch "
             f"(no guidance split). UNet init {info['unet_init_s']} s, peak RSS {info['peak_rss_gib']} GiB.", "",
             "| size | n | export s | warmup graphs | steady graphs | graphs MB | weights MB | exchange MB/rank |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['devices']} | {r['export_s']} | {r['warmup_graphs']} | "
                     f"{r['steady_graphs']} | {r['graph_bytes'] / 1e6:.1f} | {r['weights_bytes'] / 1e6:.0f} | "
                     f"{r['exchange_bytes_per_rank'] / 1e6:.1f} |")
    (RESULTS / "export_sizes.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
