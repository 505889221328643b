"""Process supervision: results, and a failing or killed worker stopping every worker in bounded time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch_targets import echo, one_is_killed, one_raises
from trt_distri.errors import ConfigError
from trt_distri.runtime.comm import RankFailedError
from trt_distri.runtime.launch import WorkerSpec, launcher_env, rendezvous_ids, supervise


def _specs(n):
    return [WorkerSpec(r, r, {}) for r in range(n)]


def test_results_come_back_in_rank_order():
    assert supervise(echo, _specs(3), timeout_s=60) == [0, 10, 20]


@pytest.mark.parametrize("target,message", [(one_raises, "rank 1 failed: ValueError: device lost"),
                                            (one_is_killed, "rank 0 exited with code -9")])
def test_a_failing_worker_stops_all_within_bounded_time(target, message):
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=message):
        supervise(target, _specs(3), timeout_s=120, grace_s=5)
    assert time.monotonic() - start < 30  # the sleeping workers were terminated, not waited for


def test_sigterm_to_the_parent_stops_every_rank(tmp_path):
    """A scheduler's SIGTERM must not leave rank processes behind holding GPUs (stop_on_sigterm + supervise)."""
    here = Path(__file__).parent
    script = ("import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
              "from launch_targets import writes_pid_and_sleeps\n"
              "from trt_distri.runtime.launch import WorkerSpec, stop_on_sigterm, supervise\n"
              "stop_on_sigterm()\n"
              "try:\n"
              "    supervise(writes_pid_and_sleeps, [WorkerSpec(r, r, {'dir': Path(sys.argv[2])}) for r in range(2)],"
              " grace_s=5)\n"
              "except KeyboardInterrupt as exc:\n"
              "    print('stopped:', exc)\n")
    parent = subprocess.Popen([sys.executable, "-c", script, str(here), str(tmp_path)], stdout=subprocess.PIPE,
                              text=True)
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("rank*.pid"))) < 2:
        assert time.monotonic() < deadline and parent.poll() is None, "the ranks did not start"
        time.sleep(0.2)
    pids = [int(p.read_text()) for p in tmp_path.glob("rank*.pid")]
    start = time.monotonic()
    parent.send_signal(signal.SIGTERM)
    out, _ = parent.communicate(timeout=30)
    assert "stopped: signal SIGTERM" in out and time.monotonic() - start < 30
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_launcher_environments():
    assert launcher_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}).local_rank == 1
    assert launcher_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "2"}).world_rank == 2
    with pytest.raises(ConfigError, match="torchrun"):
        launcher_env({})


def test_rendezvous_hands_rank0_ids_to_the_others(tmp_path):
    ids = [bytes([i]) * 128 for i in range(3)]
    got = {}
    reader = threading.Thread(target=lambda: got.update(r1=rendezvous_ids(tmp_path, 1, None, timeout_s=20)))
    reader.start()
    time.sleep(0.3)
    assert rendezvous_ids(tmp_path, 0, lambda: ids) == ids
    reader.join()
    assert got["r1"] == ids


def test_rendezvous_times_out_with_the_fix(tmp_path):
    with pytest.raises(RankFailedError, match="--rendezvous"):
        rendezvous_ids(tmp_path, 1, None, timeout_s=0.3)
