"""GPU check of the ONNX Runtime preparation passes (engines/ort_fusions.py): every steady segment of an exported
work directory prepared with a set of passes against the same segment with none (attention rewritten only), on
the CUDA provider, from the same inputs: the activations the unprepared segments produce for one UNet call on
seeded random model inputs (stale inputs, on several GPUs, get seeded random values of their shapes; GroupNorm
statistics get the fresh ones of a 1-patch run). Per variant: largest relative error of any output and the device
time of every segment (median of --repeats runs, CUDA events), so the gain of each pass is read off directly.

    python benchmarks/ort_fusion_check.py WORKDIR [--variants none all group_norm ...] [--repeats 10]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from trt_distri.engines.backend import LoadOptions, get_backend
from trt_distri.engines.ort_fusions import PASSES, prepare
from trt_distri.engines.onnxruntime_backend import rewrite_attention
from trt_distri.engines.ort_weights import engine_weights
from trt_distri.manifest import Manifest, Role, Segment


def prepared(manifest: Manifest, segment: Segment, passes: tuple[str, ...], folder: Path) -> Path:
    model = onnx.load(str(manifest.graph_path(segment)), load_external_data=False)
    rewrite_attention(model)
    prepare(model, "cuda", passes)
    path = folder / f"{segment.name}.{'-'.join(passes) or 'none'}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def model_feeds(manifest: Manifest, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feeds = {}
    for segment in manifest.segments("steady"):
        for spec in segment.inputs:
            if spec.role == Role.ACTIVATION or spec.name in feeds:
                continue
            value = rng.standard_normal(spec.shape).astype(spec.dtype)
            if spec.role == Role.TIMESTEP:
                value[:] = 500.0
            elif spec.role == Role.STALE and spec.name.startswith("gn."):
                value = np.abs(value)  # E[x] and E[x^2] >= E[x]^2 holds for most groups; the formula falls back
            feeds[spec.name] = value
    return feeds


def run_timed(session, feeds: dict[str, np.ndarray], stream, repeats: int) -> tuple[dict[str, np.ndarray], float]:
    import cupy as cp

    buffers = {t.name: cp.asarray(feeds[t.name]) for t in session.inputs}
    buffers.update({t.name: cp.empty(t.shape, t.dtype) for t in session.outputs})
    for name, buffer in buffers.items():
        session.bind(name, buffer.data.ptr)
    cp.cuda.Device().synchronize()
    session.run_async(stream.ptr)
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        session.run_async(stream.ptr)
        stop.record(stream)
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return {t.name: cp.asnumpy(buffers[t.name]) for t in session.outputs}, statistics.median(times)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    ref = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / ref if ref else float(np.linalg.norm(a))


def check(workdir: Path, variants: list[tuple[str, ...]], repeats: int) -> dict:
    import cupy as cp

    manifest, ort = Manifest.load(workdir), get_backend("ort")
    stream = cp.cuda.Stream(non_blocking=True)
    folder = Path(tempfile.mkdtemp(dir=manifest.graph_path(manifest.segments("steady")[0]).parent))
    feeds = model_feeds(manifest, np.random.default_rng(0))
    store = ort.shared_weight_store(manifest.root / manifest.weights.file, 0)  # None: sharing off
    results = {"-".join(v) or "none": {"ms": {}, "max_rel_err": 0.0} for v in variants}
    for segment in manifest.segments("steady"):
        reference = None
        for variant in variants:
            row = results["-".join(variant) or "none"]
            if "error" in row:
                continue
            try:  # a pass that fails on this GPU is recorded and left out of the rest, the others go on
                path = prepared(manifest, segment, variant, folder)
                refs = engine_weights(onnx.load(str(path), load_external_data=False))
                session = ort.load(path, LoadOptions(0, stream.ptr, weights_dir=folder.parent, shared_weights=(
                    store, refs) if refs and store is not None else None))
                outputs, ms = run_timed(session, feeds, stream, repeats)
            except Exception as exc:  # noqa: BLE001 - ORT's own error types
                if reference is None:
                    raise
                row["error"] = f"{segment.name}: {type(exc).__name__}: {exc}"[:2000]
                continue
            row["ms"][segment.name] = round(ms, 3)
            if reference is None:
                reference = outputs
                feeds.update(outputs)  # later segments read these activations
            else:
                row["max_rel_err"] = max(row["max_rel_err"], *(rel_err(outputs[k], reference[k]) for k in outputs))
            del session
        print(segment.name, {k: v["ms"][segment.name] for k, v in results.items()}, flush=True)
    for row in results.values():
        row["total_ms"] = round(sum(row["ms"].values()), 2)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--variants", nargs="+", default=["none", "all"],
                        help=f"'none', 'all', or a pass name ({', '.join(PASSES)}); the first is the reference")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--tolerance", type=float, default=1e-2)
    args = parser.parse_args()
    import cupy as cp
    import onnxruntime

    onnxruntime.preload_dlls()
    variants = [() if v == "none" else tuple(PASSES) if v == "all" else (v,) for v in args.variants]
    results = check(args.workdir, variants, args.repeats)
    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    good = {name: row for name, row in results.items() if "error" not in row and row["max_rel_err"] <= args.tolerance}
    worst = max(r["max_rel_err"] for r in results.values())
    report = {"device": device, "date": datetime.date.today().isoformat(), "onnxruntime": onnxruntime.__version__,
              "workdir": str(args.workdir), "command": " ".join(["python"] + sys.argv), "variants": results,
              "max_rel_err": worst, "passed": len(good) == len(results),
              "passing_passes": [p for p in PASSES if p in good or ("-".join(PASSES) in good)]}
    for name, row in results.items():
        print(f"{name:>40}: {row['total_ms']:9.2f} ms per UNet call, max rel err {row['max_rel_err']:.2e} "
              f"{row.get('error', '')[:300]}")
    print("passing passes:", ",".join(report["passing_passes"]) or "none")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"fusion_check_{args.workdir.name}.json").write_text(json.dumps(report, indent=1))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
