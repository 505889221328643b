"""An engine's I/O against its manifest segment: what every backend's build is checked with."""
from __future__ import annotations

from trt_distri.engines.backend import TensorInfo
from trt_distri.errors import ManifestError
from trt_distri.manifest import Segment


def _mismatches(infos: list[TensorInfo], segment: Segment) -> list[str]:
    got = {info.name: info for info in infos}
    expected = {e.name: (e, True) for e in segment.inputs}
    expected.update({e.name: (e, False) for e in segment.outputs})
    problems = [f"{name!r} missing from the engine" for name in expected if name not in got]
    problems += [f"{name!r} unexpected in the engine" for name in got if name not in expected]
    for name, (entry, is_input) in expected.items():
        info = got.get(name)
        if info is None:
            continue
        want = {"direction": "input" if is_input else "output", "shape": tuple(entry.shape), "dtype": entry.dtype}
        have = {"direction": "input" if info.is_input else "output", "shape": info.shape, "dtype": info.dtype}
        problems += [f"{name!r} {k}: expected {want[k]}, got {have[k]}" for k in want if want[k] != have[k]]
    return problems


def check_io_against_manifest(infos: list[TensorInfo], segment: Segment) -> None:
    """Raise ManifestError listing every difference between an engine's I/O and a manifest segment's."""
    problems = _mismatches(infos, segment)
    if problems:
        raise ManifestError(
            f"engine I/O does not match manifest segment {segment.name!r} ({len(problems)} mismatches): "
            f"{'; '.join(problems)}. Note: expected the segment's inputs/outputs exactly. "
            f"Fix: rebuild the engine from this segment's graph ({segment.file}), or export again")
