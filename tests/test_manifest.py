"""trt_distri/manifest.py: the one reader of manifest.json; every field typed and checked, errors name the field."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trt_distri.errors import ManifestError
from trt_distri.manifest import MANIFEST_FILE, Manifest, Role, Segment, decode_record

from helpers import manifest_json

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("trt_distri", "export", "engines", "runtime", "capi", "benchmarks")
#: Reading the file, or indexing its JSON object by its top-level keys, outside trt_distri/manifest.py.
PARSING = re.compile(r"json\.loads?\(.*manifest|manifest\.json\"?\)?\.(read_text|open)|MANIFEST_FILE\)?\.read_text|"
                     r"\b(data|manifest|m)\[\"(plan|graph_sets|exchange|step|conditioning|weights|text_encoders|vae|"
                     r"pipeline|model|text_len)\"\]")


def _write(tmp_path: Path, data: dict) -> Path:
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    return tmp_path


def test_a_complete_manifest_loads_into_typed_records(tmp_path):
    segment = {"name": "steady.000", "file": "graphs/steady.000.onnx", "exchange_range": [0, 256],
               "inputs": [{"name": "k.peer1", "shape": [1, 2], "dtype": "float16", "role": "stale",
                           "layer": "attn1", "source": {"entry": "k.attn1", "peer": 1, "wrap": True}}],
               "outputs": [{"name": "k.attn1", "shape": [1, 2], "dtype": "float16", "role": "fresh"}]}
    m = Manifest.load(_write(tmp_path, manifest_json(graph_sets={"warmup": [], "steady": [segment]})))
    seg = m.segments("steady")[0]
    assert isinstance(seg, Segment) and seg.exchange_range == (0, 256) and seg.inputs[0].role is Role.STALE
    assert seg.inputs[0].source.peer == 1 and seg.inputs[0].nbytes == 4 and m.graph_path(seg).parent.name == "graphs"
    assert m.conditioning.find("encoder_hidden_states").shape == (77, 8) and m.vae is None and m.root == tmp_path


def test_save_writes_what_load_reads(tmp_path):
    m = Manifest.load(_write(tmp_path, manifest_json(export_seconds=1.5)))
    out = tmp_path / "copy"
    out.mkdir()
    m.with_parts(root=out).save()
    assert Manifest.load(out) == m.with_parts(root=out)


@pytest.mark.parametrize("change,field,expected", [
    (lambda d: d.pop("plan"), "plan", r"expected an object \(Plan\), got nothing"),
    (lambda d: d["plan"].update(devices="2"), "plan.devices", "expected int, got '2'"),
    (lambda d: d["plan"]["levels"][0].update(rows=1.5), r"plan.levels\[0\].rows", "expected int, got 1.5"),
    (lambda d: d.update(guidance=1), "guidance", "expected bool, got 1"),
    (lambda d: d["conditioning"]["inputs"][0].pop("shape"), r"conditioning.inputs\[0\].shape",
     "expected a list of int, got nothing"),
    (lambda d: d["graph_sets"].update(steady=[{"name": "s", "file": "f", "exchange_range": [0, 0],
                                                "inputs": [{"name": "x", "shape": [1], "dtype": "float32",
                                                            "role": "no-such-role"}], "outputs": []}]),
     r"graph_sets.steady\[0\].inputs\[0\].role", "expected one of 'sample'"),
])
def test_a_missing_or_wrong_typed_field_is_named(tmp_path, change, field, expected):
    data = manifest_json()
    change(data)
    with pytest.raises(ManifestError, match=rf"field {field}: {expected}.*Fix: export again"):
        Manifest.load(_write(tmp_path, data))


def test_an_older_version_says_export_again(tmp_path):
    data = {**manifest_json(), "version": 1, "text_len": 77}
    with pytest.raises(ManifestError, match=r"expected format 'trt-distri/manifest' v2, got 'trt-distri/manifest' "
                                            r"v1\. Fix: export again"):
        Manifest.load(_write(tmp_path, data))


def test_not_json_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ManifestError, match="does not exist. Fix: run `trt-distri export"):
        Manifest.load(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.load(tmp_path)


def test_a_record_fragment_is_checked_too():
    with pytest.raises(ManifestError, match="Segment record: field name: expected str, got 3"):
        decode_record(Segment, {"name": 3})


def test_no_module_but_the_manifest_module_parses_manifest_json():
    offenders = []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "trt_distri" / "manifest.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                          for n, line in enumerate(path.read_text().splitlines(), 1) if PARSING.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_pattern_catches_what_it_forbids():
    assert PARSING.search('data = json.loads((workdir / "manifest.json").read_text())')
    assert PARSING.search('plan = data["plan"]') and not PARSING.search("plan = manifest.plan")
