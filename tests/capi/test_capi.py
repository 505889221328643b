"""The C API (capi/, issue 6): the example compiled with the system C compiler against the installed header and
library, compared with the Python API; error paths, handle lifetime and resource release through a C program."""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest

import trt_distri
from trt_distri.api import Generator

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "capi" / "example.c"
STEPS = dict(steps=8, seed=42, warmup_steps=2)  # what capi/example.c asks for
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the C API is built on Linux only")


def _run(exe: Path, *args, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run outside the virtual environment: the library must find it by itself."""
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    clean["PATH"] = os.pathsep.join(p for p in clean.get("PATH", "").split(os.pathsep)
                                    if not p.startswith(sys.prefix))
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**clean, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{exe.name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    magic, width, height, maxval, pixels = data.split(maxsplit=4)
    assert (magic, maxval) == (b"P6", b"255")
    return np.frombuffer(pixels, np.uint8).reshape(int(height), int(width), 3)


def _example_embeddings(g: Generator):
    """The embeddings capi/example.c's fill() computes: ((i * step + offset) % 101) / 50 - 1 in float32."""
    def fill(n, step, offset):
        return ((np.arange(n) * step + offset) % 101).astype(np.float32) / np.float32(50) - np.float32(1)

    i = g.info
    tokens = i.seq_len * i.dim
    cond = fill(tokens, 7, 1).reshape(i.seq_len, i.dim)
    uncond = fill(tokens, 13, 5).reshape(i.seq_len, i.dim) if i.guidance else None
    pooled = None
    if i.pooled_dim:
        rows = [fill(i.pooled_dim, 11, 9)] if i.guidance else []
        pooled = np.stack(rows + [fill(i.pooled_dim, 3, 2)])
    return cond, uncond, pooled


def test_header_and_library_are_installed_with_the_package():
    out = subprocess.run([sys.executable, "-m", "trt_distri.capi", "--include", "--libdir"], check=True,
                         capture_output=True, text=True).stdout.split()
    assert (Path(out[0]) / "trt_distri.h").is_file() and (Path(out[1]) / "libtrt_distri.so").is_file()


def test_example_prompt_image_equals_the_python_api(compile_c, pipeline_workdir, tmp_path):
    from trt_distri.pipeline import generate_image

    proc = _run(compile_c(EXAMPLE), pipeline_workdir, tmp_path / "out", "a red cube")
    assert f"trt-distri {trt_distri.__version__} (ABI 1)" in proc.stdout
    assert f"image 64x64 -> {tmp_path / 'out.ppm'}" in proc.stdout
    expected = generate_image(pipeline_workdir, "a red cube", device="cpu", output_type="np", **STEPS)
    assert np.array_equal(_read_ppm(tmp_path / "out.ppm"), expected.image)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected.latents)


def test_example_embeddings_equal_the_python_api(compile_c, pipeline_workdir, tmp_path):
    _run(compile_c(EXAMPLE), pipeline_workdir, tmp_path / "out")
    with Generator(pipeline_workdir, device="cpu") as g:
        cond, uncond, pooled = _example_embeddings(g)
        expected = g.generate_from_embeddings(cond, uncond, pooled, **STEPS)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected.latents)
    assert np.array_equal(_read_ppm(tmp_path / "out.ppm"), expected.image)


def test_example_on_two_ranks_without_a_vae_writes_latents_and_says_why(compile_c, unet_workdir, tmp_path):
    proc = _run(compile_c(EXAMPLE), unet_workdir(2), tmp_path / "out")
    assert "no image: no VAE in this work directory" in proc.stdout
    with Generator(unet_workdir(2), device="cpu") as g:
        assert g.info.world == 2
        cond, uncond, _ = _example_embeddings(g)
        expected = g.generate_from_embeddings(cond, uncond, **STEPS)
    assert np.array_equal(np.load(tmp_path / "out.npy"), expected.latents)


def test_errors_handles_and_release(compile_c, unet_workdir):
    """Every error path returns a status and a message (never a crash); create/destroy cycles release what
    they take. glibc is limited to one malloc arena, so that RSS measures leaks, not per-thread arenas."""
    proc = _run(compile_c(HERE / "capi_checks.c"), unet_workdir(), 4, env={"MALLOC_ARENA_MAX": "1"}, check=False)
    assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
    numbers = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in proc.stdout.splitlines()
               if line.startswith(("fds ", "rss_kb "))}
    assert numbers["fds"][1] == numbers["fds"][0], numbers
    assert numbers["rss_kb"][1] - numbers["rss_kb"][0] < 16 * 1024, numbers


def test_a_wrong_python_is_an_error_not_a_crash(compile_c, unet_workdir, tmp_path):
    proc = _run(compile_c(EXAMPLE), unet_workdir(), tmp_path / "out", env={"TRT_DISTRI_PYTHON": "/nonexistent/python"},
                check=False)
    assert proc.returncode == 1 and "TRT_DISTRI_ERROR_PYTHON" in proc.stderr, proc.stderr
    assert "TRT_DISTRI_PYTHON" in proc.stderr.split("TRT_DISTRI_ERROR_PYTHON", 1)[1]


def test_library_loaded_into_python_uses_the_running_interpreter(unet_workdir):
    workdir = str(unet_workdir()).encode()
    code = f"""
import ctypes, trt_distri.capi as c
lib = ctypes.CDLL(str(c.library_path()))
lib.trt_distri_version.restype = lib.trt_distri_last_error.restype = ctypes.c_char_p
gen = ctypes.c_void_p()
assert lib.trt_distri_generator_create(b"/nonexistent", None, ctypes.byref(gen)) == 3, lib.trt_distri_last_error()
assert lib.trt_distri_generator_create({workdir!r}, None, ctypes.byref(gen)) == 0
assert lib.trt_distri_generator_destroy(gen) == 0 and lib.trt_distri_generator_destroy(gen) == 2
print(lib.trt_distri_version().decode())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == trt_distri.__version__, out.stderr


def test_initial_latents_from_c_equal_the_seed_they_were_drawn_from(compile_c, unet_workdir, tmp_path):
    """params.latents set to the noise of seed 7 gives seed 7's latents; a caller built against a header without
    the field (smaller struct_size) gets the seed's noise; NaN latents are refused."""
    from trt_distri.noise import randn

    with Generator(unet_workdir(), device="cpu") as g:
        i = g.info
        shape = (1, i.latent_channels, i.latent_height, i.latent_width)
        zeros = np.zeros((i.seq_len, i.dim), np.float32)
        expected = g.generate_from_embeddings(zeros, zeros if i.guidance else None, steps=2, seed=7).latents
    randn(shape, 7).tofile(tmp_path / "in.f32")
    paths = [tmp_path / name for name in ("in.f32", "given.f32", "old.f32")]
    _run(compile_c(HERE / "latents_check.c"), unet_workdir(), *paths)
    for path in paths[1:]:
        assert np.array_equal(np.fromfile(path, np.float32).reshape(shape), expected), path.name


def test_loras_through_the_c_api(compile_c, unet_workdir, tmp_path):
    """trt_distri_generator_set_loras / _clear_loras: argument errors with a status and message, an adapter
    changes the latents, clearing restores them bit for bit."""
    from safetensors.numpy import save_file

    from trt_distri.engines.lora_apply import workdir_weight_shapes
    from trt_distri.manifest import Manifest

    rng, tensors = np.random.default_rng(0), {}
    for name, shape in workdir_weight_shapes(Manifest.load(unet_workdir()), "ort").items():
        if name.endswith("attn1.to_q.weight"):
            fan_in, fan_out = shape
            tensors[f"unet.{name[:-7]}.lora_A.weight"] = rng.standard_normal((2, fan_in)).astype(np.float32)
            tensors[f"unet.{name[:-7]}.lora_B.weight"] = rng.standard_normal((fan_out, 2)).astype(np.float32)
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    proc = _run(compile_c(HERE / "capi_lora.c"), unet_workdir(), tmp_path / "lora.safetensors", check=False)
    assert proc.returncode == 0 and "FAIL" not in proc.stdout, proc.stdout + proc.stderr
    assert "ok clear_restores_bit_for_bit" in proc.stdout


PROBE = """import os, sys
with open(os.environ["TRT_DISTRI_TEST_PROBE"], "w") as f:
    f.write(sys.executable + "\\n" + sys.prefix)
"""


def _venv_with_trt_distri(path: Path) -> Path:
    """A virtual environment with trt-distri installed editable from this source tree (no network: no build
    isolation, no dependencies; this environment's packages, pip and setuptools among them, are visible to it
    through a .pth file)."""
    venv.create(path, with_pip=False)
    site = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    shared = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "shared_packages.pth").write_text("".join(f"{p}\n" for p in shared))
    python = path / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                           "--ignore-installed", "-e", str(HERE.parent.parent)], capture_output=True, text=True,
                          cwd=path, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return python


def _embedded_python(exe: Path, probe: Path) -> tuple[Path, Path]:
    """(the folder of sys.executable, sys.prefix) of the interpreter the C program starts, read by a sitecustomize;
    the program's call must fail on the missing work directory, which shows that trt_distri imported there."""
    probe.mkdir(exist_ok=True)
    (probe / "sitecustomize.py").write_text(PROBE)
    proc = _run(exe, "/nonexistent/work", probe / "out", check=False,
                env={"PYTHONPATH": str(probe), "TRT_DISTRI_TEST_PROBE": str(probe / "seen")})
    assert proc.returncode == 1 and "TRT_DISTRI_ERROR_WORK_DIRECTORY" in proc.stderr, proc.stderr
    executable, prefix = (probe / "seen").read_text().splitlines()
    return Path(executable).parent, Path(prefix)


def test_each_installation_runs_its_own_python(compile_c, tmp_path):
    """Installing into a second environment from the same source tree leaves the first one's C library as it
    was (issue 16): programs linked against either run the Python of the environment they were linked from."""
    first, second = tmp_path / "first", tmp_path / "second"
    first_exe = compile_c(EXAMPLE, _venv_with_trt_distri(first))
    assert _embedded_python(first_exe, tmp_path / "probe") == (first / "bin", first)
    second_exe = compile_c(EXAMPLE, _venv_with_trt_distri(second))
    assert _embedded_python(first_exe, tmp_path / "probe") == (first / "bin", first)
    assert _embedded_python(second_exe, tmp_path / "probe") == (second / "bin", second)
