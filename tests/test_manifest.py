"""The manifest as a typed record: one writer whose bytes are pinned (key order, indent, nulls,
final newline) against literal documents written out here by hand, one reader that turns a
damaged or foreign file into one line, the parity record made from a ``Parity``, the
hashed-staging rule, and the class-layout words of the model card and the ONNX metadata.

Fast: no TensorFlow, no port (tests/test_outputs.py checks a real port's manifest against the
same key list)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from models.spec import ClassLayout, get_architecture
from porting.errors import PortError
from porting.files import Outputs
from porting.verify.parity import Parity
from porting.write.card import classes_line, model_card
from porting.write.hashed import settle_hashed
from porting.write.manifest import (ExportOptionsRecord, ExportSourceRecord, FileRecord,
                                    GraphOutputRecord, Manifest, ManifestError, OutputRecord,
                                    ParityRecord, PortOptionsRecord, SourceRecord, ToolRecord,
                                    VariablesRecord, read_manifest, record_manifest_parity)

ROOT = Path(__file__).resolve().parents[1]

# The keys as the port and export manifests have always been written, in order: the literal
# record of the format (a path per key, "[]" for the items of a list).
PORT_KEYS = [
    "manifest_version",
    "tool", "tool.name", "tool.version",
    "source", "source.given", "source.format", "source.num_classes", "source.checkpoint",
    "source.release", "source.release_verified", "source.url",
    "source.archive", "source.archive.name", "source.archive.bytes", "source.archive.sha256",
    "source.files", "source.files[].name", "source.files[].bytes", "source.files[].sha256",
    "output", "output.file", "output.format", "output.bytes", "output.sha256",
    "output.header_metadata",
    "options", "options.architecture", "options.num_classes", "options.aux", "options.fold_bn",
    "options.ema", "options.reader",
    "variables", "variables.in_source", "variables.mapped_count", "variables.skipped_count",
    "variables.mapped", "variables.skipped",
    "parity", "parity.reference", "parity.images", "parity.max_abs_diff", "parity.tolerance",
    "parity.top1_agree", "parity.top5_agree", "parity.passed",
]
EXPORT_KEYS = [
    "manifest_version",
    "tool", "tool.name", "tool.version",
    "source", "source.weights", "source.bytes", "source.sha256",
    "source.ported_from", *[f"source.ported_from.{key[len('source.'):]}"
                            for key in PORT_KEYS if key.startswith("source.")],
    "output", "output.file", "output.format", "output.bytes", "output.sha256",
    "output.onnx_metadata",
    "options", "options.architecture", "options.num_classes", "options.aux", "options.fold_bn",
    "options.input_size", "options.dynamic_batch", "options.opset", "options.outputs",
    "options.end_points", "options.exporter", "options.onnx",
    "parity", "parity.reference", "parity.images", "parity.max_abs_diff", "parity.tolerance",
    "parity.top1_agree", "parity.top5_agree", "parity.passed",
]
OPEN = ("header_metadata", "onnx_metadata", "mapped", "skipped")  # name -> value maps


def key_paths(data: bytes) -> list[str]:
    """Every key of a manifest file in file order, as in PORT_KEYS (list items merged)."""
    paths: list[str] = []

    def walk(value, prefix: str) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item, f"{prefix}[]")
        elif isinstance(value, dict) and prefix.rsplit(".", 1)[-1] not in OPEN:
            for key, item in value.items():
                path = f"{prefix}.{key}" if prefix else key
                if path not in paths:
                    paths.append(path)
                walk(item, path)

    walk(json.loads(data), "")
    return paths


# A port's manifest and an export's, every optional part filled, as the typed records ...
SOURCE = SourceRecord(
    given="in/adv_inception_v3_2017_08_18.tar.gz", format="V2", num_classes=1001,
    checkpoint="adv_inception_v3.ckpt", release="adv_inception_v3", release_verified=True,
    url="http://download.tensorflow.org/models/adv_inception_v3_2017_08_18.tar.gz",
    archive=FileRecord(name="adv_inception_v3_2017_08_18.tar.gz", bytes=3, sha256="a" * 64),
    files=(FileRecord(name="adv_inception_v3.ckpt.index", bytes=1, sha256="b" * 64),
           FileRecord(name="adv_inception_v3.ckpt.data-00000-of-00001", bytes=2,
                      sha256="c" * 64)))
PARITY = ParityRecord(reference="TF-Slim (float32)", images=10, max_abs_diff=1e-05,
                      tolerance=0.0001, top1_agree=10, top5_agree=10, passed=True)
PORT = Manifest(
    tool=ToolRecord(version="9.9"), source=SOURCE,
    output=OutputRecord(file="m-12345678.safetensors", format="safetensors", bytes=10,
                        sha256="d" * 64,
                        header_metadata={"format": "pt", "model": "inception_v3",
                                         "source": "adv_inception_v3.ckpt",
                                         "options": "1000 classes, no aux"}),
    options=PortOptionsRecord(architecture="inception_v3", num_classes=1000, aux=False,
                              fold_bn=False, ema=False, reader="native"),
    variables=VariablesRecord.of(3, {"Z/weights": "fc (weight)", "A/weights": "conv (weight)"},
                                 {"global_step": "training counter"}),
    parity=PARITY)
EXPORT = Manifest(
    tool=ToolRecord(version="9.9"),
    source=ExportSourceRecord(weights="m-12345678.pth", bytes=10, sha256="d" * 64,
                              ported_from=SOURCE),
    output=GraphOutputRecord(file="g-87654321.onnx", format="onnx", bytes=20, sha256="e" * 64,
                             onnx_metadata={"tf_porting.architecture": "inception_v3",
                                            "tf_porting.label_offset": "0"}),
    options=ExportOptionsRecord(architecture="inception_v3", num_classes=1000, input_size=299,
                                opset=17, outputs=("Logits", "Mixed_7c"), end_points=True,
                                exporter="torch.onnx (TorchScript) torch 2.13.0, opset 17",
                                onnx="1.23.1"),
    variables=None, parity=PARITY)

# ... and as the documents the hand-built dicts of earlier versions wrote (dict order is the
# file's order; json.dumps(indent=2) and a newline was the writer)
SOURCE_DOCUMENT = {
    "given": "in/adv_inception_v3_2017_08_18.tar.gz", "format": "V2", "num_classes": 1001,
    "checkpoint": "adv_inception_v3.ckpt", "release": "adv_inception_v3",
    "release_verified": True,
    "url": "http://download.tensorflow.org/models/adv_inception_v3_2017_08_18.tar.gz",
    "archive": {"name": "adv_inception_v3_2017_08_18.tar.gz", "bytes": 3, "sha256": "a" * 64},
    "files": [{"name": "adv_inception_v3.ckpt.index", "bytes": 1, "sha256": "b" * 64},
              {"name": "adv_inception_v3.ckpt.data-00000-of-00001", "bytes": 2,
               "sha256": "c" * 64}],
}
PARITY_DOCUMENT = {"reference": "TF-Slim (float32)", "images": 10, "max_abs_diff": 1e-05,
                   "tolerance": 0.0001, "top1_agree": 10, "top5_agree": 10, "passed": True}
PORT_DOCUMENT = {
    "manifest_version": 1,
    "tool": {"name": "tf-porting", "version": "9.9"},
    "source": SOURCE_DOCUMENT,
    "output": {"file": "m-12345678.safetensors", "format": "safetensors", "bytes": 10,
               "sha256": "d" * 64,
               "header_metadata": {"format": "pt", "model": "inception_v3",
                                   "source": "adv_inception_v3.ckpt",
                                   "options": "1000 classes, no aux"}},
    "options": {"architecture": "inception_v3", "num_classes": 1000, "aux": False,
                "fold_bn": False, "ema": False, "reader": "native"},
    "variables": {"in_source": 3, "mapped_count": 2, "skipped_count": 1,
                  "mapped": {"Z/weights": "fc (weight)", "A/weights": "conv (weight)"},
                  "skipped": {"global_step": "training counter"}},
    "parity": PARITY_DOCUMENT,
}
EXPORT_DOCUMENT = {
    "manifest_version": 1,
    "tool": {"name": "tf-porting", "version": "9.9"},
    "source": {"weights": "m-12345678.pth", "bytes": 10, "sha256": "d" * 64,
               "ported_from": SOURCE_DOCUMENT},
    "output": {"file": "g-87654321.onnx", "format": "onnx", "bytes": 20, "sha256": "e" * 64,
               "onnx_metadata": {"tf_porting.architecture": "inception_v3",
                                 "tf_porting.label_offset": "0"}},
    "options": {"architecture": "inception_v3", "num_classes": 1000, "aux": False,
                "fold_bn": True, "input_size": 299, "dynamic_batch": True, "opset": 17,
                "outputs": ["Logits", "Mixed_7c"], "end_points": True,
                "exporter": "torch.onnx (TorchScript) torch 2.13.0, opset 17", "onnx": "1.23.1"},
    "parity": PARITY_DOCUMENT,
}


def _as_written(document: dict) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf8")


def _without(document: dict, *paths: str) -> dict:
    """``document`` with each ``a.b`` set to null (the unset optional parts)."""
    document = json.loads(json.dumps(document))
    for path in paths:
        *parents, last = path.split(".")
        node = document
        for key in parents:
            node = node[key]
        node[last] = None
    return document


# --- the writer ------------------------------------------------------------------------------

@pytest.mark.parametrize("manifest, document, keys", [
    (PORT, PORT_DOCUMENT, PORT_KEYS), (EXPORT, EXPORT_DOCUMENT, EXPORT_KEYS)],
    ids=["port", "export"])
def test_writer_bytes_are_the_recorded_documents(manifest, document, keys):
    data = manifest.to_json()
    assert data == _as_written(document)
    assert key_paths(data) == keys
    assert data.endswith(b"}\n") and b'\n  "tool": {\n    "name"' in data  # indent 2


def test_unset_parts_are_written_as_nulls():
    port = dataclasses.replace(
        PORT, parity=None,
        source=dataclasses.replace(SOURCE, archive=None, release=None, url=None),
        output=dataclasses.replace(PORT.output, header_metadata=None))
    assert port.to_json() == _as_written(_without(
        PORT_DOCUMENT, "parity", "source.archive", "source.release", "source.url",
        "output.header_metadata"))
    export = dataclasses.replace(
        EXPORT, parity=None, source=dataclasses.replace(EXPORT.source, ported_from=None))
    assert export.to_json() == _as_written(_without(EXPORT_DOCUMENT, "parity",
                                                    "source.ported_from"))


@pytest.mark.parametrize("manifest", [PORT, EXPORT], ids=["port", "export"])
def test_reader_reads_what_the_writer_wrote(manifest):
    read = Manifest.from_json(manifest.to_json(), "m.json")
    assert read == manifest and read.kind == ("port" if manifest is PORT else "export")
    assert read.to_json() == manifest.to_json()
    compact = json.dumps(json.loads(manifest.to_json()))  # any JSON layout reads the same
    assert Manifest.from_json(compact, "m.json") == manifest


def test_parity_record_is_made_from_a_parity():
    parity = Parity(max_abs_diff=2e-5, scale=10.0, relative_tolerance=1e-4, top1_agree=9,
                    top5_agree=10, images=10)
    record = ParityRecord.of(parity, "TF-Slim (float32)")
    assert record == ParityRecord(reference="TF-Slim (float32)", images=10, max_abs_diff=2e-5,
                                  tolerance=parity.tolerance, top1_agree=9, top5_agree=10,
                                  passed=False)


def test_a_manifest_from_before_release_verified_reads_as_unverified():
    document = json.loads(PORT.to_json())
    del document["source"]["release_verified"]
    assert Manifest.from_json(json.dumps(document), "old.json").source.release_verified is False


# --- the reader: damaged and foreign files, one line each ------------------------------------

def _edited(edit) -> bytes:
    document = json.loads(PORT.to_json())
    edit(document)
    return json.dumps(document).encode()


DAMAGED = {
    "not JSON": (b'{"manifest_version": 1,', "not JSON"),
    "not UTF-8": (b"\xff\xfe\xfa", "not JSON"),
    "nested beyond reason": (b"[" * 100_000, "not JSON"),
    "a list": (b"[]", "a JSON list, not an object"),
    "empty object": (b"{}", "manifest_version None, not 1"),
    "a later version": (_edited(lambda d: d.update(manifest_version=2)),
                        "manifest_version 2, not 1"),
    "another tool": (_edited(lambda d: d["tool"].update(name="other")), "tool.name 'other'"),
    "a key missing": (_edited(lambda d: d["output"].pop("sha256")), "output.sha256: missing"),
    "a part missing": (_edited(lambda d: d.pop("parity")), "parity: missing"),
    "an unknown key": (_edited(lambda d: d["source"].update(extra=1)),
                       "source.extra: unknown key"),
    "a string for a number": (_edited(lambda d: d["output"].update(bytes="10")),
                              "output.bytes: a string, not an integer"),
    "true for a number": (_edited(lambda d: d["source"].update(num_classes=True)),
                          "source.num_classes: true or false, not an integer"),
    "null where required": (_edited(lambda d: d["options"].update(aux=None)),
                            "options.aux: null"),
    "a file record damaged": (_edited(lambda d: d["source"]["files"][1].update(sha256=5)),
                              "source.files[1].sha256: a number, not a string"),
    "files not a list": (_edited(lambda d: d["source"].update(files={})),
                         "source.files: an object, not a list"),
    "a map value damaged": (_edited(lambda d: d["variables"]["mapped"].update(x=[1])),
                            "variables.mapped['x']: a list, not a string"),
    "counts that lie": (_edited(lambda d: d["variables"].update(mapped_count=7)),
                        "variables: counts differ from the lists"),
    "a part of the other kind": (_edited(lambda d: d.pop("variables")),
                                 "source.given: unknown key"),
}


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_or_foreign_manifests_are_one_line(name, tmp_path):
    data, reason = DAMAGED[name]
    path = tmp_path / "m-12345678.json"
    path.write_bytes(data)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    message = str(caught.value)
    assert isinstance(caught.value, PortError)
    assert message.startswith(f"{path}: ") and "\n" not in message and reason in message, message
    assert caught.value.reason in message


def test_an_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(ManifestError, match=r"m\.json: cannot read: "):
        read_manifest(tmp_path / "m.json")


# --- the verify side's parity update --------------------------------------------------------

PASSED = Parity(max_abs_diff=1e-6, scale=1.0, relative_tolerance=1e-4, top1_agree=2,
                top5_agree=2, images=2)


def _beside(tmp_path: Path, manifest: Manifest, suffix: str = ".pth") -> Path:
    """Weights ``w-....<suffix>`` with ``manifest`` (its output sha256 theirs) beside them."""
    import hashlib

    weights = tmp_path / f"w-12345678{suffix}"
    weights.write_bytes(b"weights")
    output = dataclasses.replace(manifest.output, file=weights.name,
                                 sha256=hashlib.sha256(b"weights").hexdigest())
    manifest = dataclasses.replace(manifest, output=output, parity=None)
    weights.with_suffix(".json").write_bytes(manifest.to_json())
    return weights


def test_recording_a_parity_updates_the_manifest_and_card(tmp_path):
    weights = _beside(tmp_path, PORT)
    card = weights.with_suffix(".md")
    card.write_text("old card")
    assert record_manifest_parity(weights, PASSED, "TF-Slim (test)") == (
        weights.with_suffix(".json"), None)
    recorded = read_manifest(weights.with_suffix(".json"))
    assert recorded.parity == ParityRecord.of(PASSED, "TF-Slim (test)")
    assert card.read_text() == model_card(recorded)
    assert "max abs logit diff 1e-06 (bound 0.0001), top-1 2/2" in card.read_text()


def test_an_exports_manifest_takes_the_parity_and_no_card(tmp_path):
    weights = _beside(tmp_path, EXPORT, ".onnx")
    weights.with_suffix(".md").write_text("someone's notes")
    assert record_manifest_parity(weights, PASSED, "ONNX Runtime")[0] is not None
    assert read_manifest(weights.with_suffix(".json")).parity.reference == "ONNX Runtime"
    assert weights.with_suffix(".md").read_text() == "someone's notes"


def test_a_damaged_or_other_files_manifest_is_left_alone(tmp_path):
    weights = _beside(tmp_path, PORT)
    manifest = weights.with_suffix(".json")
    assert record_manifest_parity(tmp_path / "none.pth", PASSED, "x") == (None, None)
    manifest.write_text("{}")
    updated, why = record_manifest_parity(weights, PASSED, "x")
    assert updated is None and why == (f"{manifest} is not a readable manifest "
                                       "(not a tf-porting manifest: manifest_version None, not 1)")
    manifest.write_bytes(PORT.with_parity(None).to_json())  # of the file with sha256 d...d
    before = manifest.read_bytes()
    assert record_manifest_parity(weights, PASSED, "x") == (
        None, f"{manifest} describes another file (sha256 dddddddddddd...)")
    assert manifest.read_bytes() == before


def test_verify_spells_no_manifest_key():
    """Only porting/write/manifest.py knows the file's keys; everything else uses the records."""
    keys = re.compile(r"""\[["'](manifest_version|tool|output|options|variables|parity|"""
                      r"""ported_from|header_metadata|onnx_metadata|release_verified)["']\]""")
    found = [f"{path.relative_to(ROOT)}:{n}"
             for path in sorted((ROOT / "porting").rglob("*.py"))
             if path != ROOT / "porting" / "write" / "manifest.py"
             for n, line in enumerate(path.read_text().splitlines(), 1) if keys.search(line)]
    assert found == []


# --- the hashed-staging rule -----------------------------------------------------------------

def test_a_file_named_by_its_hash_is_kept_refused_or_forced(tmp_path):
    import hashlib

    payload = b"graph"
    sha256 = hashlib.sha256(payload).hexdigest()
    dst = tmp_path / "g.onnx"
    final = tmp_path / f"g-{sha256[:8]}.onnx"
    with Outputs() as outputs:
        written = settle_hashed(outputs, dst, sha256, len(payload), force=False)
    assert (written.path, written.unchanged, written.size) == (final, False, 5)
    final.write_bytes(payload)
    with Outputs() as outputs:
        assert settle_hashed(outputs, dst, sha256, 5, force=False).unchanged
    final.write_bytes(b"other")
    with Outputs() as outputs, pytest.raises(PortError) as caught:
        settle_hashed(outputs, dst, sha256, 5, force=False)
    assert str(caught.value) == (f"{final}: exists with different contents; pass --force to "
                                 "replace it")
    with Outputs() as outputs:
        assert not settle_hashed(outputs, dst, sha256, 5, force=True).unchanged


def test_the_onnx_export_stages_by_the_same_rule(tmp_path):
    from porting.onnx.export import _stage

    with Outputs() as outputs:
        written = _stage(outputs, tmp_path / "sub" / "g.onnx", b"graph", force=False)
        outputs.commit()
    assert written.path.read_bytes() == b"graph" and not written.unchanged
    with Outputs() as outputs:
        assert _stage(outputs, tmp_path / "sub" / "g.onnx", b"graph", force=False).unchanged
    written.path.write_bytes(b"edited")
    with Outputs() as outputs, pytest.raises(PortError, match="pass --force to replace it"):
        _stage(outputs, tmp_path / "sub" / "g.onnx", b"graph", force=False)


# --- the class layout in words ---------------------------------------------------------------

CLASS_CASES = [  # architecture, outputs, source classes, card's line, ONNX's (offset, words)
    ("inception_v3", 1001, 1001,
     "1001: index 0 is TF-Slim's \"background\" class, 1..1000 the ImageNet-1k classes "
     "(TF's order)",
     (1, "kept: output 0 is TF-Slim's background class, outputs 1..1000 the ImageNet-1k "
         "classes")),
    ("inception_v3", 1000, 1001,
     "1000 ImageNet-1k classes; TF-Slim's background row 0 was dropped, so index i here is "
     "TF's index i + 1 (timm's layout)",
     (0, "dropped: output i is TF-Slim's class i + 1 (timm's layout, ImageNet-1k order)")),
    ("resnet_v1_50", 1000, 1000,
     "1000 ImageNet-1k classes, as the source had them (no background class)",
     (0, "none: the source had no background class")),
]


@pytest.mark.parametrize("arch, outputs, source, card, onnx", CLASS_CASES,
                         ids=["1001 kept", "1000 dropped", "no background"])
def test_the_class_words_come_from_the_class_layout(arch, outputs, source, card, onnx):
    from porting.onnx.export import classes_meaning

    spec = get_architecture(arch)
    assert classes_line(ClassLayout.of(spec.eval, outputs, source)) == card
    assert classes_meaning(spec, outputs) == onnx


def test_a_graph_of_other_classes_has_no_background():
    from porting.onnx.export import classes_meaning

    assert classes_meaning(get_architecture("inception_v3"), 10) == (
        0, "none: the source had no background class")
