"""The shared weights file checked against the manifest: build hashes it in full, loading notices a changed file
by size and modification time; a mismatch, a truncated file or a deleted graph is one line naming file and fix."""
from __future__ import annotations

import os
import shutil

import pytest

from trt_distri.cli import main
from trt_distri.config import ExportRequest, Precision
from trt_distri.engines.weights import RECORD


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_sd):
    from trt_distri.export.exporter import export_unet

    out = tmp_path_factory.mktemp("weights") / "w"
    export_unet(ExportRequest("random:tiny-sd", 64, 64, 1, out, cfg_split=False, precision=Precision.FP32),
                unet=tiny_sd)
    return out


@pytest.fixture
def work(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "w")
    return tmp_path / "w"


def _flip_a_bit(path, at: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("trt-distri: error:"), lines
    return lines[-1]


def _run(work, tmp_path) -> int:
    return main(["run", str(work), "--device", "cpu", "--steps", "1", "-o", str(tmp_path / "l.npy"), "--overwrite"])


def test_build_refuses_a_flipped_bit(capsys, work):
    _flip_a_bit(work / "graphs" / "weights.bin")
    assert main(["build", str(work), "--backend", "ort"]) == 2
    line = _error(capsys)
    assert "weights.bin was changed after export" in line and "Fix: export again" in line


def test_build_refuses_a_truncated_file(capsys, work):
    path = work / "graphs" / "weights.bin"
    path.write_bytes(path.read_bytes()[:-100])
    assert main(["build", str(work), "--backend", "ort"]) == 2
    assert "weights.bin is truncated" in _error(capsys)


def test_run_notices_weights_changed_after_build(capsys, work, tmp_path):
    assert main(["build", str(work), "--backend", "ort"]) == 0
    assert (work / RECORD).is_file() and _run(work, tmp_path) == 0
    _flip_a_bit(work / "graphs" / "weights.bin")
    assert _run(work, tmp_path) == 2
    assert "weights.bin was changed after export" in _error(capsys)


def test_run_without_build_checks_in_full_once(capsys, work, tmp_path):
    assert _run(work, tmp_path) == 0 and (work / RECORD).is_file()
    path = work / "graphs" / "weights.bin"
    _flip_a_bit(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert _run(work, tmp_path) == 2
    assert "changed after export" in _error(capsys)


def test_build_with_a_deleted_graph_names_it(capsys, work):
    (work / "graphs" / "steady.001.onnx").unlink()
    assert main(["build", str(work), "--backend", "ort"]) == 2
    line = _error(capsys)
    assert "steady.001.onnx" in line and "missing" in line and "Fix: export again" in line
