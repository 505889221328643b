"""The `trt-distri` entry point, called in-process, and the ExportRequest it builds."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from trt_distri import __version__
from trt_distri.cli import main
from trt_distri.config import ExportRequest, GNMode, Precision
from trt_distri.errors import ConfigError


def _err_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


@pytest.fixture
def fake_exporter(monkeypatch, tmp_path):
    """Stands in for trt_distri.export.exporter and .pipeline_export: records the request (and which exporter got
    it in `calls`), or raises `fake_exporter.error`."""
    module = types.ModuleType("trt_distri.export.exporter")
    module.requests, module.calls, module.error = [], [], None

    def recorder(name: str):
        def export(request: ExportRequest) -> Path:
            module.requests.append(request)
            module.calls.append(name)
            if module.error is not None:
                raise module.error
            return request.out_dir / "manifest.json"
        return export

    module.export_unet = recorder("export_unet")
    pipeline = types.ModuleType("trt_distri.export.pipeline_export")
    pipeline.export_pipeline = recorder("export_pipeline")
    monkeypatch.setitem(sys.modules, "trt_distri.export.exporter", module)
    monkeypatch.setitem(sys.modules, "trt_distri.export.pipeline_export", pipeline)
    return module


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"trt-distri {__version__}"


def test_no_subcommand_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "required" in capsys.readouterr().err


def test_bad_height_prints_one_line_and_returns_2(capsys, tmp_path):
    assert main(["export", "--height", "100", "-o", str(tmp_path / "work")]) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith("trt-distri: error: height 100")
    assert "96 or 128" in lines[0] and "run with -v" in lines[0]
    assert not (tmp_path / "work").exists()


def test_verbose_shows_the_traceback(capsys):
    assert main(["-v", "export", "--height", "100"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "UnsplittableError" in err
    assert err.strip().splitlines()[-1].startswith("trt-distri: error:")


@pytest.mark.parametrize("argv, expected", [
    (["export", "random:nope"], "random:tiny-sdxl"),
    (["export", "/nonexistent/model"], "config.json"),
    (["export", "--gpus", "0"], "at least 1"),
    (["export", "--gpus", "4", "--height", "96"], "each image is cut over 2 GPUs"),
])
def test_user_errors(capsys, argv, expected):
    assert main(argv) == 2
    lines = _err_lines(capsys)
    assert lines[-1].startswith("trt-distri: error:") and expected in lines[-1]


def test_bad_choice_is_a_usage_error(capsys):
    assert main(["export", "--dtype", "fp64"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_split_note_is_a_warning_with_the_rank(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "3")
    assert main(["export", "--gpus", "3", "--height", "100"]) == 2
    lines = _err_lines(capsys)
    assert lines[0].startswith("[rank 3] WARNING") and "--cfg-split" in lines[0]


def test_export_builds_the_request_from_arguments(capsys, fake_exporter, tmp_path):
    argv = ["export", "random:tiny-sd", "--height", "512", "--width", "384", "--gpus", "4", "--no-cfg-split",
            "--dtype", "fp32", "--gn-mode", "sync", "--overwrite", "--seed", "7", "-o", str(tmp_path)]
    assert main(argv) == 0
    assert fake_exporter.requests == [ExportRequest(
        model="random:tiny-sd", height=512, width=384, gpus=4, out_dir=tmp_path, cfg_split=False,
        precision=Precision.FP32, gn_mode=GNMode.SYNC, overwrite=True, seed=7)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "manifest.json")


def test_export_defaults(fake_exporter):
    assert main(["export"]) == 0
    assert fake_exporter.requests == [ExportRequest(model="random:tiny-sdxl", height=256, width=256, gpus=1,
                                                    out_dir=Path("trt-distri-work"))]
    assert fake_exporter.calls == ["export_pipeline"]


def test_unet_only_and_random_weights_pick_the_exporter(fake_exporter):
    assert main(["export", "--random-weights", "sd15", "--height", "512", "--unet-only"]) == 0
    assert fake_exporter.requests[-1].model == "random:sd15" and fake_exporter.calls == ["export_unet"]


@pytest.mark.parametrize("error, code, expected", [
    (ConfigError("out dir exists. Note: expected an empty folder"), 2, "trt-distri: error: out dir exists"),
    (ModuleNotFoundError("No module named 'diffusers'", name="diffusers"), 2, "pip install -e '.[export]'"),
    (RuntimeError("boom"), 1, "trt-distri: internal error: RuntimeError: boom"),
    (KeyboardInterrupt(), 130, "trt-distri: interrupted"),
])
def test_errors_raised_by_the_exporter(capsys, fake_exporter, error, code, expected):
    fake_exporter.error = error
    assert main(["export"]) == code
    lines = _err_lines(capsys)
    assert expected in lines[-1] and not any(line.startswith("Traceback") for line in lines)


# gpus, guidance, cfg_split -> patch_devices, batch, a note?
@pytest.mark.parametrize("gpus, guidance, cfg_split, devices, batch, note", [
    (1, True, True, 1, 2, True),
    (1, True, False, 1, 2, False),
    (1, False, True, 1, 1, False),
    (2, True, True, 1, 1, False),
    (2, True, False, 2, 2, False),
    (2, False, True, 2, 1, False),
    (3, True, True, 3, 2, True),
    (3, True, False, 3, 2, False),
    (3, False, True, 3, 1, False),
    (4, True, True, 2, 1, False),
    (4, True, False, 4, 2, False),
    (4, False, True, 4, 1, False),
    (4, False, False, 4, 1, False),
])
def test_request_split(gpus, guidance, cfg_split, devices, batch, note):
    request = ExportRequest("random:tiny-sdxl", 256, 256, gpus, Path("w"), cfg_split=cfg_split, guidance=guidance)
    assert (request.patch_devices, request.batch) == (devices, batch)
    assert (request.split_note() is not None) == note
    if note:
        assert "--cfg-split" in request.split_note() and "even --gpus" in request.split_note()


def test_request_unet_config_reads_a_folder_without_torch(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"down_block_types": ["A", "B"]}')
    assert ExportRequest(str(tmp_path), 256, 256, 1, tmp_path).unet_config() == {"down_block_types": ["A", "B"]}


def test_export_of_a_saved_model_folder_end_to_end(capsys, tmp_path):
    """The real exporter behind the CLI: a UNet saved with save_pretrained -> graphs and a manifest."""
    from trt_distri.models import random_unet

    model = tmp_path / "model"
    random_unet("tiny-sd").save_pretrained(model / "unet")
    out = tmp_path / "work"
    argv = ["export", str(model), "--height", "128", "--width", "192", "--gpus", "2", "--no-cfg-split",
            "--dtype", "fp32", "-o", str(out)]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plan"]["devices"] == 2 and manifest["batch"] == 2 and manifest["precision"] == "fp32"
    assert all((out / seg["file"]).is_file() for seg in manifest["graph_sets"]["steady"])
    assert str(out / "manifest.json") in capsys.readouterr().out
    assert main(argv) == 2  # exists: refuses without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_export_of_an_incomplete_model_folder_is_one_line(capsys, tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                                "down_block_types": ["A", "B"]}))
    assert main(["export", str(tmp_path), "--height", "128", "--width", "128", "-o", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "has a config.json but no weights" in err


@pytest.mark.parametrize("flag, expected", [([], None), (["--no-cuda-graph"], False), (["--cuda-graph"], True)])
def test_run_passes_the_cuda_graph_choice_to_its_target(monkeypatch, tmp_path, flag, expected):
    """`trt-distri run` leaves CUDA graphs to the runtime's default unless told (runtime.executor.uses_cuda_graph)."""
    from trt_distri import cli_run

    seen = {}
    monkeypatch.setattr(cli_run, "_run_random", lambda args, out, target: seen.setdefault("target", target) and 0)
    monkeypatch.setattr(cli_run, "_check_arguments", lambda args: None)  # tmp_path holds no work directory
    assert main(["run", str(tmp_path), "--device", "cpu", "-o", str(tmp_path / "x.npy"), *flag]) == 0
    assert seen["target"].cuda_graph is expected


@pytest.mark.parametrize("existing, extra, expected", [
    ("folder", [], "already exists. Fix: pass --overwrite"),
    ("file", ["--overwrite"], None),
    ("under-a-file", [], "is a file, not a folder"),
])
def test_export_output_is_checked_before_the_model_loads(capsys, fake_exporter, tmp_path, existing, extra, expected):
    (tmp_path / "work").mkdir()
    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path / "work", "file": tmp_path / "file", "under-a-file": tmp_path / "file" / "w"}[existing]
    code = main(["export", "-o", str(out), *extra])
    if expected is None:
        assert code == 0 and len(fake_exporter.requests) == 1
        return
    assert code == 2 and fake_exporter.requests == []  # the exporter (and its model loading) never started
    assert expected in _err_lines(capsys)[-1]


def test_export_over_a_file_leaves_no_old_copy(tmp_path, tiny_sd):
    from trt_distri.export.exporter import export_unet

    out = tmp_path / "w"
    out.write_text("a file in the way")
    export_unet(ExportRequest("random:tiny-sd", 64, 64, 1, out, cfg_split=False, precision=Precision.FP32,
                              overwrite=True), unet=tiny_sd)
    assert (out / "manifest.json").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_export_removes_what_an_interrupted_export_left(tmp_path, tiny_sd):
    import subprocess

    from trt_distri.export.exporter import export_unet

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    for name in (f".w.partial-{dead}", f".w.pipeline-{dead}", f".w.old-{dead}"):
        (tmp_path / name / "graphs").mkdir(parents=True)
    (tmp_path / ".other.partial-1").mkdir()  # not this output's: kept
    export_unet(ExportRequest("random:tiny-sd", 64, 64, 1, tmp_path / "w", cfg_split=False,
                              precision=Precision.FP32), unet=tiny_sd)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-1", "w"]


def test_a_missing_export_package_names_the_extra_for_run_too(capsys, monkeypatch, tmp_path):
    """A base install (no diffusers): `run --prompt` without a work directory must create the embedded pipeline,
    which needs the export extra: one line naming it, not an internal error."""
    monkeypatch.setenv("TRT_DISTRI_CACHE", str(tmp_path / "cache"))  # nothing created yet
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ModuleNotFoundError
    assert main(["run", "--prompt", "x", "--device", "cpu", "--steps", "1", "-o", str(tmp_path / "x.png")]) == 2
    line = _err_lines(capsys)[-1]
    assert "run needs the package 'diffusers'" in line and "pip install -e '.[export]'" in line


def test_build_and_run_choose_the_backend_by_one_rule(capsys, monkeypatch, tmp_path, tiny_sd):
    """Without --backend both use TensorRT where it imports (and run is on GPUs), else ONNX Runtime, and say so."""
    from trt_distri.engines.backend import default_backend
    from trt_distri.export.exporter import export_unet

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert default_backend() == "trt" and default_backend("cuda") == "trt" and default_backend("cpu") == "ort"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    assert default_backend() == "ort" and default_backend("cuda") == "ort"
    work = tmp_path / "w"
    export_unet(ExportRequest("random:tiny-sd", 64, 64, 1, work, cfg_split=False, precision=Precision.FP32),
                unet=tiny_sd)
    assert main(["build", str(work)]) == 0
    assert (work / "engines" / "ort").is_dir() and "backend ort: " in capsys.readouterr().err
    assert main(["run", str(work), "--device", "cpu", "--steps", "1", "-o", str(tmp_path / "x.npy")]) == 0
    assert "backend ort" in _err_lines(capsys)[-1]
