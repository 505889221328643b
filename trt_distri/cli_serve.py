"""`trt-distri serve WORKDIR`: load the work directory once and answer image requests over HTTP (trt_distri.serve).

Prints one line, `serving WORKDIR on http://HOST:PORT`, once the ranks are loaded and the port listens; SIGTERM or
Ctrl-C stop it (queued requests get 503, the running one `--drain` seconds, then the ranks are stopped).
"""
from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

from trt_distri.engines.backend import BACKENDS, DEFAULT_BACKEND
from trt_distri.errors import MissingPackageError

logger = logging.getLogger(__name__)
STOP_BUDGET_S = 9.5  # from the stop signal to the ranks stopped


def add_serve(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve a work directory over HTTP (OpenAI images API and PNG)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("workdir", type=Path, metavar="WORKDIR", help="work directory exported from a pipeline")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="cuda: one process per GPU, kept loaded (default where GPUs exist); cpu: ranks as threads")
    p.add_argument("--backend", choices=list(BACKENDS), default=DEFAULT_BACKEND)
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the UNet as CUDA graphs on GPUs (default: the API's, on with ONNX Runtime)")
    p.add_argument("--max-queue", type=int, default=8, help="requests waiting behind the running one; more get "
                                                            "503 (default 8)")
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds a request may take, queue wait included (default 600; requests may ask for less)")
    p.add_argument("--max-images", type=int, default=4, help="largest n of /v1/images/generations (default 4)")
    p.add_argument("--drain", type=float, default=5.0,
                   help="after SIGTERM, seconds the running generation may still take (default 5, at most 8)")
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    try:
        from trt_distri.serve import ImageServer, ServeOptions, check_servable
    except ModuleNotFoundError as exc:
        raise MissingPackageError(f"serve needs the package {exc.name!r}, which is not installed. Fix: pip "
                                  "install -e '.[serve]'") from exc
    from trt_distri.api import Generator

    options = _options(args, ServeOptions)
    generator = Generator(args.workdir, args.device, backend=args.backend, cuda_graph=args.cuda_graph)
    stopped_at = None
    try:
        check_servable(generator)
        server = ImageServer(generator, options)
        print(f"serving {args.workdir} on {server.url}", flush=True)
        server.run()
        stopped_at = time.monotonic()
        idle = server.close(timeout_s=1.0)
    except BaseException:
        generator.close()
        raise
    if not idle:
        logger.warning("a generation was still running %.0f s after the stop: its ranks are stopped as this process "
                       "exits", options.drain_s)
        _exit_under_running_generation()
    _close_within(generator, STOP_BUDGET_S - (time.monotonic() - stopped_at) - options.drain_s)
    logger.info("stopped")
    return 0


def _options(args: argparse.Namespace, cls):
    from trt_distri.errors import ConfigError

    for name, value, low in (("--max-queue", args.max_queue, 0), ("--max-images", args.max_images, 1)):
        if value < low:
            raise ConfigError(f"invalid {name}. Note: expected an integer >= {low}, got {value}")
    if not 0 < args.timeout or not 0 <= args.drain <= 8:
        raise ConfigError(f"invalid --timeout or --drain. Note: expected --timeout > 0 and --drain in 0..8 (SIGTERM "
                          f"stops the server within 10 s), got {args.timeout:g} and {args.drain:g}")
    return cls(args.host, args.port, args.max_queue, args.timeout, args.max_images, args.drain)


def _exit_under_running_generation() -> None:
    """End the process while a generation still runs on another thread: rank processes are terminated, then the
    process exits (status 0) without the interpreter's teardown, which would destroy ONNX Runtime's threads under
    the running session of a CPU generation (C++ terminate: SIGABRT)."""
    import multiprocessing
    import os
    import sys

    for child in multiprocessing.active_children():
        child.terminate()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _close_within(generator, seconds: float) -> None:
    """Close the generator (stop its rank processes), waiting at most `seconds`; past that, the processes are
    daemons and end with this process."""
    closer = threading.Thread(target=generator.close, name="trt-distri-close", daemon=True)
    closer.start()
    closer.join(max(1.0, seconds))
    if closer.is_alive():
        logger.warning("the ranks did not stop within %.0f s; they end with this process", max(1.0, seconds))


def start_serve_process(workdir: Path, *options: str, timeout_s: float = 600.0):
    """`trt-distri serve WORKDIR --port 0 OPTIONS` as a subprocess (stderr inherited), once it serves:
    (Popen, base URL). For tools and tests that drive a real server; raises ConfigError when it does not start."""
    import subprocess
    import sys

    from trt_distri.errors import ConfigError

    proc = subprocess.Popen([sys.executable, "-m", "trt_distri.cli", "serve", str(workdir), "--port", "0", *options],
                            stdout=subprocess.PIPE, text=True)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not line or " on http://" not in line[0]:
        proc.kill()
        proc.wait(10)
        raise ConfigError(f"trt-distri serve {workdir} did not start within {timeout_s:.0f} s (its stderr is "
                          f"above). Note: its first line was {line[0] if line else 'nothing'!r}")
    return proc, line[0].split(" on ", 1)[1].strip()
