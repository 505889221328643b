"""Speed-up plot from benchmarks/results/bench.json: python benchmarks/plot.py -> results/speedup.png (matplotlib)."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PAPER = {2: 1.8, 4: 3.4}  # DistriFusion, SDXL 3840, A100, patches only


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((RESULTS / "bench.json").read_text())
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for size in sorted({r["size"] for r in data["rows"]}):
        rows = [r for r in data["rows"] if r["size"] == size and not r["split"]]
        xs = [r["gpus"] for r in rows]
        ax.plot(xs, [r.get("speedup", 1.0) for r in rows], "o-", label=f"trt-distri {size}x{size}")
    ax.plot([1, *PAPER], [1, *PAPER.values()], "s--", color="gray", label="DistriFusion paper 3840 (A100)")
    ax.plot([1, 4], [1, 4], ":", color="black", label="linear")
    for r in data["rows"]:
        if r["split"] and "speedup" in r:
            ax.plot([r["gpus"]], [r["speedup"]], "*", markersize=11, label=f"{r['size']}, guidance split")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("speed-up over 1 GPU (50 steps)")
    ax.set_xticks([1, 2, 4])
    ax.set_title(f"SDXL, {data['gpu']}, ONNX Runtime CUDA fp16", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "speedup.png", dpi=120)


if __name__ == "__main__":
    main()
