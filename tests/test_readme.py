"""The README's commands, run in-process through the CLI entry point."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from trt_distri.cli import main

README = Path(__file__).parent.parent / "README.md"


def _try_it_commands() -> list[list[str]]:
    block = README.read_text().split("## Try it", 1)[1].split("```", 2)[1]
    steps = [s.strip() for s in block.strip().split("&&")]
    return [shlex.split(s)[1:] for s in steps if s.startswith("trt-distri ")]


def test_try_it_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _try_it_commands()
    assert [c[0] for c in commands] == ["export", "build", "run"]
    for argv in commands:
        assert main(argv) == 0, argv
    latents = np.load(tmp_path / "latents.npy")
    assert latents.shape == (1, 4, 32, 32) and np.isfinite(latents).all()
    assert re.search(r"--device cpu", README.read_text())
