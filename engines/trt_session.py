"""A loaded TensorRT engine: one execution context on the rank's shared memory, bindings set once, CUDA graphs.

Follows the TensorRT 10/11 Python API (the same code serves TensorRT-RTX):
- the context is created without memory (`ExecutionContextAllocationStrategy.USER_MANAGED`) and given the rank's
  shared block (`set_device_memory(ptr, size)`, engines/trt_memory.py) before it runs; a `transient` session keeps
  TensorRT's default (its own memory, freed with it);
- `bind` sets the tensor's address on the context right away (`set_tensor_address`); a run only enqueues
  (`execute_async_v3(stream)`): the runtime binds once for a session's life;
- with `cuda_graph`, the rule of ONNX Runtime's CUDA graphs: the first run is a plain enqueue (TensorRT finishes
  its lazy setup there), the second is captured on the caller's stream (`cudaStreamBeginCapture` ..
  `cudaStreamEndCapture`, `cudaGraphInstantiate`) and every run from then on is one `cudaGraphLaunch`. After the
  first run a bound tensor may not move (`moved_tensor_error`): the graph would keep reading the old address.

Run-time failures raise EngineRunError. The CUDA runtime (`rt`) is cuda-python's or, in tests, a stand-in.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from trt_distri.engines.backend import Session, moved_tensor_error
from trt_distri.engines.trt import engine_io
from trt_distri.engines.trt_memory import ContextMemory, check, engine_memory_size
from trt_distri.errors import EngineRunError

log = logging.getLogger(__name__)
_NO_GRAPH_FIX = "Fix: run without CUDA graphs (`trt-distri run --no-cuda-graph`; Python: cuda_graph=False)"


class CudaGraph:
    """One captured CUDA graph: `capture(stream, enqueue)` records what `enqueue` puts on `stream`, `launch`
    replays it, `reset` destroys it (a capture after that starts over)."""

    def __init__(self, rt: ModuleType) -> None:
        self.rt = rt
        self.graph: Any = None
        self.exec: Any = None

    @property
    def captured(self) -> bool:
        return self.exec is not None

    def capture(self, stream: int, enqueue: Callable[[], None]) -> None:
        rt, handle = self.rt, self.rt.cudaStream_t(stream)
        # thread-local: only this thread's CUDA calls are restricted while it captures
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(handle, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            _, partial = rt.cudaStreamEndCapture(handle)  # the stream leaves capture mode either way
            if partial:
                rt.cudaGraphDestroy(partial)
            raise
        self.graph = check(rt.cudaStreamEndCapture(handle), "cudaStreamEndCapture")
        self.exec = check(rt.cudaGraphInstantiate(self.graph, 0), "cudaGraphInstantiate")

    def launch(self, stream: int) -> None:
        check(self.rt.cudaGraphLaunch(self.exec, self.rt.cudaStream_t(stream)), "cudaGraphLaunch")

    def reset(self) -> None:
        if self.exec is not None:
            self.rt.cudaGraphExecDestroy(self.exec)
        if self.graph is not None:
            self.rt.cudaGraphDestroy(self.graph)
        self.graph = self.exec = None


class TensorRTSession(Session):
    """An `ICudaEngine` with one `IExecutionContext` on one GPU; see the module docstring."""

    def __init__(self, trt: ModuleType, engine: Any, device: int, rt: ModuleType, memory: ContextMemory | None,
                 cuda_graph: bool = False, keep: tuple = ()) -> None:
        io = engine_io(trt, engine)
        super().__init__([t for t in io if t.is_input], [t for t in io if not t.is_input])
        self.rt, self.device, self.memory, self.trt, self.engine = rt, device, memory, trt, engine
        self._keep = (engine, *keep)  # the context needs its engine (and runtime) alive
        if memory is None:
            self.context = engine.create_execution_context()
        else:
            self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise EngineRunError("TensorRT could not create an execution context. Note: expected one per engine. "
                                 "Fix: check free GPU memory with nvidia-smi; run with -v for TensorRT's log")
        self._claimed = memory is not None
        if memory is not None:
            memory.claim(engine_memory_size(engine))
        self._generation: int | None = None
        self._graph = CudaGraph(rt) if cuda_graph else None
        self._runs = 0

    def refitter(self):
        """An `engines.trt_refit.EngineRefitter` over this engine (LoRA weights; needs a refittable build)."""
        from trt_distri.engines.trt_refit import EngineRefitter

        return EngineRefitter(self.trt, self.engine)

    # ---- bindings ------------------------------------------------------------------------------------------
    def _bind_impl(self, name: str, device_ptr: int) -> None:
        if self._graph is not None and self._runs and self._bound.get(name, device_ptr) != device_ptr:
            raise moved_tensor_error(name, self._bound[name], device_ptr)
        self._set_address(name, device_ptr)

    def _set_address(self, name: str, device_ptr: int) -> None:
        if not self.context.set_tensor_address(name, device_ptr):
            raise EngineRunError(f"TensorRT refused the address {device_ptr:#x} of tensor {name!r}. Note: expected "
                                 "device memory aligned to 256 bytes. Fix: bind an aligned device buffer")

    # ---- runs ----------------------------------------------------------------------------------------------
    def _run_async_impl(self, stream: int) -> None:
        self._take_memory()
        if self._graph is None or self._runs == 0:
            self._enqueue(stream)
        else:
            if not self._graph.captured:
                self._capture(stream)
            self._graph.launch(stream)
        self._runs += 1

    def _enqueue(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise EngineRunError("TensorRT could not enqueue the engine (execute_async_v3 returned False). Note: "
                                 "expected every I/O tensor bound to device memory of its full size. Fix: run with "
                                 "-v for TensorRT's log")

    def _capture(self, stream: int) -> None:
        capturable = getattr(self.context, "is_stream_capturable", None)  # TensorRT-RTX, TensorRT >= 10.x
        if capturable is not None and not capturable(stream):
            raise EngineRunError(f"this engine cannot be captured into a CUDA graph (is_stream_capturable returned "
                                 f"False). Note: expected an engine without data-dependent shapes or host "
                                 f"synchronization. {_NO_GRAPH_FIX}")
        try:
            self._graph.capture(stream, lambda: self._enqueue(stream))
        except EngineRunError as exc:
            raise EngineRunError(f"TensorRT failed while capturing a CUDA graph: {exc}. {_NO_GRAPH_FIX}") from exc

    def _take_memory(self) -> None:
        """Give the context the shared block, again whenever the block was replaced (its graph is then stale)."""
        if self.memory is None:
            return
        block = self.memory.block()
        if block.generation == self._generation:
            return
        setter = getattr(self.context, "set_device_memory", None)  # TensorRT >= 10.1; before: the property
        if setter is not None:
            setter(block.ptr, block.size)
        else:
            self.context.device_memory = block.ptr
        self._generation = block.generation
        if self._graph is not None:
            self._graph.reset()

    def _run_host_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy `feeds` to fresh device buffers, run once without a graph, copy the outputs back; the session's
        own bindings are restored afterwards (a captured graph still reads those)."""
        rt = self.rt
        check(rt.cudaSetDevice(self.device), "cudaSetDevice")
        stream = check(rt.cudaStreamCreate(), "cudaStreamCreate")
        outputs = {t.name: np.empty(t.shape, t.dtype) for t in self.outputs}
        arrays = {**feeds, **outputs}
        pointers: dict[str, int] = {}
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        try:
            for name, array in arrays.items():
                pointers[name] = int(check(rt.cudaMalloc(max(array.nbytes, 1)), "cudaMalloc"))
                self._set_address(name, pointers[name])
            for name, array in feeds.items():
                check(rt.cudaMemcpy(pointers[name], array.ctypes.data, array.nbytes, h2d), "cudaMemcpy")
            self._take_memory()
            self._enqueue(int(stream))
            check(rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            for name, array in outputs.items():
                check(rt.cudaMemcpy(array.ctypes.data, pointers[name], array.nbytes, d2h), "cudaMemcpy")
        finally:
            for name, ptr in self._bound.items():
                self._set_address(name, ptr)
            for ptr in pointers.values():
                rt.cudaFree(ptr)
            rt.cudaStreamDestroy(stream)
        return outputs

    # ---- ownership -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the graph and the context and give up the shared block (its owner frees it with the last)."""
        if self._graph is not None:
            self._graph.reset()
        self.context = None
        if self._claimed:
            self._claimed = False
            self.memory.release()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - never raise from a finalizer; the process may be exiting
            log.debug("closing a TensorRT session failed: %s", exc)
