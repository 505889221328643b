"""trt-distri: DistriFusion displaced patch parallelism for diffusion UNets, deployed over several GPUs."""

__version__ = "0.1.0"
