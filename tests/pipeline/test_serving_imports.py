"""The serving path (API, CLI `run`, runtime, C bridge) imports neither torch, diffusers nor transformers: a fresh
interpreter where importing them fails generates from a built work directory, and its image is the one this
process gets."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from trt_distri.png import read_png

PROMPT = "a red fox in the snow"
BLOCKER = """
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "diffusers", "transformers"):
            raise ImportError(f"{name} is blocked: the serving path must not import it")
sys.meta_path.insert(0, Blocked())
"""
SERVE = BLOCKER + """
import numpy as np
from trt_distri.api import Generator
from trt_distri.cli import main
import trt_distri.capi._bridge, trt_distri.runtime.local, trt_distri.runtime.gpu, trt_distri.runtime.executor
workdir, out = sys.argv[1], sys.argv[2]
with Generator(workdir, device="cpu") as g:
    np.save(out + ".npy", g.generate({prompt!r}, steps=3, seed=11).image)
code = main(["run", workdir, "--prompt", {prompt!r}, "--device", "cpu", "--steps", "3", "--seed", "11",
             "--scheduler", "euler", "-o", out + ".png"])
assert code == 0, code
assert not any(m.split(".")[0] in ("torch", "diffusers", "transformers") for m in sys.modules)
""".format(prompt=PROMPT)


def test_blocker_blocks():
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr


def test_api_and_cli_generate_without_torch_diffusers_transformers(workdir, tmp_path):
    from trt_distri.pipeline import generate_image

    out = tmp_path / "served"
    proc = subprocess.run([sys.executable, "-c", SERVE, str(workdir("tiny-sdxl")), str(out)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = generate_image(workdir("tiny-sdxl"), PROMPT, steps=3, seed=11, device="cpu")
    cli = generate_image(workdir("tiny-sdxl"), PROMPT, steps=3, seed=11, device="cpu", scheduler="euler")
    assert np.array_equal(np.load(f"{out}.npy"), api.image)
    assert np.array_equal(read_png((tmp_path / "served.png").read_bytes()), cli.image)
