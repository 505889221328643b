"""LoRA adapters applied to one rank's loaded engines in place, and taken off again bit for bit (numpy only).

For every weight an adapter touches, W = base + sum(scale_i * delta_i) is computed from the weight's original
bytes (never from what was written before) by the rank's target:
- a store on a GPU (ONNX Runtime's shared weights, engines/ort_weights.py): on the device, restored from a pinned
  host copy and updated by cuBLAS GEMMs on the compute stream (engines/lora_device.py);
- `StoreTarget`: a store on the CPU (or on a GPU where cuBLAS cannot be loaded, or TRT_DISTRI_LORA_ON_HOST=1):
  computed in float32 on the host, cast to the stored dtype and written (a host write, or a copy to the device).
Every session of both graph sets reads the store in place. Called between generations, so no running graph sees
a half-written weight.
- `RefitTarget`: refittable engines (TensorRT), each refitted with the weights it holds (`IRefitter`, through the
  session's `refitter()`, engines/trt_refit.py).
Weights a previous `set` changed and the new one does not are written back from the base; `clear` writes every
changed weight back. The weights' names, offsets and shapes come from the engines' metadata (ONNX Runtime) or from
the exported graphs (engines that hold their own weights).
The text encoders (ONNX Runtime, in the process that encodes prompts) read their weights from a store of their own
over their external data file (`TextEncoderLoras`); the manifest lists those weights, so no onnx is needed.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from trt_distri.engines.ort_weights import SHARE_ENV, WeightRef, sharing_enabled
from trt_distri.errors import ConfigError, ManifestError
from trt_distri.lora import Adapter, LoraTargets

#: (adapter, scale) pairs: W = base + sum(scale * adapter's update)
Adapters = Sequence[tuple[Adapter, float]]
_THREADS = 8


class LoraUnsupportedError(ConfigError):
    """These loaded engines cannot take LoRA weights in place."""


def weight_index(manifest, cache, arch: str) -> dict[str, WeightRef]:
    """Every external weight of the work directory's UNet: from the engines' metadata, else from the graphs."""
    refs: dict[str, WeightRef] = {}
    for segment in manifest.unet_segments():
        meta_path = cache.meta_path(cache.path(segment, arch))
        rows = json.loads(meta_path.read_text()).get("weights", []) if meta_path.is_file() else []
        refs.update((ref.name, ref) for ref in map(WeightRef.from_json, rows))
    return refs or graph_weights(manifest)


def workdir_weight_shapes(manifest, backend_name: str) -> dict[str, tuple[int, ...]]:
    """name -> stored shape of every UNet weight, from any built engine's metadata of `backend_name` (else the
    graphs): what a LoRA file is converted against before it goes to the ranks."""
    refs: dict[str, WeightRef] = {}
    for meta_path in sorted((Path(manifest.root) / "engines" / backend_name).glob("*.json")):
        rows = json.loads(meta_path.read_text()).get("weights", [])
        refs.update((ref.name, ref) for ref in map(WeightRef.from_json, rows))
    return {name: ref.shape for name, ref in (refs or graph_weights(manifest)).items()}


def lora_targets(manifest, backend_name: str) -> LoraTargets:
    """The weights of the work directory's UNet and text encoders that LoRA files are converted against."""
    encoders = {e.name: None if e.weights is None else {t.name: t.shape for t in e.weights.tensors}
                for e in manifest.text_encoders or ()}
    unused = {e.name: frozenset(e.weights.unused) for e in manifest.text_encoders or () if e.weights is not None}
    return LoraTargets(workdir_weight_shapes(manifest, backend_name), encoders, manifest.model.config, unused)


def load_adapters(manifest, backend_name: str, loras: Sequence[tuple[str | Path, float]]) -> list[tuple[Adapter, float]]:
    """(path, scale) pairs -> (Adapter, scale) pairs converted for this work directory (LoraError on a bad file)."""
    from trt_distri.lora import load_adapter

    if not loras:
        return []
    targets = lora_targets(manifest, backend_name)
    adapters = [(load_adapter(path, targets), float(scale)) for path, scale in loras]
    check_text_loras(adapters)
    return adapters


def check_text_loras(adapters: Adapters) -> None:
    """Refuse text-encoder layers where the text encoders' weights cannot be written (no shared store)."""
    touched = next((a for a, _ in adapters if any(a.text_layers.values())), None)
    if touched is not None and not sharing_enabled():
        raise LoraUnsupportedError(f"{touched.path} has text-encoder layers, which are written into the text "
                                   f"encoders' shared weights, and {SHARE_ENV}=0 turns those off. Fix: unset "
                                   f"{SHARE_ENV}")


def graph_weights(manifest) -> dict[str, WeightRef]:
    """The external weights the exported UNet graphs read (needs the onnx package)."""
    try:
        import onnx
    except ImportError as exc:
        raise LoraUnsupportedError("finding the weights of engines that hold their own needs the onnx package. "
                                   "Fix: pip install onnx") from exc
    from trt_distri.engines.ort_weights import engine_weights

    refs: dict[str, WeightRef] = {}
    for segment in manifest.unet_segments():
        model = onnx.load(str(manifest.graph_path(segment)), load_external_data=False)
        refs.update((ref.name, ref) for ref in engine_weights(model))
    return refs


class StoreTarget:
    """A shared weight store (engines/ort_weights.SharedWeights) written on `stream` (None: the CPU)."""

    def __init__(self, store, stream: int | None) -> None:
        self.store, self.stream = store, stream

    def apply(self, patcher: "WeightPatcher", names: Sequence[str], adapters: Adapters) -> None:
        for name, array in patcher.values(names, adapters).items():
            self.store.write(patcher.index[name], array, self.stream)
        self.store.flush(self.stream)

    def close(self) -> None:
        pass


class RefitTarget:
    """Refittable engines: `refitters` expose weight_names(), refit(values, current, stream)."""

    def __init__(self, refitters: list, stream: int | None) -> None:
        self.refitters, self.stream = refitters, stream

    def apply(self, patcher: "WeightPatcher", names: Sequence[str], adapters: Adapters) -> None:
        held = set().union(*(r.weight_names() for r in self.refitters)) if self.refitters else set()
        missing = [name for name in names if name not in held]
        if missing:
            raise LoraUnsupportedError(f"no loaded engine can refit the weight {missing[0]!r} ({len(missing)} of "
                                       f"{len(names)} weights). Note: expected engines built refittable. Fix: "
                                       "trt-distri build WORKDIR --backend trt --refittable")
        values = patcher.values(names, adapters)
        for refitter in self.refitters:
            refitter.refit(values, lambda n: patcher.value(n, adapters), self.stream)

    def close(self) -> None:
        pass


class WeightPatcher:
    """One rank's LoRA state: which weights differ from the base, and the target that holds them."""

    def __init__(self, index: Mapping[str, WeightRef], base: Callable[[WeightRef], np.ndarray], target) -> None:
        self.index, self.base, self.target = index, base, target
        self.adapters: list[tuple[Adapter, float]] = []
        self.changed: set[str] = set()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: ref.shape for name, ref in self.index.items()}

    def set(self, adapters: Adapters) -> dict:
        """Apply exactly `adapters` (replacing earlier ones); returns {"written": weights, "bytes": bytes}."""
        adapters = [(a, float(s)) for a, s in adapters]
        for adapter, _ in adapters:
            unknown = next((n for n in adapter.layers if n not in self.index), None)
            if unknown is not None:
                raise ManifestError(f"{adapter.path} updates {unknown!r}, which no engine of this rank reads. Fix: "
                                    "load the adapter for this work directory")
        touched = {name for adapter, _ in adapters for name in adapter.layers}
        names = sorted(touched | self.changed)
        self.changed |= touched  # a failed write leaves them for the next set or clear to restore
        self.target.apply(self, names, adapters)
        self.adapters, self.changed = adapters, touched
        return {"written": len(names), "bytes": sum(self.index[n].length for n in names)}

    def clear(self) -> dict:
        return self.set([])

    def value(self, name: str, adapters: Adapters) -> np.ndarray:
        """W = base + sum(scale * delta), in the stored dtype (the base itself, bit for bit, without updates)."""
        ref = self.index[name]
        base = self.base(ref)
        parts = [(a.layers[name], s) for a, s in adapters if name in a.layers and s != 0.0]
        if not parts:
            return np.array(base)
        total = base.astype(np.float32)
        for low_rank, scale in parts:
            total += np.float32(scale) * low_rank.delta(ref.shape)
        return total.astype(ref.dtype)

    def close(self) -> None:
        """Free what the target holds (a cuBLAS handle); the weights stay as they are."""
        self.target.close()

    def values(self, names: Iterable[str], adapters: Adapters) -> dict[str, np.ndarray]:
        """Each named weight's new value, computed on the host."""
        names = list(names)
        with ThreadPoolExecutor(min(_THREADS, max(1, len(names)))) as pool:  # numpy releases the GIL
            return dict(zip(names, pool.map(lambda n: self.value(n, adapters), names)))


def store_target(store, stream: int | None):
    """A store on a GPU is changed there (engines/lora_device.py) where cuBLAS loads; else on the host."""
    if getattr(store, "device", None) is not None:
        from trt_distri.engines.lora_device import device_target

        target = device_target(store, stream)
        if target is not None:
            return target
    return StoreTarget(store, stream)


def make_patcher(manifest, backend, cache, store, sessions: Iterable, device: int | None,
                 stream: int | None) -> WeightPatcher:
    """The patcher of one rank: its shared store where it has one, else its refittable engines."""
    if cache is None or not cache.root.is_dir():
        raise LoraUnsupportedError(f"LoRA adapters are applied to built engines; {manifest.root} has none for "
                                   f"backend {backend.name}. Fix: trt-distri build {manifest.root} --backend "
                                   f"{backend.name}")
    index = weight_index(manifest, cache, backend.device_arch(device))
    if store is not None:
        return WeightPatcher(index, store.base, store_target(store, stream))
    refitters = [s.refitter() for s in sessions if callable(getattr(s, "refitter", None))]
    if not refitters:
        raise LoraUnsupportedError(f"the {backend.name} engines of this rank neither share a weight store nor refit. "
                                   "Note: ONNX Runtime applies LoRA through its shared weights, TensorRT through "
                                   "refittable engines. Fix: unset TRT_DISTRI_SHARE_WEIGHTS=0 (ONNX Runtime), or "
                                   "build with --refittable (TensorRT)")
    file = np.memmap(Path(manifest.root) / manifest.weights.file, dtype=np.uint8, mode="r")
    return WeightPatcher(index, lambda ref: file[ref.offset:ref.offset + ref.length].view(ref.dtype)
                         .reshape(ref.shape), RefitTarget(refitters, stream))


class TextEncoderLoras:
    """The LoRA state of loaded text encoders: `stores` maps an encoder's name to (its weight refs, its shared
    store, or None where it has none); `set` writes each encoder's layers of the adapters into its store."""

    def __init__(self, stores: Mapping[str, tuple[Sequence[WeightRef], object | None]]) -> None:
        self.patchers = {name: WeightPatcher({r.name: r for r in refs}, store.base, store_target(store, None))
                         for name, (refs, store) in stores.items() if store is not None}

    def set(self, adapters: Adapters) -> None:
        for adapter, _ in adapters:
            for name, layers in adapter.text_layers.items():
                if layers and name not in self.patchers:
                    raise LoraUnsupportedError(f"{adapter.path} has layers for {name}, whose weights were not loaded "
                                               f"into a shared store. Note: expected {SHARE_ENV} unset and a work "
                                               "directory exported with named text-encoder weights. Fix: unset "
                                               f"{SHARE_ENV}, or export the work directory again")
        for name, patcher in self.patchers.items():
            patcher.set([(adapter.part(name), scale) for adapter, scale in adapters])

    def close(self) -> None:
        for patcher in self.patchers.values():
            patcher.close()
        self.patchers = {}
