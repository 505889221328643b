"""The library API on GPUs keeps its rank processes loaded between generations (runtime.gpu.GpuRanks over
runtime.gpu.GpuRankPool), with a stand-in pool: the processes themselves are tested in test_launch.py."""
from __future__ import annotations

import pytest

from trt_distri.runtime.comm import RankFailedError
from trt_distri.runtime.executor import RunOptions


class FakePool:
    loads: list["FakePool"] = []

    def __init__(self, workdir, gpus, backend, cuda_graph):
        self.gpus, self.cuda_graph, self.calls, self.open = gpus, cuda_graph, 0, True
        FakePool.loads.append(self)

    def generate(self, inputs, options):
        if inputs == "fail":
            self.open = False  # as GpuRankPool after a failed call: its processes were stopped
            raise RankFailedError("rank 1 failed: simulated")
        self.calls += 1
        return f"latents {self.calls}", []

    def close(self):
        self.open = False


@pytest.fixture
def ranks(monkeypatch, tmp_path):
    import trt_distri.runtime.gpu as gpu

    FakePool.loads = []
    monkeypatch.setattr(gpu, "GpuRankPool", FakePool)
    monkeypatch.setattr(gpu.Topology, "from_manifest", lambda m: gpu.Topology(2, 1))
    return gpu.GpuRanks(type("Manifest", (), {"root": tmp_path})(), "ort", None, None, None)


def test_ranks_load_once_and_serve_every_generation(ranks):
    assert len(FakePool.loads) == 1 and FakePool.loads[0].gpus == [0, 1]
    assert FakePool.loads[0].cuda_graph is None  # the runtime decides: ranks that are reused replay graphs
    assert ranks.run("a", RunOptions()) == "latents 1"
    assert ranks.run("b", RunOptions()) == "latents 2"
    assert len(FakePool.loads) == 1


def test_after_a_failed_generation_the_next_one_loads_again(ranks):
    with pytest.raises(RankFailedError, match="simulated"):
        ranks.run("fail", RunOptions())
    assert ranks.run("a", RunOptions()) == "latents 1" and len(FakePool.loads) == 2


def test_close_stops_the_processes(ranks):
    pool = FakePool.loads[0]
    ranks.close()
    ranks.close()  # idempotent
    assert not pool.open and ranks.pool is None


def test_a_loaded_rank_process_generates_again_and_again(request, tmp_path, monkeypatch):
    """runtime.gpu's rank process (RankServer in a RankPool, one rank, host stand-ins for CUDA and NCCL): the
    same process serves every generation, reports its load once, and each result equals the CPU runtime's."""
    import numpy as np
    from host_ranks import FakeNccl, HostRankPool
    from test_local_runtime import WARMUP, _export, _inputs

    import trt_distri.runtime.gpu as gpu
    from trt_distri.runtime.gpu import Variant
    from trt_distri.runtime.local import run_local

    monkeypatch.setattr(gpu, "NcclLibrary", FakeNccl)
    unet = request.getfixturevalue("tiny_sdxl")
    workdir = _export(unet, "tiny-sdxl", tmp_path, 1)
    _, _, inputs = _inputs(unet, "tiny-sdxl")
    expected, _ = run_local(workdir, inputs, RunOptions(warmup_steps=WARMUP))
    ranks = HostRankPool(workdir, [0], cuda_graph=None, reused=True)
    try:
        pid = ranks.pool.ready[0]["pid"]
        first, reports = ranks.generate(inputs, RunOptions(warmup_steps=WARMUP))
        again, again_reports = ranks.generate(inputs, RunOptions(warmup_steps=WARMUP), repeats=2,
                                              variants=[Variant("run"), Variant("sync", warmup_steps=10)])
    finally:
        ranks.close()
    assert np.array_equal(first, expected) and np.array_equal(again, expected)  # 1 rank: sync = async
    assert reports[0]["load_s"] > 0 and again_reports[0]["load_s"] == 0.0  # loaded once
    assert [r["variant"] for r in again_reports[0]["runs"]] == ["run", "run", "sync", "sync"]
    assert set(again_reports[0]["variant_latents"]) == {"run", "sync"} and reports[0]["gpu"] == 0
    assert not ranks.open and pid > 0


def test_a_fresh_image_starts_its_ranks_before_encoding(monkeypatch, tmp_path):
    """`generate_image` on GPUs starts the rank processes first, so that they load while the main process encodes
    the prompt; the one-shot pool serves the denoise and is stopped afterwards, also when encoding fails."""
    import trt_distri.pipeline as pipeline
    import trt_distri.runtime.gpu as gpu

    order, pools = [], []

    class Pool(FakePool):
        def __init__(self, workdir, gpus, backend, cuda_graph, reused):
            super().__init__(workdir, gpus, backend, cuda_graph)
            order.append("ranks start")
            pools.append(self)

        def generate(self, inputs, options, repeats=1):
            order.append("denoise")
            return super().generate(inputs, options)

    monkeypatch.setattr(gpu, "GpuRankPool", Pool)
    manifest = type("Manifest", (), {"root": tmp_path})()
    monkeypatch.setattr(gpu.Topology, "from_manifest", lambda m: gpu.Topology(2, 1))
    target = pipeline.Target("cuda", (0, 1))
    ranks = pipeline.start_gpu_ranks(manifest, target)
    order.append("encode")
    latents, _ = pipeline.denoise(tmp_path, manifest, "inputs", 4, target, ranks=ranks)
    pipeline._stop(ranks)
    assert latents == "latents 1" and set(order[:2]) == {"ranks start", "encode"} and order[-1] == "denoise"
    assert pools[0].gpus == [0, 1] and not pools[0].open
    assert pipeline.start_gpu_ranks(manifest, pipeline.Target("cpu")) is None


def test_loaded_rank_processes_switch_lora_adapters(request, tmp_path, monkeypatch):
    """LoRA through RankPool requests (runtime.gpu.AdapterRequest): a loaded rank process applies an adapter
    between generations, reports what it wrote, and gives the base latents bit for bit after clearing; the same
    adapter on the CPU ranks gives the same latents."""
    import numpy as np
    from host_ranks import FakeNccl, HostRankPool
    from test_local_runtime import WARMUP, _export, _inputs

    import trt_distri.runtime.gpu as gpu
    from trt_distri.engines.build import build_workdir
    from trt_distri.engines.lora_apply import workdir_weight_shapes
    from trt_distri.lora import Adapter, LowRank
    from trt_distri.manifest import Manifest
    from trt_distri.runtime.local import run_local

    monkeypatch.setattr(gpu, "NcclLibrary", FakeNccl)
    unet = request.getfixturevalue("tiny_sdxl")
    workdir = _export(unet, "tiny-sdxl", tmp_path, 1)
    build_workdir(workdir, "ort")
    _, _, inputs = _inputs(unet, "tiny-sdxl")
    rng = np.random.default_rng(0)
    shapes = {n: s for n, s in workdir_weight_shapes(Manifest.load(workdir), "ort").items() if "attn1.to_q" in n}
    adapter = Adapter(tmp_path / "x", {n: LowRank(rng.standard_normal((2, s[0])).astype(np.float32),
                                                  rng.standard_normal((s[1], 2)).astype(np.float32), 0.5)
                                       for n, s in shapes.items()}, "peft")
    options = RunOptions(warmup_steps=WARMUP)
    on_cpu, _ = run_local(workdir, inputs, options, adapters=[(adapter, 1.0)])
    ranks = HostRankPool(workdir, [0], cuda_graph=None, reused=True)
    try:
        base, _ = ranks.generate(inputs, options)
        reports = ranks.set_adapters([(adapter, 1.0)])
        with_lora, _ = ranks.generate(inputs, options)
        ranks.set_adapters([])
        cleared, _ = ranks.generate(inputs, options)
    finally:
        ranks.close()
    assert reports[0]["written"] == len(shapes) > 0 and reports[0]["seconds"] >= 0
    assert not np.array_equal(with_lora, base) and np.array_equal(with_lora, on_cpu)
    assert np.array_equal(cleared, base)
