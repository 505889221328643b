"""One set of generation-argument rules (trt_distri.params) for the CLI, the Python API and the C API."""
from __future__ import annotations

import math

import pytest

from trt_distri.errors import InvalidArgumentError
from trt_distri.params import check_generation, check_prompt, check_repeat

GOOD = dict(steps=30, guidance=5.0, seed=0, scheduler="ddim", warmup_steps=4)


@pytest.mark.parametrize("change, message", [
    ({"guidance": math.nan}, "invalid guidance"), ({"guidance": math.inf}, "invalid guidance"),
    ({"guidance": "5"}, "invalid guidance"), ({"steps": 0}, "invalid steps"), ({"steps": 1000}, "invalid steps: DDIM"),
    ({"steps": 100_000}, "1..1024"), ({"steps": 2.5}, "invalid steps"), ({"scheduler": "euler", "steps": 1025},
                                                                         "1..1024"),
    ({"scheduler": "dpm++", "steps": 1024}, "invalid steps: DPM-Solver"),
    ({"steps": 1001}, "1..1000 for DDIM"),
    ({"seed": -1}, "invalid seed"), ({"seed": 2**64}, "invalid seed"), ({"seed": 2**70}, "invalid seed"),
    ({"warmup_steps": -1}, "invalid warmup_steps"), ({"scheduler": "lms"}, "unknown scheduler"),
])
def test_bad_values_are_refused_with_the_fix(change, message):
    with pytest.raises(InvalidArgumentError, match=f"{message}.*Fix: "):
        check_generation(**{**GOOD, **change})


@pytest.mark.parametrize("change", [{"seed": 2**64 - 1}, {"steps": 999}, {"scheduler": "euler", "steps": 1024},
                                    {"scheduler": "dpm++", "steps": 1}, {"warmup_steps": 0}, {"guidance": 0}])
def test_limits_are_accepted(change):
    check_generation(**{**GOOD, **change})


def test_repeat():
    check_repeat(1)
    with pytest.raises(InvalidArgumentError, match="invalid repeat.*Fix: pass 1 or more"):
        check_repeat(0)


def test_prompts_must_be_utf8():
    assert check_prompt("a red fox") == "a red fox" and check_prompt("ein Fuchs \u00e4".encode()) == "ein Fuchs \u00e4"
    for bad in (b"\xff\xfe", "\udcff\udcfe", None):
        with pytest.raises(InvalidArgumentError, match="Fix: "):
            check_prompt(bad)


def test_the_python_api_applies_the_same_rules():
    from trt_distri.api import Generator

    from types import SimpleNamespace

    g = Generator.__new__(Generator)  # the rules need only the manifest's size and scheduler: nothing is loaded
    g.manifest = SimpleNamespace(plan=SimpleNamespace(width=128, height=128), scheduler=None)
    for change, message in (({"guidance": math.nan}, "invalid guidance"), ({"steps": 1000}, "invalid steps: DDIM"),
                            ({"seed": -1}, "invalid seed"), ({"warmup_steps": -1}, "invalid warmup_steps")):
        with pytest.raises(InvalidArgumentError, match=message):
            g._params(change)
