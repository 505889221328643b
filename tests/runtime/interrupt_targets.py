"""`trt-distri run` in a child process for the Ctrl-C tests: prints "denoising" to stderr once step 3 of world
rank 0 is reached, so that the test interrupts during the denoising loop. `--host-ranks` runs the GPU path's rank
processes with the host stand-ins of host_ranks.py (importable by spawned processes); `--gpu-ranks` runs real CUDA
rank processes with the probe installed in each."""
from __future__ import annotations

import sys


def probe_steps() -> None:
    from trt_distri.runtime import executor

    original = executor.RankExecutor._scheduler_step

    def probed(self, i: int) -> None:
        if i == 3 and self.comm.rank == 0 and self.opt.group == 0:
            print("denoising", file=sys.stderr, flush=True)
        original(self, i)

    executor.RankExecutor._scheduler_step = probed


def serve_probed_host_rank(spec):
    from host_ranks import serve_host_rank

    probe_steps()
    return serve_host_rank(spec)


def serve_probed_gpu_rank(spec):
    from trt_distri.runtime.gpu import serve_rank

    probe_steps()
    return serve_rank(spec)


def main(argv: list[str]) -> int:
    from trt_distri.cli import main as cli

    if argv[0] == "--host-ranks":
        import host_ranks
        import interrupt_targets  # this file as a module: rank processes find their target by its name

        import trt_distri.runtime.gpu as gpu

        class ProbedPool(host_ranks.HostRankPool):
            serve = staticmethod(interrupt_targets.serve_probed_host_rank)

        gpu.GpuRankPool, gpu.NcclLibrary, argv = ProbedPool, host_ranks.FakeNccl, argv[1:]
    elif argv[0] == "--gpu-ranks":  # real CUDA rank processes, probed in each
        import interrupt_targets

        import trt_distri.runtime.gpu as gpu

        class ProbedGpuPool(gpu.GpuRankPool):
            serve = staticmethod(interrupt_targets.serve_probed_gpu_rank)

        gpu.GpuRankPool, argv = ProbedGpuPool, argv[1:]
    probe_steps()
    return cli(argv)


if __name__ == "__main__":
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    sys.exit(main(sys.argv[1:]))
