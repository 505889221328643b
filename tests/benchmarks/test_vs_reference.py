"""benchmarks/vs_reference.py joins one lease's files into the issue tables, ratios within that lease only."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import vs_reference  # noqa: E402


def _lease(tmp_path: Path) -> Path:
    (tmp_path / "bench-2048").mkdir()
    (tmp_path / "reference").mkdir()
    rows = [{"size": 2048, "gpus": 1, "split": False, "projected_50_s": 9.0, "peak_gib": 12.0},
            {"size": 2048, "gpus": 2, "split": False, "projected_50_s": 5.0, "peak_gib": 30.0},
            {"size": 2048, "gpus": 2, "split": True, "error": "failed"}]
    bench = {"command": "bench", "gpu": "GPU X", "date": "2026-11-30", "rows": rows,
             "torch_baseline": [{"size": 2048, "eager_ms": 200.0}]}
    (tmp_path / "bench-2048" / "bench.json").write_text(json.dumps(bench))
    ref = {"projected_50_s": 4.0, "ranks": [{"max_mem_gib": 10.0}, {"max_mem_gib": 11.0}]}
    (tmp_path / "reference" / "ref-2048-g2-patches.json").write_text(json.dumps(ref))
    (tmp_path / "reference" / "peak-ref-2048-g2-patches.json").write_text(json.dumps({"peak_gib": {"0": 12.0}}))
    return tmp_path


def test_rows_compare_runs_of_the_lease(tmp_path):
    speed = vs_reference.speed_rows(_lease(tmp_path))
    assert [(r["against"], r["ours_s"], r["theirs_s"], r["ratio"]) for r in speed] == [
        ("torch-eager", 9.0, 10.0, 0.9), ("distrifuser", 5.0, 4.0, 1.25)]  # the failed split row is left out
    memory = vs_reference.memory_rows(tmp_path)
    two = next(r for r in memory if r["gpus"] == 2)
    assert (two["reference_peak_gib"], two["reference_measured_as"], two["ratio"]) == (12.0, "nvidia-smi", 2.5)


def test_one_gpu_rows_compare_with_the_references_plain_unet(tmp_path):
    lease = _lease(tmp_path)
    (lease / "reference" / "ref-2048-g1-patches.json").write_text(json.dumps(
        {"projected_50_s": 10.0, "ranks": [{"max_mem_gib": 8.0}]}))
    (lease / "reference" / "peak-ref-2048-g1-patches.json").write_text(json.dumps({"peak_gib": {"0": 16.0}}))
    one = [(r["against"], r["mode"], r["ratio"]) for r in vs_reference.speed_rows(lease) if r["gpus"] == 1]
    assert one == [("torch-eager", "1 GPU", 0.9), ("distrifuser", "1 GPU", 0.9)]
    memory = next(r for r in vs_reference.memory_rows(lease) if r["gpus"] == 1)
    assert (memory["reference_peak_gib"], memory["ratio"]) == (16.0, 0.75)
