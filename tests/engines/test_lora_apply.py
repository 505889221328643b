"""engines/lora_apply.py: W = base + sum(scale * delta) written into a rank's target, switched and cleared bit for
bit; TensorRT refit through engines/trt_refit.py, checked against a recording stand-in of the tensorrt module."""
from __future__ import annotations

import types

import numpy as np
import pytest

from trt_distri.engines.lora_apply import LoraUnsupportedError, RefitTarget, StoreTarget, WeightPatcher
from trt_distri.engines.ort_weights import SharedWeights, WeightRef
from trt_distri.engines.trt_refit import EngineRefitter
from trt_distri.lora import Adapter, LowRank

REFS = {"a.weight": WeightRef("a.weight", 0, 4 * 8 * 6, "float32", (8, 6)),
        "b.weight": WeightRef("b.weight", 256, 2 * 6 * 4 * 3 * 3, "float16", (6, 4, 3, 3))}


def _adapter(seed: int, names=("a.weight", "b.weight")) -> Adapter:
    rng = np.random.default_rng(seed)
    shapes = {"a.weight": ((2, 8), (6, 2)), "b.weight": ((2, 4, 3, 3), (6, 2, 1, 1))}
    return Adapter(f"lora{seed}", {n: LowRank(rng.standard_normal(shapes[n][0]).astype(np.float32),
                                              rng.standard_normal(shapes[n][1]).astype(np.float32), 0.5)
                                   for n in names}, "peft")


@pytest.fixture
def store(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, 256 + 2 * 6 * 4 * 9, dtype=np.uint8)
    data[256:] = np.random.default_rng(1).standard_normal(6 * 4 * 9).astype(np.float16).view(np.uint8)
    path = tmp_path / "weights.bin"
    data[:192] = np.random.default_rng(2).standard_normal(48).astype(np.float32).view(np.uint8)
    path.write_bytes(data.tobytes())
    import onnxruntime as ort

    return SharedWeights(ort, path, None)


def test_store_switch_mix_and_clear_bit_for_bit(store):
    values = {n: store.value(r) for n, r in REFS.items()}  # what the sessions read
    before = {n: v.numpy().copy() for n, v in values.items()}
    patcher = WeightPatcher(REFS, store.base, StoreTarget(store, None))
    one, two = _adapter(1), _adapter(2, names=("a.weight",))
    patcher.set([(one, 1.0), (two, -0.5)])
    for name, ref in REFS.items():
        expected = store.base(ref).astype(np.float32) + one.layers[name].delta(ref.shape)
        if name in two.layers:
            expected -= 0.5 * two.layers[name].delta(ref.shape)
        np.testing.assert_allclose(values[name].numpy(), expected.astype(ref.dtype), rtol=1e-3, atol=1e-3)
    patcher.set([(two, 1.0)])  # b.weight is no longer touched: back to its base exactly
    assert values["b.weight"].numpy().tobytes() == before["b.weight"].tobytes()
    assert patcher.clear() == {"written": 1, "bytes": REFS["a.weight"].length}
    assert all(values[n].numpy().tobytes() == before[n].tobytes() for n in REFS)
    assert np.fromfile(store.path, np.uint8)[:192].tobytes() == store.base(REFS["a.weight"]).tobytes()  # file kept


class _RecordingTrt(types.SimpleNamespace):
    """The parts of the tensorrt module EngineRefitter uses; records every call."""

    def __init__(self, held: set[str], missing: list[str]) -> None:
        calls: list = []

        class ILogger:
            def __init__(self) -> None:
                pass

        class Weights:
            def __init__(self, array) -> None:
                self.array = array

        class Refitter:
            def __init__(self, engine, logger) -> None:
                calls.append(("refitter", engine))

            def get_all_weights(self):
                return sorted(held)

            def set_named_weights(self, name, weights):
                calls.append(("set", name, weights.array.copy()))
                return True

            def get_missing_weights(self):
                return missing

            def refit_cuda_engine_async(self, stream):
                calls.append(("refit", stream))
                return True

        super().__init__(ILogger=ILogger, Weights=Weights, Refitter=Refitter, calls=calls, __name__="tensorrt")


def test_refit_sets_held_and_missing_weights_then_refits_on_the_stream(tmp_path):
    trt = _RecordingTrt({"a.weight", "b.weight", "fused.weight"}, ["fused.weight"])
    refitter = EngineRefitter(trt, "engine0")
    value = np.ones((8, 6), np.float32)
    count = refitter.refit({"a.weight": value, "c.weight": value}, lambda name: np.zeros(3, np.float32), stream=7)
    assert count == 2
    assert [c[:2] for c in trt.calls] == [("refitter", "engine0"), ("set", "a.weight"), ("set", "fused.weight"),
                                          ("refit", 7)]


def test_refit_target_refuses_a_weight_no_engine_holds(store):
    trt = _RecordingTrt({"a.weight"}, [])
    patcher = WeightPatcher(REFS, store.base, RefitTarget([EngineRefitter(trt, "e")], stream=None))
    with pytest.raises(LoraUnsupportedError, match="--refittable"):
        patcher.set([(_adapter(1, names=("b.weight",)), 1.0)])
    assert not [c for c in trt.calls if c[0] == "set"]  # refused before any engine was touched


def test_refit_patcher_clears_to_the_base(store):
    trt = _RecordingTrt(set(REFS), [])
    patcher = WeightPatcher(REFS, store.base, RefitTarget([EngineRefitter(trt, "e")], stream=3))
    patcher.set([(_adapter(1), 1.0)])
    patcher.clear()
    last = {c[1]: c[2] for c in trt.calls if c[0] == "set"}
    assert all(last[n].tobytes() == store.base(r).tobytes() for n, r in REFS.items())
