"""New values for named weights of a loaded, refittable TensorRT engine (`IRefitter`), for LoRA adapters.

`refit` sets every given weight the engine holds (`set_named_weights`), then the weights TensorRT reports as
missing because they were fused with a changed one (`get_missing_weights`, given their current value), then
refits on the caller's stream (`refit_cuda_engine_async`, else `refit_cuda_engine`). The host arrays stay referenced
until the refit returns (`trt.Weights` does not copy them).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import numpy as np

from trt_distri.engines.trt import make_logger
from trt_distri.errors import EngineBuildError


class EngineRefitter:
    def __init__(self, trt: ModuleType, engine: Any, label: str = "TensorRT") -> None:
        self.trt, self.label, self.logger = trt, label, make_logger(trt)
        self.refitter = trt.Refitter(engine, self.logger)
        self.names = frozenset(self.refitter.get_all_weights())

    def weight_names(self) -> frozenset[str]:
        return self.names

    def refit(self, values: Mapping[str, np.ndarray], current: Callable[[str], np.ndarray],
              stream: int | None = None) -> int:
        """Put `values` (name -> array in the graph's layout) into the engine; returns how many weights were set."""
        keep = {name: np.ascontiguousarray(a) for name, a in values.items() if name in self.names}
        if not keep:
            return 0
        for name, array in keep.items():
            self._set(name, array)
        for name in self.refitter.get_missing_weights():
            keep[name] = np.ascontiguousarray(current(name))
            self._set(name, keep[name])
        refit_async = getattr(self.refitter, "refit_cuda_engine_async", None)
        ok = refit_async(stream or 0) if refit_async is not None and stream is not None else \
            self.refitter.refit_cuda_engine()
        if not ok:
            raise EngineBuildError(f"{self.label} could not refit the engine with {len(keep)} LoRA weight(s): "
                                   f"{' | '.join(self.logger.errors[-2:])}. Note: expected an engine built with "
                                   "--refittable. Fix: trt-distri build WORKDIR --backend trt --refittable")
        return len(keep)

    def _set(self, name: str, array: np.ndarray) -> None:
        if not self.refitter.set_named_weights(name, self.trt.Weights(array)):
            raise EngineBuildError(f"{self.label} refused new values for weight {name!r} "
                                   f"({array.dtype} {list(array.shape)}): {' | '.join(self.logger.errors[-2:])}. "
                                   "Note: expected the dtype and shape it was built with")
