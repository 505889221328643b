"""Importing this puts tests/ on sys.path, so that benchmarks can use the test oracles (tests/oracles: the ONNX
simulator, the PyTorch reference, the torch loop), which the package neither ships nor imports."""
import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
