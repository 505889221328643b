"""bench.py's results as JSON and a Markdown table; parts of one session (one per device call) merged."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path


def markdown(result: dict) -> str:
    lines = [f"# trt-distri speed, SDXL architecture ({result['date']}, {result['gpu']})", "",
             f"Command: `{result['command']}`. Backend: ONNX Runtime CUDA {result['ort']}, fp16, DDIM, guidance 5; "
             f"driver {result.get('driver', 'not recorded')}, torch {result.get('torch', 'not recorded')}. "
             f"{result['steps']} measured steps per run ({result['warmup'] + 1} synchronous); projection: 5 "
             "synchronous + 45 asynchronous steps."
             + "".join(f" {k}={v}." for k, v in result.get("env", {}).items()), "",
             "| size | GPUs | split | CUDA graph | sync ms | async ms | no-comm async ms | overhead "
             "| projected 50 steps | speed-up | sync vs 1 GPU (rel. RMS) | async PSNR vs 1 GPU | exchange MB/GPU/step "
             "| GiB used | export+prepare / load s |",
             "| --- " * 15 + "|"]
    for r in result["rows"]:
        graph = "yes" if r.get("cuda_graph", result.get("cuda_graph")) else "no"
        if "error" in r:
            lines.append(f"| {r['size']} | {r['gpus']} | {'yes' if r['split'] else 'no'} | {graph} | failed: "
                         f"{r['error'][:160]} |" + " |" * 10)
            continue
        ex = r["exchange"]
        comm = (f"{r['no_comm']['async_step_ms']:.1f} | {r['async_overhead_pct']} %" if r["gpus"] > 1 else "- | -")
        speedup = r.get("speedup", f"refused: {r['refused']}" if "refused" in r else "-")
        lines.append(f"| {r['size']} | {r['gpus']} | {'yes' if r['split'] else 'no'} | {graph} | "
                     f"{ex['sync_step_ms']:.1f} | "
                     f"{ex['async_step_ms']:.1f} | {comm} | {r['projected_50_s']} s | {speedup} | "
                     f"{r.get('sync_rel_rms', '-')} | {r.get('psnr_db', '-')} | {r['exchange_mb_per_gpu_step']} | "
                     f"{r['device_gib_used']} | {r['prepare_s']} / {r['load_s']} |")
    for t in result.get("torch_baseline", []):
        graph = f"{t['cuda_graph_ms']} ms" if "cuda_graph_ms" in t else f"failed ({t.get('cuda_graph_error')})"
        lines.append(f"\nPyTorch {t['torch']} diffusers UNet, 1 GPU, fp16 SDPA, {t['size']}: eager {t['eager_ms']} ms "
                     f"per step, CUDA graph {graph}; {t['projected_50_s']} s per 50 steps (the faster).")
    return "\n".join(lines) + "\n"


def projected_s(sync_step_ms: float, async_step_ms: float, steps: int, sync_steps: int) -> float:
    """Seconds of `steps` steps of which the first `sync_steps` are synchronous, from per-step medians."""
    return round((sync_steps * sync_step_ms + (steps - sync_steps) * async_step_ms) / 1000, 2)


def driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.splitlines()[0].strip() if out.strip() else "unknown"


def merge(parts: list[dict]) -> dict:
    """Rows and PyTorch baselines of several runs on one host; the commands are joined."""
    if len({(p["gpu"], p["host"], p["steps"], p["warmup"]) for p in parts}) != 1:
        raise SystemExit("bench.py --merge: the parts differ in GPU, host, steps or warm-up, so they "
                         "cannot share one table. Note: " + ", ".join(f"{p['gpu']}@{p['host']}" for p in parts) +
                         ". Fix: merge only the parts of one session")
    rows = [dict(r, cuda_graph=r.get("cuda_graph", p.get("cuda_graph", False))) for p in parts for r in p["rows"]]
    out = dict(parts[0], rows=rows,
               command="; ".join(p["command"] for p in parts))
    out["torch_baseline"] = [t for p in parts for t in p.get("torch_baseline", [])]
    return out


def write_results(result: dict, out_dir: Path) -> None:
    (out_dir / "bench.json").write_text(json.dumps(result, indent=1))
    (out_dir / "bench.md").write_text(markdown(result))
