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
    data["rows"] = [r for r in data["rows"] if "error" not in r and not r.get("cuda_graph")]
    torch_1gpu = {t["size"]: t["projected_50_s"] for t in data.get("torch_baseline", [])}
    fig, ax = plt.subplots(figsize=(5.4, 3.8))
    for size, color in zip(sorted({r["size"] for r in data["rows"]}), ("tab:blue", "tab:orange", "tab:green")):
        rows = [r for r in data["rows"] if r["size"] == size and not r["split"]]
        ax.plot([r["gpus"] for r in rows], [r.get("speedup", 1.0) for r in rows], "o-", color=color,
                label=f"trt-distri {size}x{size}")
        split = [r for r in data["rows"] if r["size"] == size and r["split"] and "speedup" in r]
        if split:
            ax.plot([r["gpus"] for r in split], [r["speedup"] for r in split], "*", color=color, markersize=11,
                    label=f"trt-distri {size}, guidance split")
        for ref in sorted(RESULTS.glob(f"reference/ref-{size}-g*.json")):
            run = json.loads(ref.read_text())
            if size in torch_1gpu:
                ax.plot([run["gpus"]], [torch_1gpu[size] / run["projected_50_s"]], "D", color=color, fillstyle="none",
                        markersize=8, label=f"distrifuser {size} (vs PyTorch 1 GPU)")
    ax.plot([1, *PAPER], [1, *PAPER.values()], "s--", color="gray", label="DistriFusion paper 3840 (A100)")
    ax.plot([1, 4], [1, 4], ":", color="black", label="linear")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("speed-up over 1 GPU (50 steps)")
    ax.set_xticks([1, 2, 4])
    ax.set_title(f"SDXL, {data['gpu']}, ONNX Runtime CUDA fp16", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "speedup.png", dpi=120)


if __name__ == "__main__":
    main()
