"""runtime/ decides backend behaviour by capabilities, never by a backend's name, module or engine suffix; and no
generic engines/ module imports the TensorRT module."""
from __future__ import annotations

import ast
from pathlib import Path

from trt_distri.engines.backend import BACKENDS

ROOT = Path(__file__).resolve().parents[2]
#: Backend names, their Python modules and their engines' suffixes: none may appear in runtime/'s code.
FORBIDDEN = set(BACKENDS) | {"onnxruntime", "tensorrt", "tensorrt_rtx_bindings", ".engine", ".onnx"}
BACKEND_MODULES = ("trt_distri.engines.onnxruntime_backend", "trt_distri.engines.tensorrt_backend",
                   "trt_distri.engines.trt", "trt_distri.engines.capabilities", "onnxruntime", "tensorrt")


def _strings_and_imports(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    strings = {n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings}
    imports = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return strings, imports


def test_runtime_code_names_no_backend():
    found = {}
    for path in sorted((ROOT / "runtime").glob("*.py")):
        strings, imports = _strings_and_imports(path)
        bad = {s for s in strings if s.strip() in FORBIDDEN} | {m for m in imports if m.startswith(BACKEND_MODULES)}
        if bad:
            found[path.name] = sorted(bad)
    assert not found, found


def test_generic_engine_modules_do_not_import_tensorrt():
    for name in ("backend.py", "cache.py", "build.py", "io_check.py", "gpus.py"):
        _, imports = _strings_and_imports(ROOT / "engines" / name)
        assert not [m for m in imports if m.startswith(BACKEND_MODULES)], name


def test_the_check_sees_names_and_imports_in_code(tmp_path):
    code = tmp_path / "sample.py"
    code.write_text('"""Docstrings may say ort."""\nimport onnxruntime\ncuda = backend == "ort"\n')
    strings, imports = _strings_and_imports(code)
    assert strings == {"ort"} and imports == {"onnxruntime"}
