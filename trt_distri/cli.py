"""`trt-distri` console entry point.

Each subcommand is one `_add_<name>(subparsers)` function that adds its parser and sets `handler`; `SUBCOMMANDS`
lists them (`run` lives in cli_run.py, `serve` in cli_serve.py). Handlers take the parsed arguments and return an
exit status.
User errors (`TrtDistriError`) print one line and exit 2; `-v` adds the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from trt_distri import __version__, log
from trt_distri.cli_run import add_run
from trt_distri.cli_serve import add_serve
from trt_distri.config import DEFAULT_MODEL, RANDOM_PREFIX, ExportRequest, GNMode, Precision
from trt_distri.engines.backend import BACKENDS, default_backend
from trt_distri.errors import ConfigError, MissingPackageError, TrtDistriError, UnsplittableError
from trt_distri.hub import resolve_model
from trt_distri.models import UNET_CONFIGS
from trt_distri.paths import check_output_dir
from trt_distri.runtime.launch import stop_on_sigterm

PROG = "trt-distri"
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130

#: Packages the export path imports, and the extra that installs them.
_EXPORT_PACKAGES = {"torch", "diffusers", "transformers", "safetensors", "onnx", "onnx_graphsurgeon", "onnxruntime"}

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- export
def _add_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export the per-patch UNet graphs and manifest into a work directory",
                              description="Export a UNet as per-patch ONNX graphs plus manifest.json "
                                          "(docs/design.md); from a pipeline (a folder with model_index.json, or "
                                          "random:<name>) also its text encoders, VAE decoder and tokenizers.")
    p.add_argument("model", nargs="?", default=DEFAULT_MODEL, metavar="MODEL",
                   help="Hugging Face model id (org/name: from the local Hugging Face cache, else downloaded), "
                        "local diffusers folder (pipeline or UNet) or a shipped architecture with random weights "
                        "as random:<name> "
                        f"(random:sdxl, random:sd15, random:tiny-sd, random:tiny-sdxl); default {DEFAULT_MODEL}")
    p.add_argument("--revision", default=None,
                   help="branch, tag or commit of a Hub model id (default main)")
    p.add_argument("--variant", default=None,
                   help="weight files name.<VARIANT>.safetensors of the model, such as fp16 (diffusers' variant)")
    p.add_argument("--random-weights", choices=sorted(UNET_CONFIGS), default=None, metavar="NAME",
                   help="the shipped architecture NAME (sdxl, sd15, tiny-sdxl, tiny-sd) with random weights; "
                        "the same as MODEL random:NAME")
    p.add_argument("--height", type=int, default=256, help="image height in pixels (default 256)")
    p.add_argument("--width", type=int, default=256, help="image width in pixels (default 256)")
    p.add_argument("--gpus", type=int, default=1, help="number of GPUs the engines will run on (default 1)")
    p.add_argument("--cfg-split", action=argparse.BooleanOptionalAction, default=None,
                   help="run the two classifier-free-guidance branches on separate halves of the GPUs "
                        "(default on; needs an even --gpus)")
    p.add_argument("--no-guidance", dest="guidance", action="store_false",
                   help="export for sampling without classifier-free guidance (batch 1)")
    p.add_argument("--dtype", choices=[m.value for m in Precision], default=Precision.FP16.value,
                   help="precision of the graphs (default fp16)")
    p.add_argument("--gn-mode", choices=[m.value for m in GNMode], default=GNMode.CORRECTED_ASYNC.value,
                   help="how GroupNorm statistics are combined across patches (default corrected-async)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights for random:<name> (default 0)")
    p.add_argument("--unet-only", action="store_true",
                   help="export the UNet alone, without the text encoders, VAE decoder and tokenizers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing work directory")
    p.add_argument("-o", "--out", dest="out_dir", type=Path, default=Path("trt-distri-work"), metavar="WORKDIR",
                   help="work directory to write (default trt-distri-work)")
    p.set_defaults(handler=_run_export)


def _export_request(args: argparse.Namespace) -> ExportRequest:
    model = args.model
    if args.random_weights:
        if model != DEFAULT_MODEL:
            raise ConfigError(f"both MODEL ({model}) and --random-weights {args.random_weights} were given. "
                              "Fix: pass one of them")
        model = RANDOM_PREFIX + args.random_weights
    model = resolve_model(model, args.revision, args.variant, args.unet_only)  # a model id -> its cached snapshot
    return ExportRequest(model=model, height=args.height, width=args.width, gpus=args.gpus,
                         out_dir=args.out_dir, cfg_split=args.cfg_split is not False, guidance=args.guidance,
                         precision=Precision(args.dtype), gn_mode=GNMode(args.gn_mode), overwrite=args.overwrite,
                         seed=args.seed, unet_only=args.unet_only, variant=args.variant)


def _run_export(args: argparse.Namespace) -> int:
    from trt_distri.export.plan import make_plan

    request = _export_request(args)
    note = request.split_note()
    if note:  # only a surprise when asked for explicitly or with several GPUs; the default on 1 GPU is normal
        explicit = args.cfg_split is not None or request.gpus > 1
        logger.log(logging.WARNING if explicit else logging.DEBUG, note)
    # Check the model and the split before loading anything heavy: the exporter checks again.
    try:
        make_plan(request.unet_config(), request.height, request.width, request.patch_devices)
    except UnsplittableError as exc:
        if request.patch_devices == request.gpus:
            raise
        raise UnsplittableError(f"with --gpus {request.gpus} and --cfg-split each image is cut over "
                                f"{request.patch_devices} GPUs: {exc}") from exc
    check_output_dir(request.out_dir, request.overwrite)  # before the model loads (seconds)
    logger.info("exporting %s at %dx%d for %d GPU(s) (%d per image, batch %d, %s, gn %s) into %s",
                request.model, request.height, request.width, request.gpus, request.patch_devices, request.batch,
                request.precision.value, request.gn_mode.value, request.out_dir)
    if request.exports_pipeline:
        from trt_distri.export.pipeline_export import export_pipeline as export
    else:
        from trt_distri.export.exporter import export_unet as export
    manifest = export(request)
    print(manifest)
    return 0


@contextlib.contextmanager
def _export_packages(command: str) -> Iterator[None]:
    """Turn a missing dependency of the export extra into an error that names the fix."""
    try:
        yield
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top not in _EXPORT_PACKAGES:
            raise
        raise MissingPackageError(f"{command} needs the package {top!r}, which is not installed. "
                                  f"Fix: pip install -e '.[export]'") from exc


# ---------------------------------------------------------------- build
def _add_build(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build", help="build the engines of a work directory's graphs",
                              description="Build every segment of both graph sets into WORKDIR/engines/<backend>/, "
                                          "one process per GPU; engines already built with the same key are reused.")
    p.add_argument("workdir", type=Path, metavar="WORKDIR", help="work directory written by `trt-distri export`")
    p.add_argument("--backend", choices=list(BACKENDS), default=None,
                   help="trt (TensorRT, on GPUs), trt-rtx (TensorRT-RTX, builds without a GPU) or ort (ONNX "
                        "Runtime graphs); default: trt where the tensorrt package imports, else ort (as `run`)")
    p.add_argument("--gpus", type=lambda s: [int(i) for i in s.split(",")], default=None, metavar="I,J,...",
                   help="GPU indices to build on (default: every GPU nvidia-smi lists)")
    p.add_argument("--opt-level", type=int, default=None, help="TensorRT builder optimisation level (0-5)")
    p.add_argument("--workspace-mib", type=int, default=None, help="TensorRT workspace limit in MiB")
    p.add_argument("--refittable", action="store_true", help="build engines whose weights can be replaced")
    p.add_argument("--strip-weights", action="store_true",
                   help="leave weights out of the engines; they are refitted from the graphs when loaded")
    p.set_defaults(handler=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from trt_distri.engines.backend import get_backend
    from trt_distri.engines.build import build_workdir

    backend = args.backend or default_backend()
    options = get_backend(backend).build_options(
        args.workdir / "engines" / backend, optimization_level=args.opt_level,
        workspace_bytes=None if args.workspace_mib is None else args.workspace_mib << 20, refittable=args.refittable,
        strip_weights=args.strip_weights)
    report = build_workdir(args.workdir, backend, args.gpus, options, progress=_progress_line)
    logger.info("backend %s: %d engine(s) built, %d reused, in %.1f s", backend, len(report.built),
                len(report.reused), report.seconds)
    print(args.workdir / "engines" / backend)
    return 0


def _progress_line(done: int, total: int, label: str, seconds: float) -> None:
    end = "\n" if done == total or not sys.stderr.isatty() else "\r"
    print(f"[{done}/{total}] {label} {seconds:.1f} s", end=end, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- parser and entry point
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_export, _add_build, add_run, add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="DistriFusion displaced patch parallelism for "
                                                            "diffusion UNets, deployed with TensorRT.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default sys.argv[1:]), run the subcommand and return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USER_ERROR
    log.configure(verbose=args.verbose)
    stop_on_sigterm()  # a scheduler's stop unwinds like Ctrl-C: rank processes are stopped, partial files removed
    try:
        with _export_packages(args.command):
            return args.handler(args)
    except KeyboardInterrupt:
        _fail(args, "interrupted")
        return EXIT_INTERRUPTED
    except TrtDistriError as exc:
        _fail(args, f"error: {exc}")
        return EXIT_USER_ERROR
    except Exception as exc:  # a bug: still one line unless -v
        _fail(args, f"internal error: {type(exc).__name__}: {exc}. This is a bug in trt-distri; please report it "
                    "with the traceback")
        return EXIT_INTERNAL_ERROR


def _fail(args: argparse.Namespace, message: str) -> None:
    if args.verbose:
        traceback.print_exc(file=sys.stderr)
    hint = "" if args.verbose else " (run with -v for the traceback)"
    print(f"{PROG}: {' '.join(message.split())}{hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
