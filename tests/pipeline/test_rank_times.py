"""ImageResult.ranks from the rank reports: slowest load and loop, largest step times, tolerant of missing keys."""
from __future__ import annotations

from trt_distri.pipeline import rank_times


def _run(wall_s, first, sync, async_):
    return {"variant": "run", "wall_s": wall_s, "first_step_ms": first, "sync_step_ms": sync,
            "async_step_ms": async_, "sync_steps": 1, "async_steps": 2}


def test_gpu_reports_give_the_slowest_rank():
    reports = [{"load_s": 3.0, "runs": [_run(9.0, 900.0, 90.0, 9.0), _run(2.0, 50.0, 20.0, 10.0)]},
               {"load_s": 4.0, "runs": [_run(2.5, 40.0, 25.0, 8.0)]}]
    assert rank_times(reports) == {"load_s": 4.0, "loop_s": 2.5, "first_step_ms": 50.0, "sync_step_ms": 25.0,
                                   "async_step_ms": 10.0}


def test_missing_keys_are_left_out():
    # the CPU path: a StepTimes summary per rank, no load_s or wall_s, and the host device times no step
    cpu = [{"runs": [{"sync_step_ms": None, "async_step_ms": None, "first_step_ms": None, "sync_steps": 0,
                      "async_steps": 0}]}] * 2
    assert rank_times(cpu) == {}
    # an all-synchronous GPU run has no async step
    sync_only = [{"load_s": 1.0, "runs": [_run(2.0, 3.0, 2.0, None)]}]
    assert rank_times(sync_only) == {"load_s": 1.0, "loop_s": 2.0, "first_step_ms": 3.0, "sync_step_ms": 2.0}
    # an older report without first_step_ms
    assert rank_times([{"load_s": 1.0, "runs": [{"wall_s": 2.0}]}]) == {"load_s": 1.0, "loop_s": 2.0}
    assert rank_times([]) == {}
