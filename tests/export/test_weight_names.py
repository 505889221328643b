"""Text-encoder export (export/encoders.py, weight_names.py): linear weights named after their modules, holding
exactly weight.T at the offsets the entry lists; layers past the graph's output are listed as unused."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("penultimate", [False, True])
def test_linear_weights_named_and_listed(tmp_path, penultimate):
    from transformers import CLIPTextConfig, CLIPTextModel

    from trt_distri.export.encoders import export_text_encoder
    from trt_distri.manifest import WeightRef

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                            num_hidden_layers=2, max_position_embeddings=8, projection_dim=16)
    model = CLIPTextModel(config).eval()
    entry = export_text_encoder(model, tmp_path / "te.onnx", sdxl=penultimate, pooled=False, text_len=8)
    refs = {row["name"]: WeightRef(**{**row, "shape": tuple(row["shape"])}) for row in entry["weight_tensors"]}
    data = np.fromfile(tmp_path / "te.onnx.data", dtype=np.uint8)
    linears = {f"{n}.weight": m.weight.detach().numpy() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    last = [name for name in linears if ".layers.1." in name]
    expected_used = [name for name in linears if name not in last] if penultimate else list(linears)
    assert sorted(entry["unused_weights"]) == (sorted(last) if penultimate else [])
    for name in expected_used:
        ref = refs[name]
        stored = data[ref.offset:ref.offset + ref.length].view(ref.dtype).reshape(ref.shape)
        np.testing.assert_array_equal(stored, linears[name].T)
