"""Process supervision: results, and a failing or killed worker stopping every worker in bounded time."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launch_targets import counting_server, echo, logs_a_warning, one_is_killed, one_raises
from trt_distri import log
from trt_distri.errors import ConfigError
from trt_distri.runtime.comm import RankFailedError
from trt_distri.runtime.launch import RankPool, WorkerSpec, launcher_env, rendezvous_ids


def _specs(n):
    return [WorkerSpec(r, r, {}) for r in range(n)]


def test_results_come_back_in_rank_order():
    pool = RankPool(echo, _specs(3), timeout_s=60)
    try:
        assert pool.ready == [0, 10, 20] and pool.call("x", timeout_s=60) == [(0, "x"), (1, "x"), (2, "x")]
    finally:
        pool.close()


def test_workers_log_as_the_parent_does_with_their_rank(capfd):
    handler = log.configure()
    try:
        RankPool(logs_a_warning, _specs(2), timeout_s=60).close()
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger(log.PACKAGE_LOGGER).setLevel(logging.NOTSET)
    err = capfd.readouterr().err
    assert "[rank 0] WARNING trt_distri.runtime.worker: loaded" in err
    assert "[rank 1] WARNING trt_distri.runtime.worker: loaded" in err


@pytest.mark.parametrize("target,message", [(one_raises, "rank 1 failed: ValueError: device lost"),
                                            (one_is_killed, "rank 0 exited with code -9")])
def test_a_worker_failing_to_load_stops_all_within_bounded_time(target, message):
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=message):
        RankPool(target, _specs(3), timeout_s=120, grace_s=5)
    assert time.monotonic() - start < 30  # the sleeping workers were terminated, not waited for


def test_a_pool_keeps_its_processes_across_calls_and_closes_them(tmp_path):
    """What a rank loads once serves every later call: same processes, results in rank order, close() runs."""
    specs = [WorkerSpec(r, r, {"dir": tmp_path}) for r in range(2)]
    with RankPool(counting_server, specs, timeout_s=60) as pool:
        pids = [r["pid"] for r in pool.ready]
        assert [r["rank"] for r in pool.ready] == [0, 1]
        first, second = pool.call("a", timeout_s=60), pool.call("b", timeout_s=60)
        assert [(r[0], r[1], r[2]) for r in first] == [(0, "a", 1), (1, "a", 1)]
        assert [(r[0], r[1], r[2]) for r in second] == [(0, "b", 2), (1, "b", 2)]
        assert [r[3] for r in second] == pids  # no new processes
    assert not pool.open and [(tmp_path / f"closed{r}").read_text() for r in range(2)] == ["2", "2"]
    with pytest.raises(RankFailedError, match="were stopped.*Fix: start a new pool"):
        pool.call("c")


@pytest.mark.parametrize("request_, message", [("fail", "rank 1 failed: ValueError: device lost"),
                                               ("hang", "rank 1 exited with code -9")])
def test_a_failed_pool_call_stops_every_worker_within_bounded_time(tmp_path, request_, message):
    pool = RankPool(counting_server, [WorkerSpec(r, r, {"dir": tmp_path}) for r in range(3)], timeout_s=60,
                    grace_s=5)
    pids = [r["pid"] for r in pool.ready]
    start = time.monotonic()
    with pytest.raises(RankFailedError, match=message):
        pool.call(request_, timeout_s=120)
    assert time.monotonic() - start < 30 and not pool.open
    for pid in pids:  # terminated, not left holding a GPU
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sigterm_to_the_parent_stops_every_rank(tmp_path):
    """A scheduler's SIGTERM must not leave rank processes behind holding GPUs (stop_on_sigterm + RankPool)."""
    parent = _parent_process(tmp_path, "stop_on_sigterm()\n"
                                       "try:\n"
                                       "    RankPool(writes_pid_and_sleeps, specs, grace_s=5)\n"
                                       "except KeyboardInterrupt as exc:\n"
                                       "    print('stopped:', exc)\n")
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


def test_pool_workers_leave_when_their_parent_is_killed(tmp_path):
    """SIGKILL leaves the parent no chance to stop its pool: the idle workers notice and exit on their own."""
    parent = _parent_process(tmp_path, "pool = RankPool(counting_server, specs)\n"
                                       "print(*[r['pid'] for r in pool.ready], flush=True)\n"
                                       "time.sleep(120)\n")
    pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2, "the pool did not start"
    parent.kill()
    parent.wait(10)
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "pool workers outlived their parent"
        time.sleep(0.2)


def _parent_process(tmp_path: Path, body: str) -> subprocess.Popen:
    """A Python process that starts 2 ranks (`specs`, writing to tmp_path) as `body` says; stdout piped."""
    script = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1])\n"
              "from launch_targets import counting_server, writes_pid_and_sleeps\n"
              "from trt_distri.runtime.launch import RankPool, WorkerSpec, stop_on_sigterm\n"
              "specs = [WorkerSpec(r, r, {'dir': Path(sys.argv[2])}) for r in range(2)]\n" + body)
    return subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")  # an exited worker whose parent died is reaped by init, or a zombie
    return not (status.exists() and "zombie" in status.read_text())


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


def test_rank_processes_start_from_a_script_without_a_main_guard():
    """Spawned workers do not run the caller's main script again (multiprocessing's "bootstrapping phase" error
    otherwise, and the script's work done once per worker)."""
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(here / "unguarded_script.py")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("script body ran") == 1 and "results [(0, 'x'), (1, 'x')]" in proc.stdout
    assert "bootstrapping phase" not in proc.stderr
