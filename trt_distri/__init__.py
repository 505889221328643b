"""trt-distri: DistriFusion displaced patch parallelism for diffusion UNets, deployed over several GPUs."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`from trt_distri import DistriPipeline` without importing the runtime with the package."""
    if name == "DistriPipeline":
        from trt_distri.diffusers_pipeline import DistriPipeline

        return DistriPipeline
    raise AttributeError(f"module 'trt_distri' has no attribute {name!r}")
