"""Shared fixtures (tiny UNets built from shipped configs, never downloaded) and skips for missing hardware."""
from __future__ import annotations

import functools
import importlib

import pytest

from helpers import rel_err as _rel_err
from trt_distri.engines.gpus import list_gpus

try:  # one thread: on a shared 2-core machine torch's default pool oversubscribes the cores (issue 17)
    import torch

    torch.set_num_threads(1)
except ImportError:  # the serving path's tests run without torch
    pass


@functools.cache
def _import_error(module: str) -> str | None:
    """Why `module` cannot be imported, or None when it can."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # ImportError, or a binding whose shared libraries fail to load
        return f"{type(exc).__name__}: {exc}"
    return None


def _skip_reason(item: pytest.Item) -> str | None:
    gpus = None
    if item.get_closest_marker("gpu") or item.get_closest_marker("multi_gpu"):
        gpus = len(list_gpus())
        if gpus == 0:
            return "no CUDA GPU on this machine"
    if item.get_closest_marker("multi_gpu") and gpus is not None and gpus < 2:
        return f"needs two or more CUDA GPUs, this machine has {gpus}"
    for marker, module, package in (("tensorrt", "tensorrt", "tensorrt"),
                                     ("rtx", "tensorrt_rtx_bindings", "tensorrt-rtx-cu13-bindings")):
        if item.get_closest_marker(marker) and (why := _import_error(module)):
            return f"needs the {package} package (import {module} failed: {why})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        reason = _skip_reason(item)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def tiny_sd():
    """SD 1.x-shaped tiny UNet (3 levels, 2 downsamples), seeded random fp32 weights, eval mode."""
    from trt_distri.models import random_unet

    return random_unet("tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl():
    """SDXL-shaped tiny UNet (text_time embedding, 2 downsamples), seeded random fp32 weights, eval mode."""
    from trt_distri.models import random_unet

    return random_unet("tiny-sdxl")


@pytest.fixture
def rel_err():
    """The `helpers.rel_err` function: ||a - b|| / ||b|| for numpy arrays and torch tensors."""
    return _rel_err
