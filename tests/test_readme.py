"""The README's "Try it" commands, run in-process through the CLI entry point, on a clean cache."""
from __future__ import annotations

import shlex
from pathlib import Path

from trt_distri.cli import main
from trt_distri.png import read_png

README = Path(__file__).parent.parent / "README.md"


def _try_it_blocks() -> list[list[list[str]]]:
    """The trt-distri commands of each code block under "## Try it" (steps joined by &&)."""
    section = README.read_text().split("## Try it", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]
    return [[shlex.split(s.strip())[1:] for s in block.strip().split("&&") if s.strip().startswith("trt-distri ")]
            for block in blocks]


def test_first_command_runs_as_written_on_a_clean_machine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRT_DISTRI_CACHE", str(tmp_path / "cache"))  # nothing created by an earlier run
    first = _try_it_blocks()[0]
    assert [c[0] for c in first] == ["run"] and "--prompt" in first[0] and "WORKDIR" not in first[0]
    assert main(first[0]) == 0
    image = read_png((tmp_path / "fox.png").read_bytes())
    assert image.shape == (256, 256, 3)


def test_steps_by_hand(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _try_it_blocks()[1]
    assert [c[0] for c in commands] == ["export", "build", "run"]
    for argv in commands:
        assert main(argv) == 0, argv
    assert read_png((tmp_path / "fox2.png").read_bytes()).shape == (256, 256, 3)
