"""The LoRA loader (trt_distri/lora.py, safetensors_np.py): diffusers/PEFT and kohya files give the same updates,
in the work directory's layouts (linear transposed, conv 1x1 and 3x3), for the UNet and the text encoders; bad files
fail with errors that name the key."""
from __future__ import annotations

import json

import numpy as np
import pytest

from trt_distri.lora import LoraError, LoraTargets, load_adapter, parse_lora_arg
from trt_distri.safetensors_np import read_safetensors

SHAPES = {"down_blocks.0.attentions.0.proj_in.weight": (8, 6),  # linear (in 8, out 6), stored transposed
          "down_blocks.0.resnets.0.conv1.weight": (6, 4, 3, 3),
          "down_blocks.0.resnets.0.conv_shortcut.weight": (6, 4, 1, 1)}
TEXT_SHAPES = {"text_model.encoder.layers.0.self_attn.q_proj.weight": (5, 5),
               "encoder.text_model.embeddings.token_embedding.weight": (9, 5)}
UNUSED = "text_model.encoder.layers.1.mlp.fc1.weight"  # a layer past the graph's output
TARGETS = LoraTargets(SHAPES, {"text_encoder": TEXT_SHAPES, "text_encoder_2": TEXT_SHAPES},
                      unused={"text_encoder": frozenset({UNUSED})})
MODULES = {"down_blocks.0.attentions.0.proj_in": ((2, 8), (6, 2)),
           "down_blocks.0.resnets.0.conv1": ((2, 4, 3, 3), (6, 2, 1, 1)),
           "down_blocks.0.resnets.0.conv_shortcut": ((2, 4, 1, 1), (6, 2, 1, 1))}


def _factors(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {m: (rng.standard_normal(d).astype(np.float32), rng.standard_normal(u).astype(np.float32))
            for m, (d, u) in MODULES.items()}


def _save(path, tensors: dict, metadata: dict | None = None):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _peft(path, factors, alpha: float = 4.0):
    tensors = {}
    for m, (down, up) in factors.items():
        tensors[f"unet.{m}.lora_A.weight"], tensors[f"unet.{m}.lora_B.weight"] = down, up
    return _save(path, tensors, {"lora_adapter_metadata": json.dumps({"unet.r": 2, "unet.lora_alpha": alpha})})


def _kohya(path, factors, alpha: float = 4.0):
    tensors = {}
    for m, (down, up) in factors.items():
        key = "lora_unet_" + m.replace(".", "_")
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        tensors[f"{key}.alpha"] = np.asarray(alpha, np.float32)
    return _save(path, tensors)


def test_peft_updates_follow_the_stored_layouts(tmp_path):
    factors = _factors()
    adapter = load_adapter(_peft(tmp_path / "a.safetensors", factors), TARGETS)
    assert set(adapter.layers) == set(SHAPES) and adapter.format == "peft"
    for module, (down, up) in factors.items():
        name = f"{module}.weight"
        expected = 2.0 * (up.reshape(6, 2) @ down.reshape(2, -1))  # alpha 4 / r 2, (out, in * k * k)
        delta = adapter.layers[name].delta(SHAPES[name])
        assert delta.shape == SHAPES[name]
        got = delta.T if delta.ndim == 2 else delta.reshape(6, -1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_kohya_converts_to_the_same_updates(tmp_path):
    factors = _factors(1)
    peft = load_adapter(_peft(tmp_path / "p.safetensors", factors), TARGETS)
    kohya = load_adapter(_kohya(tmp_path / "k.safetensors", factors), TARGETS)
    assert kohya.format == "kohya" and set(kohya.layers) == set(peft.layers)
    for name, shape in SHAPES.items():
        np.testing.assert_array_equal(kohya.layers[name].delta(shape), peft.layers[name].delta(shape))


def test_diffusers_training_script_keys_and_no_metadata_mean_scale_one(tmp_path):
    factors = _factors(2)
    tensors = {}
    for m, (down, up) in factors.items():
        tensors[f"unet.{m}.lora.down.weight"], tensors[f"unet.{m}.lora.up.weight"] = down, up
    adapter = load_adapter(_save(tmp_path / "d.safetensors", tensors), TARGETS)
    assert {low.scale for low in adapter.layers.values()} == {1.0}


def test_bf16_tensors_read_exactly(tmp_path):
    values = np.asarray([1.5, -2.0, 0.0078125], np.float32)
    raw = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, len(raw)]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + raw)
    tensors, _ = read_safetensors(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(tensors["x"], values)


def test_no_match_names_the_first_key(tmp_path):
    path = _save(tmp_path / "x.safetensors", {"unet.nowhere.lora_A.weight": np.zeros((2, 8), np.float32),
                                               "unet.nowhere.lora_B.weight": np.zeros((6, 2), np.float32)})
    with pytest.raises(LoraError, match=r"none of the 1 layers .* first unmatched key: 'unet.nowhere.lora_A"):
        load_adapter(path, TARGETS)


def test_partial_match_says_how_many_matched(tmp_path):
    factors = _factors()
    tensors = {f"unet.{m}.lora_{ab}.weight": f for m, (d, u) in factors.items() for ab, f in (("A", d), ("B", u))}
    tensors["unet.extra.lora_A.weight"], tensors["unet.extra.lora_B.weight"] = factors[next(iter(factors))]
    with pytest.raises(LoraError, match=r"only 3 of the 4 layers .* 'unet.extra.lora_A.weight'"):
        load_adapter(_save(tmp_path / "p.safetensors", tensors), TARGETS)


@pytest.mark.parametrize("key, message", [("unet.a.lora_magnitude_vector", "DoRA"),
                                           ("lora_unet_a.hada_w1_a", "LoHa")])
def test_unsupported_parts_are_refused(tmp_path, key, message):
    with pytest.raises(LoraError, match=message):
        load_adapter(_save(tmp_path / "t.safetensors", {key: np.zeros((2, 8), np.float32)}), TARGETS)


def test_wrong_shapes_and_files_are_clear_errors(tmp_path):
    down, up = np.zeros((2, 7), np.float32), np.zeros((6, 2), np.float32)
    path = _save(tmp_path / "s.safetensors", {"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": down,
                                              "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight": up})
    with pytest.raises(LoraError, match=r"expected down \[2, 8\] and up \[6, 2\], got \[2, 7\]"):
        load_adapter(path, TARGETS)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(LoraError.__mro__[1], match="not a safetensors file"):
        load_adapter(tmp_path / "bad.safetensors", TARGETS)


@pytest.mark.parametrize("text, expected", [("a.safetensors", ("a.safetensors", 1.0)),
                                            ("a.safetensors:0.5", ("a.safetensors", 0.5)),
                                            ("C:/x/a.safetensors:-1", ("C:/x/a.safetensors", -1.0))])
def test_lora_argument(text, expected):
    path, scale = parse_lora_arg(text)
    assert (str(path), scale) == expected


def _text_factors(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 5)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32)


def test_text_encoder_layers_in_both_formats(tmp_path):
    """PEFT keys with or without CLIP's `text_model.` root (transformers 5 drops it) and kohya lora_te1_/lora_te2_
    keys give the same update of the encoder's q_proj weight (stored (in, out)); layers on weights that the graph
    does not read are skipped."""
    down, up = _text_factors(3)
    module = "text_model.encoder.layers.0.self_attn.q_proj"
    meta = {"lora_adapter_metadata": json.dumps({"text_encoder.lora_alpha": 4.0, "text_encoder_2.lora_alpha": 4.0})}
    peft = _save(tmp_path / "p.safetensors", {f"text_encoder.{module}.lora_A.weight": down,
                                              f"text_encoder.{module}.lora_B.weight": up,
                                              f"text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_A.weight": down,
                                              f"text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_B.weight": up,
                                              "text_encoder.encoder.layers.1.mlp.fc1.lora_A.weight": down,
                                              "text_encoder.encoder.layers.1.mlp.fc1.lora_B.weight": up}, meta)
    kohya = {}
    for prefix in ("lora_te1_", "lora_te2_"):
        key = prefix + module.replace(".", "_")
        kohya |= {f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up, f"{key}.alpha": np.float32(4.0)}
    expected = 2.0 * (up @ down).T  # alpha 4 / r 2, stored transposed
    for adapter in (load_adapter(peft, TARGETS), load_adapter(_save(tmp_path / "k.safetensors", kohya), TARGETS)):
        assert adapter.layers == {} and set(adapter.text_layers) == {"text_encoder", "text_encoder_2"}
        for part in ("text_encoder", "text_encoder_2"):
            layers = adapter.part(part).layers
            assert list(layers) == [f"{module}.weight"]
            np.testing.assert_allclose(layers[f"{module}.weight"].delta((5, 5)), expected, rtol=1e-6)


def test_text_encoders_exported_before_naming_ask_for_a_new_export(tmp_path):
    down, up = _text_factors(4)
    path = _save(tmp_path / "t.safetensors", {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
                                              down, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
                                              ".lora_up.weight": up})
    with pytest.raises(LoraError, match=r"layers for text_encoder .*exported before .*Fix: export it again"):
        load_adapter(path, LoraTargets(SHAPES, {"text_encoder": None}))
    with pytest.raises(LoraError, match=r"layers for text_encoder .*does not have. Note: expected layers of unet"):
        load_adapter(path, LoraTargets(SHAPES))
