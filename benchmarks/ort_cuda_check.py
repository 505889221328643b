"""GPU check of the ONNX Runtime backend: CUDA sessions bound to device buffers against the CPU provider.

Exports the tiny SDXL-shaped UNet (fp16, 2 patch devices) unless --workdir names an exported one, builds its ORT
engines (`trt-distri build --backend ort`), records every segment's inputs on rank 0 while the export simulator
runs one synchronous and one asynchronous step, then runs every segment twice from those inputs:
on the CPU provider with host arrays (`run_host`) and on the CUDA provider with every input and output bound to
device memory (cupy allocations) and run on a caller-owned stream (`bind` + `run_async`). Prints the device, the
date and the largest relative error (||cuda - cpu|| / ||cpu||) per segment; writes a JSON under $OUT when set.

    python benchmarks/ort_cuda_check.py [--workdir DIR] [--tolerance 1e-2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from trt_distri.engines.backend import LoadOptions, get_backend
from trt_distri.engines.build import build_workdir
from trt_distri.engines.cache import EngineCache
from trt_distri.manifest import GRAPH_SETS, Manifest
import oracle_path  # noqa: F401 - tests/oracles on sys.path
from oracles.simulate import Simulator


def export_tiny(out: Path) -> Path:
    from trt_distri.config import ExportRequest, Precision
    from trt_distri.export.exporter import export_unet

    export_unet(ExportRequest("random:tiny-sdxl", 64, 64, 2, out, cfg_split=False, precision=Precision.FP16))
    return out


class _Recorder(Simulator):
    """The export simulator, keeping the first feeds each segment received (rank 0): realistic inputs."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.feeds: dict[str, dict[str, np.ndarray]] = {}

    def _session(self, segment):
        session, feeds = super()._session(segment), self.feeds

        class _Recording:
            def run(self, names, inputs):
                feeds.setdefault(segment.name, {k: np.array(v) for k, v in inputs.items()})
                return session.run(names, inputs)

        return _Recording()


def segment_feeds(workdir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Each segment's inputs on rank 0 during one synchronous and one asynchronous step of random latents."""
    sim = _Recorder(workdir)
    shapes = {i.role.value: i.shape for s in sim.manifest.unet_segments() for i in s.inputs}
    rng = np.random.default_rng(0)
    sample = rng.standard_normal([*shapes["sample"][:2], shapes["sample"][2] * sim.n, shapes["sample"][3]])
    enc = rng.standard_normal(shapes["encoder_hidden_states"])
    added = {k: rng.standard_normal(shapes[k]) for k in ("text_embeds", "time_ids") if k in shapes}
    for sync in (True, False):
        sim(sample, [500.0], enc, added or None, sync=sync)
    return sim.feeds


def run_cuda(session, feeds: dict[str, np.ndarray], stream, repeats: int) -> tuple[dict[str, np.ndarray], float]:
    import cupy as cp

    buffers = {name: cp.asarray(value) for name, value in feeds.items()}
    buffers.update({t.name: cp.empty(t.shape, t.dtype) for t in session.outputs})
    for name, buffer in buffers.items():
        session.bind(name, buffer.data.ptr)
    stream.synchronize()  # the copies above ran on cupy's current stream
    session.run_async(stream.ptr)  # warm-up
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record(stream)
    for _ in range(repeats):
        session.run_async(stream.ptr)
    stop.record(stream)
    stop.synchronize()
    ms = cp.cuda.get_elapsed_time(start, stop) / repeats
    return {t.name: cp.asnumpy(buffers[t.name]) for t in session.outputs}, ms


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    ref = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / ref if ref else float(np.linalg.norm(a))


def check(workdir: Path, repeats: int) -> list[dict]:
    import cupy as cp

    build_workdir(workdir, "ort")
    cache = EngineCache(Manifest.load(workdir), get_backend("ort"))
    stream = cp.cuda.Stream(non_blocking=True)
    inputs, rows = segment_feeds(workdir), []
    for name in GRAPH_SETS:
        for segment in cache.manifest.segments(name):
            feeds = inputs[segment.name]
            cpu = cache.load(segment).run_host(feeds)
            gpu, ms = run_cuda(cache.load(segment, LoadOptions(0, stream.ptr)), feeds, stream, repeats)
            errors = {k: rel_err(gpu[k], cpu[k]) for k in cpu}
            worst = max(errors, key=errors.get)
            rows.append({"segment": segment.name, "outputs": len(cpu), "max_rel_err": errors[worst],
                         "worst_output": worst, "cuda_ms": round(ms, 4)})
            print(f"{segment.name:>12}  outputs {len(cpu):3d}  max rel err {errors[worst]:.2e} ({worst})  "
                  f"CUDA {ms:.3f} ms")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="an exported work directory (default: export tiny-sdxl)")
    parser.add_argument("--tolerance", type=float, default=1e-2, help="largest relative error allowed (fp16)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per segment")
    args = parser.parse_args()
    import cupy as cp
    import onnxruntime as ort

    ort.preload_dlls()  # CUDA/cuDNN libraries from the pip packages torch brought, when not on the library path
    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    workdir = args.workdir or export_tiny(Path(tempfile.mkdtemp()) / "tiny-sdxl-fp16")
    print(f"device {device}; onnxruntime {ort.__version__}; {datetime.datetime.now().isoformat(timespec='seconds')}")
    rows = check(workdir, args.repeats)
    worst = max(r["max_rel_err"] for r in rows)
    result = {"device": device, "date": datetime.date.today().isoformat(), "python": platform.python_version(),
              "onnxruntime": ort.__version__, "command": " ".join(["python"] + sys.argv), "segments": rows,
              "max_rel_err": worst, "tolerance": args.tolerance, "passed": worst <= args.tolerance}
    print(f"max rel err over {len(rows)} segments: {worst:.2e} (tolerance {args.tolerance}): "
          f"{'PASS' if result['passed'] else 'FAIL'}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "ort_cuda_check.json").write_text(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
