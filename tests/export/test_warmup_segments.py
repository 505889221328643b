"""The warm-up emission exchanges a GroupNorm -> SiLU -> conv chain's halo rows with the GroupNorm's statistics."""
from __future__ import annotations

import numpy as np
from diffusers.models.resnet import ResnetBlock2D

from trt_distri.export.exporter import WARMUP_CUTS
from trt_distri.export.partition import partition
from trt_distri.export.plan import make_plan
from trt_distri.export.unet_graph import RankGraph


def _chains(unet) -> list[str]:
    """Convs with a halo that read silu(group_norm(x)): ResnetBlock2D conv1/conv2 and conv_out."""
    names = [f"{name}.{conv}" for name, m in unet.named_modules() if isinstance(m, ResnetBlock2D)
             for conv in ("conv1", "conv2") if getattr(m, conv).kernel_size[0] > 1]
    return names + (["conv_out"] if unet.conv_out.kernel_size[0] > 1 else [])


def _emit(unet, warmup: bool, n: int = 2):
    plan = make_plan(unet.config, 128, 128, n)
    return RankGraph(unet, plan, 2, np.float32, "exact", warmup=warmup).emit()


def test_warmup_set_saves_one_cut_per_norm_silu_conv_chain(tiny_sdxl):
    chains = _chains(tiny_sdxl)
    assert chains
    # the emission without the warm-up chains is what the warm-up set was cut from before
    before = partition(_emit(tiny_sdxl, warmup=False), WARMUP_CUTS, "warmup")
    after = partition(_emit(tiny_sdxl, warmup=True), WARMUP_CUTS, "warmup")
    assert len(before) - len(after) == len(chains)


def test_warmup_chains_read_raw_rows_and_write_halos_for_the_first_async_step(tiny_sdxl):
    graph = _emit(tiny_sdxl, warmup=True)
    fresh = [v.name for v in graph.outputs if graph.roles[v.name]["role"] == "fresh"]
    stale = {v.name for v in graph.inputs if graph.roles[v.name]["role"] == "stale"}
    for conv in _chains(tiny_sdxl):
        # statistics, raw rows and the validity flag leave in the same cut, in this order
        norm = "conv_norm_out" if conv == "conv_out" else conv.replace(".conv", ".norm")
        i = fresh.index(f"gn.{norm}")
        assert fresh[i + 1:i + 4] == [f"rawhalo.{conv}.top", f"rawhalo.{conv}.bottom", f"valid.{conv}"]
        assert {f"halo.{conv}.top", f"halo.{conv}.bottom"} <= set(fresh)  # read by the first asynchronous step
        assert {f"rawhalo.{conv}.above", f"rawhalo.{conv}.below", f"valid.{conv}.above",
                f"valid.{conv}.below"} <= stale
        assert not {f"halo.{conv}.above", f"halo.{conv}.below"} & stale
    sources = {graph.roles[s]["source"]["entry"]: graph.roles[s]["source"] for s in stale}
    assert all(not sources[name]["wrap"] for name in sources if name.startswith(("rawhalo.", "valid.")))


def test_steady_emission_has_no_warmup_entries(tiny_sdxl):
    graph = _emit(tiny_sdxl, warmup=False)
    names = [v.name for v in graph.outputs + graph.inputs]
    assert not [n for n in names if n.startswith(("rawhalo.", "valid."))]


def test_every_graph_output_is_computed_from_a_graph_input(tiny_sdxl, tmp_path):
    """No exported segment has an output that is a constant: ONNX Runtime folds it into an initializer and copies
    it into the bound output with a synchronous default-stream memcpy on every run, which breaks CUDA-graph capture
    (seen on 2 x H200 with the warm-up set's `valid.<conv>` flags)."""
    import onnx

    from trt_distri.config import ExportRequest
    from trt_distri.export.exporter import export_unet

    out = tmp_path / "w"
    export_unet(ExportRequest("random:tiny-sdxl", 128, 128, 2, out, cfg_split=False), unet=tiny_sdxl)
    graphs = sorted((out / "graphs").glob("*.onnx"))
    assert any(g.name.startswith("warmup.") for g in graphs)
    for path in graphs:
        graph = onnx.load(str(path), load_external_data=False).graph
        live = {i.name for i in graph.input}
        for node in graph.node:  # topological order
            if any(name in live for name in node.input):
                live.update(node.output)
        constant = [o.name for o in graph.output if o.name not in live]
        assert not constant, f"{path.name}: outputs not computed from any input: {constant}"
