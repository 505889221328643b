"""Process supervision: results, and a failing or killed worker stopping every worker in bounded time."""
from __future__ import annotations

import threading
import time

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
