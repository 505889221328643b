"""Exception hierarchy.

`TrtDistriError` and its subclasses are user-facing: their message says what failed, what was expected and
what was found, and how to fix it. The CLI prints them as one line. `InternalError` is a bug in trt-distri.
"""


class TrtDistriError(Exception):
    """Root of every error a user can cause and fix."""


class ConfigError(TrtDistriError):
    """A setting (size, device count, mode, path) is invalid."""


class InvalidArgumentError(ConfigError):
    """An argument is out of range or does not match the work directory (size, embedding shape, scheduler)."""


class UnavailableError(TrtDistriError):
    """What was asked for is not in this work directory or installation (a VAE, text encoders)."""


class ClosedError(TrtDistriError):
    """The generator was closed."""


class UnsplittableError(ConfigError):
    """The image height cannot be cut into equal, even patches for the requested devices."""


class UnsupportedModelError(TrtDistriError):
    """The model uses a feature trt-distri does not export (ControlNet residuals, attention masks, ...)."""


class MissingPackageError(TrtDistriError):
    """An optional package is needed for this path; the message names it."""


class ManifestError(TrtDistriError):
    """A work directory's manifest or graphs are missing, corrupt or do not match the request."""


class InternalError(Exception):
    """A bug in trt-distri: please report it with the traceback (`-v`)."""


class EngineBuildError(TrtDistriError):
    """TensorRT could not parse a graph, build it into an engine, or read an engine back."""


class EngineCacheError(TrtDistriError):
    """A built engine cannot be used: missing, built for another machine or graph, or damaged on disk."""


class EngineMismatchError(EngineCacheError):
    """An engine's key fields (graph, GPU, backend version, ...) differ from this machine's or the manifest's."""


class CorruptEngineError(EngineCacheError):
    """An engine file is truncated or its checksum differs from its metadata."""


class CudaError(TrtDistriError):
    """A CUDA runtime call failed (trt_distri.cudart.check names the call and CUDA's error)."""


class EngineRunError(TrtDistriError):
    """A backend failed while running a loaded engine (for instance capturing or replaying its CUDA graph)."""
