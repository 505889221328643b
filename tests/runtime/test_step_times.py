"""The executor's step-time summary: medians per kind and the first (cold) step."""
from __future__ import annotations

from trt_distri.runtime.executor import StepTimes


def test_summary_reports_the_first_step():
    summary = StepTimes(sync_ms=[12.34567, 2.0, 3.0], async_ms=[1.0, 1.5]).summary()
    assert summary["first_step_ms"] == round(12.34567, 3)
    assert summary["sync_step_ms"] == 3.0 and summary["async_step_ms"] == 1.25
    assert summary["sync_steps"] == 3 and summary["async_steps"] == 2


def test_summary_without_steps_has_no_first_step():
    summary = StepTimes().summary()
    assert summary["first_step_ms"] is None and summary["sync_step_ms"] is None and summary["async_step_ms"] is None
