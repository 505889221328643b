"""`trt-distri serve` as a process: SIGTERM answers the queued requests, stops the ranks and exits within 10 s."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from serve_client import metrics, post, wait_for
from trt_distri.cli_serve import start_serve_process

PROMPT = "a red fox in the snow"


def rank_processes(pid: int) -> set[int]:
    """Live processes that `pid` started with multiprocessing's spawn (the GPU ranks), from /proc."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            out.add(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


# a request that runs long: the most DDIM steps the pipelines' scheduler takes (steps_offset 1 reaches timestep 1000
# at 1000 steps, which trt_distri.schedulers refuses up front)
LONG_STEPS = 998


def sigterm_while_busy(workdir: Path, device: str, steps: int, gpus: int = 0) -> None:
    proc, url = start_serve_process(workdir, "--device", device, "--drain", "2", "--max-queue", "4", timeout_s=180)
    try:
        results: dict = {}
        for key, body in (("long", {"prompt": PROMPT, "steps": steps}), ("queued", {"prompt": PROMPT, "steps": 2})):
            threading.Thread(target=lambda k=key, b=body: results.__setitem__(k, _post(url, b)), daemon=True).start()
            wait_for(lambda: metrics(url)["counts"]["accepted"] == (1 if key == "long" else 2), f"{key} accepted")
        wait_for(lambda: metrics(url)["running"] == 1 and metrics(url)["queue_depth"] == 1, "a busy server")
        ranks = rank_processes(proc.pid)
        assert len(ranks) == gpus  # CPU ranks are threads of serve
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        took = time.monotonic() - start
        assert took < 10.0, f"serve took {took:.1f} s to exit after SIGTERM"
        print(f"exited {took:.1f} s after SIGTERM")
        assert proc.returncode == 0
        wait_for(lambda: "queued" in results, "the queued request's answer", 5)
        assert results["queued"][0] == 503  # queued, never started: told the server is stopping
        assert not [p for p in ranks if alive(p)], "a rank process outlived serve"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _post(url: str, body: dict):
    try:
        return post(url, "/v1/generate", body, timeout_s=60)
    except OSError as exc:  # the long request's connection is closed when the drain time runs out
        return (None, {}, str(exc).encode())


def test_sigterm_exits_within_10_s_on_the_cpu(serve_workdir):
    sigterm_while_busy(serve_workdir, "cpu", steps=LONG_STEPS)


@pytest.mark.gpu
@pytest.mark.parametrize("gpus", [1, pytest.param(2, marks=pytest.mark.multi_gpu)])
def test_sigterm_stops_the_gpu_rank_processes(tmp_path, gpus):
    from trt_distri.cli import main

    work = tmp_path / "work"
    assert main(["export", "random:tiny-sdxl", "--height", "128", "--width", "128", "--gpus", str(gpus), "--no-cfg-split",
                 "--dtype", "fp32", "-o", str(work)]) == 0
    sigterm_while_busy(work, "cuda", steps=LONG_STEPS, gpus=gpus)
