"""Ctrl-C during denoising ends `trt-distri run` with status 130 and one line: CPU ranks (threads inside ONNX
Runtime) are stopped before the process exits, GPU rank processes (host stand-ins) are stopped too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_local_runtime import _export

HERE = Path(__file__).parent


def _interrupt_run(argv: list[str], timeout_s: float = 240) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(HERE / "interrupt_targets.py"), *argv], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)
    lines, deadline = [], time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if not line or "denoising" in line:
                break
        assert lines and "denoising" in lines[-1], "".join(lines)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines) + rest


@pytest.mark.parametrize("ranks", [1, 2])
def test_ctrl_c_on_cpu_ranks_exits_130(tmp_path, tiny_sd, ranks):
    work = _export(tiny_sd, "tiny-sd", tmp_path, ranks)
    code, err = _interrupt_run(["run", str(work), "--device", "cpu", "--steps", "900", "-o",
                                str(tmp_path / "x.npy")])
    assert code == 130 and "terminate called" not in err, err
    assert err.strip().splitlines()[-1].startswith("trt-distri: interrupted") and "Traceback" not in err, err
    assert not (tmp_path / "x.npy").exists()


def test_ctrl_c_with_rank_processes_exits_130(tmp_path, tiny_sd):
    work = _export(tiny_sd, "tiny-sd", tmp_path, 1)  # host stand-ins: one process per pool (no shared group)
    code, err = _interrupt_run(["--host-ranks", "run", str(work), "--device", "cuda", "--steps", "900", "-o",
                                str(tmp_path / "x.npy")])
    assert code == 130, err
    assert err.strip().splitlines()[-1].startswith("trt-distri: interrupted"), err


def _gpu_processes() -> set[int]:
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


@pytest.mark.gpu
@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.multi_gpu)])
def test_ctrl_c_with_cuda_rank_processes_exits_130_and_frees_the_gpus(tmp_path, tiny_sd, ranks):
    work = _export(tiny_sd, "tiny-sd", tmp_path, ranks)
    before = _gpu_processes()
    code, err = _interrupt_run(["--gpu-ranks", "run", str(work), "--device", "cuda", "--gpus", str(ranks),
                                "--steps", "900", "-o", str(tmp_path / "x.npy")])
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("trt-distri: interrupted"), err
    deadline = time.monotonic() + 10
    while (left := _gpu_processes() - before - {os.getpid()}) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes still on the GPUs 10 s after the exit: {left}"
    assert not (tmp_path / "x.npy").exists()
