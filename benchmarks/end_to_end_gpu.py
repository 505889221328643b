"""Prompt to PNG on a GPU host, end to end (text encoders, distributed UNet, tiled VAE): times and peak memory.

  python benchmarks/end_to_end_gpu.py --case 2048:2 --case 3840:4 --steps 30 --root /tmp/e2e

Each case SIZE:GPUS exports the SDXL architecture with random weights (fp16 UNet, fp32 encoders and VAE) at
SIZE x SIZE for GPUS GPUs (no guidance split: every GPU takes a band of rows), prepares the ONNX Runtime graphs
on the host, then runs `generate_image` on GPUs 0..GPUS-1 and writes the PNG. Recorded per case: export and build
seconds, seconds per stage (encode, denoise, decode), the UNet ranks' own peak device memory, and the peak memory
per GPU over the whole run as nvidia-smi reports it (every process: UNet ranks, encoders and VAE in this one),
polled every 0.2 s. A case that fails (out of memory included) is recorded with its error and the others still run.
Results: benchmarks/results/end_to_end_gpu.json and .md (or --out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import subprocess
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from trt_distri.config import ExportRequest, Precision
from trt_distri.engines.build import build_workdir
from trt_distri.export.pipeline_export import export_pipeline
from trt_distri.pipeline import Target, generate_image
from trt_distri.png import png_bytes
from trt_distri.runtime.executor import uses_cuda_graph
from trt_distri.runtime.launch import stop_on_sigterm

from bench_report import projected_s
from peak_memory import NvidiaSmiPeak

log = logging.getLogger("end_to_end_gpu")
RESULTS = Path(__file__).parent / "results"


def case_dir(root: Path, size: int, gpus: int, model: str = "sdxl") -> Path:
    return root / f"{model}-{size}-n{gpus}"


def export_case(size: int, gpus: int, root: Path, model: str = "sdxl") -> float:
    """Export one case's pipeline (UNet, text encoders, VAE) unless already there; returns the seconds taken."""
    out = case_dir(root, size, gpus, model)
    if (out / "manifest.json").is_file():
        return 0.0
    t0 = time.perf_counter()
    precision = Precision.FP16 if model == "sdxl" else Precision.FP32
    export_pipeline(ExportRequest(f"random:{model}", size, size, gpus, out, cfg_split=False, precision=precision,
                                  overwrite=True))
    return round(time.perf_counter() - t0, 1)


def export_cases(cases: list[tuple[int, int]], root: Path, model: str = "sdxl") -> list:
    """Every case's export at once, one process each (CPU work, before the GPU runs): seconds, or the exception."""
    with ProcessPoolExecutor(len(cases), mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(export_case, size, gpus, root, model) for size, gpus in cases]
        return [job.exception() or job.result() for job in jobs]


def prepare(size: int, gpus: int, root: Path, backend: str, export_s: float | None = None) -> tuple[Path, dict]:
    out = case_dir(root, size, gpus)
    times = {"export_s": export_case(size, gpus, root) if export_s is None else export_s}
    t0 = time.perf_counter()
    build_workdir(out, backend)
    times["build_s"] = round(time.perf_counter() - t0, 1)
    return out, times


def run_case(size: int, gpus: int, args: argparse.Namespace, export_s: float | None = None) -> dict:
    record: dict = {"size": size, "gpus": gpus, "steps": args.steps, "warmup_steps": args.warmup_steps,
                    "backend": args.backend, "cuda_graph": uses_cuda_graph(args.cuda_graph, args.backend, reused=False)}
    try:
        workdir, record["prepare"] = prepare(size, gpus, args.root, args.backend, export_s)
        target = Target("cuda", tuple(range(gpus)), args.backend, cuda_graph=args.cuda_graph)
        with NvidiaSmiPeak(0.2) as memory:
            result = generate_image(workdir, "a red fox in the snow, detailed photograph", steps=args.steps,
                                    warmup_steps=args.warmup_steps, seed=0, target=target)
        case_dir(args.root, size, gpus).with_suffix(".png").write_bytes(png_bytes(result.image))
        record.update(seconds=round(result.seconds, 2), stages=result.stages, ranks=result.ranks,
                      summary=result.summary,
                      peak_mib_per_gpu={str(k): v for k, v in sorted(memory.peak_mib.items()) if k < gpus})
    except Exception as exc:  # noqa: BLE001 - recorded, the next case still runs
        record["error"] = f"{type(exc).__name__}: {exc}"
        log.error("%dx%d on %d GPUs failed:\n%s", size, size, gpus, traceback.format_exc())
    return record


def projected_denoise_s(record: dict, bench: dict | None) -> float | None:
    """The UNet loop's time as bench.py projects it from its step medians (same size, GPUs and CUDA-graph mode,
    patches only: what this script runs)."""
    mode = record.get("cuda_graph", False)  # records from before graphs were the default ran without
    rows = [r for r in (bench or {}).get("rows", []) if "exchange" in r and (r["size"], r["gpus"], r["split"],
            r.get("cuda_graph", False)) == (record["size"], record["gpus"], False, mode)]
    if not rows:
        return None
    ex = rows[-1]["exchange"]
    return projected_s(ex["sync_step_ms"], ex["async_step_ms"], record["steps"],
                       min(record["warmup_steps"] + 1, record["steps"]))


def graph(record: dict) -> str:
    return "yes" if record.get("cuda_graph") else "no"


def markdown(records: list[dict]) -> str:
    lines = ["# End to end on GPUs (SDXL architecture, random weights; fp16 UNet, fp32 encoders and VAE)", "",
             "| size | GPUs | CUDA graph | steps | export / build s | encode s | denoise s (rank load s, UNet loop s) "
             "| UNet loop projected by bench.py s | decode s | total s | peak MiB per GPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['gpus']} | {graph(r)} | {r['steps']} | | failed: {r['error'][:120]} "
                         "| | | | | |")
            continue
        s, p = r["stages"], r["prepare"]
        lines.append(f"| {r['size']} | {r['gpus']} | {graph(r)} | {r['steps']} | {p.get('export_s', '-')} / "
                     f"{p['build_s']} | {s['encode']} | {s['denoise']} ({r['ranks'].get('load_s', '-')}, "
                     f"{r['ranks'].get('loop_s', '-')}) | {r.get('projected_denoise_s') or '-'} | "
                     f"{s.get('decode', '-')} | {r['seconds']} | "
                     f"{', '.join(f'{v}' for v in r['peak_mib_per_gpu'].values())} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", default=None, help="SIZE:GPUS (default 2048:2 and 3840:4)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--backend", default="ort")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                        help="replay the UNet as CUDA graphs (default: the runtime's choice for one image, off)")
    parser.add_argument("--parallel-export", action="store_true", help="export every case at once first")
    parser.add_argument("--root", type=Path, default=Path("/tmp/trt-distri-e2e"))
    parser.add_argument("--out", type=Path, default=RESULTS / "end_to_end_gpu.json")
    parser.add_argument("--bench", type=Path, nargs="+", default=[RESULTS / "bench.json"],
                        help="bench.py's results, to set the measured UNet loop beside its projection")
    parser.add_argument("--reproject", action="store_true",
                        help="run nothing: fill --out's projections from --bench (bench.py ran after this script)")
    args = parser.parse_args()
    stop_on_sigterm()  # `timeout` or a scheduler stops the rank processes too
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    bench = {"rows": [r for p in args.bench if p.is_file() for r in json.loads(p.read_text())["rows"]]}
    if args.reproject:
        report = json.loads(args.out.read_text())
        for record in report["cases"]:
            record["projected_denoise_s"] = projected_denoise_s(record, bench) if "error" not in record else None
        report["projected_from"] = [str(p) for p in args.bench]
        _write(args.out, report)
        print(args.out.with_suffix(".md").read_text())
        return
    args.root.mkdir(parents=True, exist_ok=True)
    cases = [tuple(int(v) for v in c.split(":")) for c in (args.case or ["2048:2", "3840:4"])]
    exported: list = [None] * len(cases)  # seconds, None (export in run_case) or the export's exception
    if args.parallel_export and len(cases) > 1:
        exported = export_cases(cases, args.root)
    gpus = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.splitlines()
    records: list[dict] = []
    for (size, gpu_count), export_s in zip(cases, exported):  # written after every case: a cut run keeps its part
        if isinstance(export_s, BaseException):
            record = {"size": size, "gpus": gpu_count, "steps": args.steps, "error": f"export: {export_s!r}"}
        else:
            record = run_case(size, gpu_count, args, export_s)
        record["projected_denoise_s"] = projected_denoise_s(record, bench) if "error" not in record else None
        records.append(record)
        _write(args.out, {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cases": records,
                          "gpus": gpus, "command": "python benchmarks/end_to_end_gpu.py " + " ".join(sys.argv[1:])})
    print(args.out.with_suffix(".md").read_text())


def _write(out: Path, report: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(markdown(report["cases"]))


if __name__ == "__main__":
    main()
