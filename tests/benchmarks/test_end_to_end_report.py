"""benchmarks/end_to_end_gpu.py's report: the measured UNet loop beside bench.py's projection, failures kept."""
import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")


@pytest.fixture(scope="module")
def e2e():
    sys.path.insert(0, BENCHMARKS)
    try:
        yield importlib.import_module("end_to_end_gpu")
    finally:
        sys.path.remove(BENCHMARKS)


def test_projection_uses_the_matching_patch_only_row(e2e):
    bench = {"rows": [{"size": 2048, "gpus": 2, "split": True, "exchange": {"sync_step_ms": 1, "async_step_ms": 1}},
                      {"size": 2048, "gpus": 2, "split": False,
                       "exchange": {"sync_step_ms": 150.0, "async_step_ms": 100.0}}]}
    record = {"size": 2048, "gpus": 2, "steps": 20, "warmup_steps": 4}
    assert e2e.projected_denoise_s(record, bench) == pytest.approx((5 * 150 + 15 * 100) / 1000)
    assert e2e.projected_denoise_s(dict(record, gpus=4), bench) is None
    graph_row = dict(bench["rows"][1], cuda_graph=True, exchange={"sync_step_ms": 50.0, "async_step_ms": 40.0})
    with_graph = {"rows": bench["rows"] + [graph_row]}  # each run is projected from the row of its own mode
    assert e2e.projected_denoise_s(record, with_graph) == pytest.approx((5 * 150 + 15 * 100) / 1000)
    assert e2e.projected_denoise_s(dict(record, cuda_graph=True), with_graph) == pytest.approx((5 * 50 + 15 * 40)
                                                                                                / 1000)


def test_reproject_fills_projections_from_bench_parts_that_ran_later(e2e, tmp_path, monkeypatch):
    import json

    out, bench = tmp_path / "e2e.json", tmp_path / "bench.json"
    record = {"size": 2048, "gpus": 2, "steps": 20, "warmup_steps": 4, "prepare": {"export_s": 1.0, "build_s": 1.0},
              "stages": {"encode": 1.0, "denoise": 3.0, "decode": 1.0}, "ranks": {}, "seconds": 5.0,
              "peak_mib_per_gpu": {"0": 1}, "projected_denoise_s": None}
    out.write_text(json.dumps({"cases": [record, {"size": 3840, "gpus": 4, "steps": 20, "error": "x"}]}))
    bench.write_text(json.dumps({"rows": [{"size": 2048, "gpus": 2, "split": False,
                                           "exchange": {"sync_step_ms": 200.0, "async_step_ms": 100.0}}]}))
    monkeypatch.setattr(sys, "argv", ["end_to_end_gpu.py", "--reproject", "--out", str(out), "--bench", str(bench)])
    e2e.main()
    cases = json.loads(out.read_text())["cases"]
    assert cases[0]["projected_denoise_s"] == pytest.approx((5 * 200 + 15 * 100) / 1000)
    assert cases[1]["projected_denoise_s"] is None and "| 2048 | 2 | no | 20 |" in out.with_suffix(".md").read_text()


def test_report_keeps_a_failed_case_beside_a_measured_one(e2e, tmp_path):
    ok = {"size": 2048, "gpus": 2, "cuda_graph": True, "steps": 20, "prepare": {"export_s": 90.0, "build_s": 3.0},
          "stages": {"encode": 1.5, "denoise": 20.0, "decode": 2.0}, "ranks": {"load_s": 12.0, "loop_s": 2.6},
          "seconds": 23.5, "peak_mib_per_gpu": {"0": 50000, "1": 48000}, "projected_denoise_s": 2.4}
    failed = {"size": 3840, "gpus": 4, "steps": 20, "error": "export: MemoryError()"}
    out = tmp_path / "e2e.json"
    e2e._write(out, {"cases": [ok, failed]})
    text = out.with_suffix(".md").read_text()
    assert "| 2048 | 2 | yes | 20 | 90.0 / 3.0 | 1.5 | 20.0 (12.0, 2.6) | 2.4 | 2.0 | 23.5 | 50000, 48000 |" in text
    assert "| 3840 | 4 | no | 20 | | failed: export: MemoryError()" in text


def test_cases_export_in_parallel_processes(e2e, tmp_path):
    seconds = e2e.export_cases([(64, 1), (64, 2)], tmp_path, model="tiny-sdxl")
    assert all(isinstance(s, float) and s > 0 for s in seconds), seconds
    for gpus in (1, 2):
        assert (e2e.case_dir(tmp_path, 64, gpus, "tiny-sdxl") / "manifest.json").is_file()
    assert e2e.export_cases([(64, 1)], tmp_path, model="tiny-sdxl") == [0.0]  # already there: not redone
