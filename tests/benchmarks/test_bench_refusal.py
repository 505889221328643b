"""benchmarks/bench.py reports a speed-up only for a configuration that computes what 1 GPU computes."""
import importlib
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = str(Path(__file__).resolve().parents[2] / "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCHMARKS)  # importable by name: the exporter processes (spawned) import it too
    try:
        yield importlib.import_module("bench")
    finally:
        sys.path.remove(BENCHMARKS)


def _runs(seed: int = 0):
    one_gpu = np.random.default_rng(seed).standard_normal((1, 4, 32, 32)).astype(np.float32)
    base = ({"gpus": 1, "projected_50_s": 10.0}, {"exchange": one_gpu})
    return one_gpu, base


def test_matching_sync_run_reports_speedup_and_psnr(bench):
    one_gpu, base = _runs()
    row = {"gpus": 4, "projected_50_s": 2.5}
    sync = one_gpu + np.float32(1e-4) * np.random.default_rng(1).standard_normal(one_gpu.shape).astype(np.float32)
    drifted = one_gpu + np.float32(0.05)
    bench.compare_with_one_gpu(row, {"sync": sync, "exchange": drifted}, base)
    assert row["speedup"] == 4.0 and "refused" not in row
    assert row["sync_rel_rms"] < 1e-3
    assert 20 < row["psnr_db"] < 60


@pytest.mark.parametrize("damage", ["wrong_halo", "nan"])
def test_mismatching_or_broken_sync_run_refuses_the_speedup(bench, damage):
    one_gpu, base = _runs()
    sync = one_gpu.copy()
    if damage == "wrong_halo":
        sync[..., 15:17, :] *= 3.0  # two rows at a patch border computed from the wrong neighbour
    else:
        sync[0, 0, 0, 0] = np.nan
    row = {"gpus": 2, "projected_50_s": 5.0}
    bench.compare_with_one_gpu(row, {"sync": sync, "exchange": one_gpu}, base)
    assert "speedup" not in row and "psnr_db" not in row
    assert ("relative RMS" if damage == "wrong_halo" else "not finite") in row["refused"]


def test_markdown_shows_the_refusal(bench):
    row = {"size": 2048, "gpus": 2, "split": False, "exchange": {"sync_step_ms": 1.0, "async_step_ms": 1.0},
           "no_comm": {"async_step_ms": 1.0}, "async_overhead_pct": 0.0, "projected_50_s": 1.0,
           "refused": "latents are not finite", "exchange_mb_per_gpu_step": 1.0, "device_gib_used": 1.0,
           "prepare_s": 1.0, "load_s": 1.0}
    markdown = importlib.import_module("bench_report").markdown
    text = markdown({"date": "d", "gpu": "g", "command": "c", "ort": "o", "steps": 10, "warmup": 4, "rows": [row]})
    assert "refused: latents are not finite" in text


def _cpu_run_gpus(workdir, inputs, options, gpus, repeats=1, variants=None, timeout_s=0):
    """run_gpus' contract on the CPU: every variant in one load, rank 0's latents per variant."""
    from trt_distri.runtime.local import LocalRanks

    from trt_distri.manifest import Manifest

    ranks = LocalRanks(Manifest.load(workdir))
    outputs, runs = {}, []
    for v in variants:
        warmup = options.warmup_steps if v.warmup_steps is None else v.warmup_steps
        for _ in range(v.repeats or repeats):
            outputs[v.label] = ranks.run(inputs, replace(options, no_comm=v.no_comm, warmup_steps=warmup))
            runs.append({"variant": v.label, "wall_s": 0.1, "sync_step_ms": 400.0 / len(gpus),
                         "async_step_ms": 200.0 / len(gpus)})
    return outputs[variants[-1].label], [{"load_s": 0.0, "device_bytes_used": 0, "runs": runs,
                                          "variant_latents": outputs}]


def test_bench_end_to_end_on_cpu(bench, tmp_path, monkeypatch):
    """Exporter processes, every configuration with and without CUDA graphs, the synchronous check and the merge,
    with a tiny model on CPU. Two steps (one synchronous warm-up step, one asynchronous step) are all that the
    checks need: the sync variant against 1 GPU, the asynchronous run's PSNR."""
    monkeypatch.setattr(bench, "run_gpus", _cpu_run_gpus)
    monkeypatch.setenv("NCCL_MAX_CTAS", "4")  # settings that change speed are recorded with the results
    out = tmp_path / "part"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--model", "tiny-sdxl", "--sizes", "64", "--gpus", "1", "2",
                                      "--split", "both", "--steps", "2", "--warmup", "1", "--cuda-graph", "both",
                                      "--root", str(tmp_path / "work"), "--out-dir", str(out)])
    bench.main()
    result = json.loads((out / "bench.json").read_text())
    assert result["env"]["NCCL_MAX_CTAS"] == "4" and "NCCL_MAX_CTAS=4." in (out / "bench.md").read_text()
    rows = {(r["gpus"], r["split"], r["cuda_graph"]): r for r in result["rows"]}
    assert set(rows) == {(g, s, c) for g, s in ((1, False), (2, False), (2, True)) for c in (False, True)}
    assert "speedup" not in rows[(1, False, False)]
    assert rows[(1, False, True)]["speedup"] == 1.0 and rows[(1, False, True)]["sync_rel_rms"] < 1e-5
    for key in ((2, False, False), (2, True, False), (2, False, True), (2, True, True)):
        assert rows[key]["speedup"] == 2.0 and rows[key]["sync_rel_rms"] < 1e-5, rows[key]
        assert rows[key]["psnr_db"] > 20
    assert not list((tmp_path / "work").iterdir())  # work directories are deleted after their run
    merged = tmp_path / "merged"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--merge", str(out / "bench.json"), str(out / "bench.json"),
                                      "--out-dir", str(merged)])
    bench.main()
    assert len(json.loads((merged / "bench.json").read_text())["rows"]) == 12
    assert "| 64 | 2 | yes | yes |" in (merged / "bench.md").read_text()


def test_a_graph_row_is_compared_with_the_plain_one_gpu_run(bench):
    plain, graph = ({"size": 64, "gpus": 1, "cuda_graph": c} for c in (False, True))
    bases = {(64, False): ("plain", {})}
    assert bench.baseline_for(plain, bases) is None
    assert bench.baseline_for(graph, bases) == ("plain", {})
    assert bench.baseline_for(dict(graph, gpus=2), {**bases, (64, True): ("graph", {})}) == ("graph", {})
    one_gpu, base = _runs()
    row = dict(graph, projected_50_s=10.0)
    bench.compare_with_one_gpu(row, {"exchange": one_gpu * np.float32(1.5)}, base)  # a capture that went wrong
    assert "speedup" not in row and "relative RMS" in row["refused"]


def test_a_failing_configuration_is_recorded_and_the_rest_still_run(bench, tmp_path, monkeypatch):
    """As on 4 x H200: CUDA-graph capture failed on 2 GPUs; the row says so and the next configurations run.
    One exporter process (the test above runs the default two) and two steps: the failure handling needs no more."""
    from trt_distri.runtime.comm import RankFailedError

    def flaky(workdir, inputs, options, gpus, repeats=1, variants=None, timeout_s=0):
        if options.cuda_graph and len(gpus) > 1:
            raise RankFailedError("rank 1 failed: RuntimeError: CUDA failure 900: operation not permitted when "
                                  "stream is capturing")
        return _cpu_run_gpus(workdir, inputs, options, gpus, repeats, variants)

    monkeypatch.setattr(bench, "run_gpus", flaky)
    out = tmp_path / "part"
    monkeypatch.setattr(sys, "argv", ["bench.py", "--model", "tiny-sdxl", "--sizes", "64", "--gpus", "1", "2",
                                      "--split", "both", "--steps", "2", "--warmup", "1", "--cuda-graph", "both",
                                      "--exporters", "1", "--root", str(tmp_path / "work"), "--out-dir", str(out)])
    bench.main()
    rows = {(r["gpus"], r["split"], r["cuda_graph"]): r for r in json.loads((out / "bench.json").read_text())["rows"]}
    assert len(rows) == 6
    assert "stream is capturing" in rows[(2, False, True)]["error"] and "error" in rows[(2, True, True)]
    assert rows[(2, True, False)]["speedup"] == 2.0  # the configuration after the failure was measured
    assert "| 64 | 2 | no | yes | failed: rank 1 failed" in (out / "bench.md").read_text()
