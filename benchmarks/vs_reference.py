"""Join one lease's results into the tables issues 14 and 15 ask for (ratios only between runs of that lease):

  python benchmarks/vs_reference.py LEASE_DIR [LEASE_DIR...] --out-dir benchmarks/results

LEASE_DIR holds bench-*/bench.json (benchmarks/bench.py), reference/ref-SIZE-gGPUS-MODE.json
(benchmarks/reference/run_distrifuser.py, MODE patches or split, with peak-*.json from benchmarks/peak_memory.py
where it was sampled) and first_image_SIZE.json (benchmarks/first_image.py). Writes vs_reference.json/.md (ratio =
ours / theirs per 50 steps) and memory.json/.md (peak per GPU, first and steady image): the rows of every lease
given, each ratio within its own lease. On 1 GPU the reference is distrifuser's plain UNet with CUDA graphs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def speed_rows(lease: Path) -> list[dict]:
    rows = []
    for bench_path in sorted(lease.glob("bench-*/bench.json")):
        bench = json.loads(bench_path.read_text())
        command, device, date = bench["command"], bench["gpu"], bench["date"]
        for base in bench.get("torch_baseline", []):
            ours = next((r for r in bench["rows"] if r["size"] == base["size"] and r["gpus"] == 1
                         and "projected_50_s" in r), None)
            if ours:
                theirs = round(base["eager_ms"] * 50 / 1000, 2)
                rows.append(_row(base["size"], 1, "torch-eager", "1 GPU", ours["projected_50_s"], theirs, device,
                                 date, command))
        for r in bench["rows"]:
            if "projected_50_s" not in r:
                continue
            mode = "split" if r["split"] else "patches" if r["gpus"] > 1 else "1 GPU"
            for ref_mode in ("patches", "split") if r["gpus"] > 1 else ("patches",):
                ref = _load(lease / "reference" / f"ref-{r['size']}-g{r['gpus']}-{ref_mode}.json")
                if ref:
                    label = f"ours {mode}, theirs {ref_mode}" if r["gpus"] > 1 else "1 GPU"
                    rows.append(_row(r["size"], r["gpus"], "distrifuser", label,
                                     r["projected_50_s"], ref["projected_50_s"], device, date,
                                     f"{command}; reference: {ref_mode} (benchmarks/lease_final.sh ref-{r['size']}{'' if r['gpus'] > 1 else '-g1'})"))
    return rows


def _row(size, gpus, against, mode, ours, theirs, device, date, command) -> dict:
    return {"size": size, "gpus": gpus, "against": against, "mode": mode, "ours_s": ours, "theirs_s": theirs,
            "ratio": round(ours / theirs, 3), "device": device, "date": date, "command": command}


def memory_rows(lease: Path) -> list[dict]:
    rows = []
    for bench_path in sorted(lease.glob("bench-*/bench.json")):
        bench = json.loads(bench_path.read_text())
        for r in bench["rows"]:
            if r.get("peak_gib") is None or (r["gpus"] > 1 and r["split"]):
                continue
            ref = _load(lease / "reference" / f"ref-{r['size']}-g{r['gpus']}-patches.json")
            peak = _load(lease / "reference" / f"peak-ref-{r['size']}-g{r['gpus']}-patches.json")
            theirs, how = (max(peak["peak_gib"].values()), "nvidia-smi") if peak else (
                (max(x["max_mem_gib"] for x in ref["ranks"]), "torch max allocated") if ref else (None, None))
            first = _load(lease / f"first_image_{r['size']}.json") if r["gpus"] > 1 else None
            rows.append({"size": r["size"], "gpus": r["gpus"], "ours_peak_gib": r["peak_gib"],
                         "reference_peak_gib": theirs, "reference_measured_as": how,
                         "ratio": round(r["peak_gib"] / theirs, 2) if theirs else None,
                         "first_image_s": first["fresh_run"]["wall_s"] if first else None,
                         "steady_image_s": first["api"]["steady_s"] if first else None,
                         "device": bench["gpu"], "date": bench["date"],
                         "command": bench["command"] + ("; " + first["command"] if first else "")})
    return rows


def _markdown(title: str, rows: list[dict], columns: list[str]) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join("-" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    commands = sorted({r["command"] for r in rows})
    return "\n".join(lines + ["", "Commands:"] + [f"- `{c}`" for c in commands]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lease", type=Path, nargs="+")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    speed = [row for lease in args.lease for row in speed_rows(lease)]
    memory = [row for lease in args.lease for row in memory_rows(lease)]
    out = args.out_dir
    (out / "vs_reference.json").write_text(json.dumps(speed, indent=1) + "\n")
    (out / "vs_reference.md").write_text(_markdown(
        "trt-distri against the reference and PyTorch, 50 steps (ratio = ours / theirs)", speed,
        ["size", "gpus", "against", "mode", "ours_s", "theirs_s", "ratio", "device", "date"]))
    (out / "memory.json").write_text(json.dumps(memory, indent=1) + "\n")
    (out / "memory.md").write_text(_markdown(
        "Peak device memory per GPU and the first image", memory,
        ["size", "gpus", "ours_peak_gib", "reference_peak_gib", "reference_measured_as", "ratio", "first_image_s",
         "steady_image_s", "device", "date"]))


if __name__ == "__main__":
    main()
