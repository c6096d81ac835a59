"""Output formats, manifests, model cards, and interop with timm's layout and torch.hub."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from porting.cli import main
from porting.convert import PortOptions
from porting.pipeline import port_checkpoint

TIMM_KEYS = Path(__file__).parent / "data" / "timm_inception_v3_keys.json"
TIMM_OPTIONS = PortOptions(num_classes=1000, aux=False)


@pytest.fixture(scope="module")
def timm_layout(synthetic_ckpt, tmp_path_factory):
    """The 1000-class file without aux head, as .pth and as .safetensors."""
    folder = tmp_path_factory.mktemp("timm_layout")
    return {fmt: port_checkpoint(synthetic_ckpt, folder / "adv_inception_v3.pth", TIMM_OPTIONS,
                                 fmt=fmt, card=True)
            for fmt in ("pth", "safetensors")}


def test_keys_and_shapes_match_timm(timm_layout):
    recorded = json.loads(TIMM_KEYS.read_text())["keys"]
    state_dict = torch.load(timm_layout["pth"].written.path, weights_only=True)
    assert [[key, list(t.shape)] for key, t in state_dict.items()] == recorded


def test_torch_hub_accepts_the_hashed_file(timm_layout, tmp_path):
    path = timm_layout["pth"].written.path
    loaded = torch.hub.load_state_dict_from_url(path.as_uri(), model_dir=str(tmp_path),
                                                check_hash=True, weights_only=True, progress=False)
    assert loaded.keys() == torch.load(path, weights_only=True).keys()
    renamed = tmp_path / "elsewhere" / "adv_inception_v3-00000000.pth"  # a hash that lies
    renamed.parent.mkdir()
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(RuntimeError, match="invalid hash value"):
        torch.hub.load_state_dict_from_url(renamed.as_uri(), model_dir=str(tmp_path / "hub2"),
                                           check_hash=True, progress=False)


def test_safetensors_holds_the_same_tensors_and_its_metadata(timm_layout):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = timm_layout["safetensors"].written.path
    assert path.name == f"adv_inception_v3-{timm_layout['safetensors'].written.sha256[:8]}.safetensors"
    expected = torch.load(timm_layout["pth"].written.path, weights_only=True)
    loaded = load_file(path)
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) and loaded[k].dtype == expected[k].dtype
               for k in expected)
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt", "source": "adv_inception_v3.ckpt",
                                "model": "inception_v3 (models.inception_v3, TF-Slim exact)",
                                "options": "1000 classes, no aux"}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_outputs_and_manifests_are_byte_reproducible(fmt, timm_layout, synthetic_ckpt, tmp_path):
    again = port_checkpoint(synthetic_ckpt, tmp_path / "adv_inception_v3.pth", TIMM_OPTIONS,
                            fmt=fmt, card=True)
    first = timm_layout[fmt]
    assert again.written.path.name == first.written.path.name
    for a, b in ((again.written.path, first.written.path), (again.manifest, first.manifest),
                 (again.card, first.card)):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_manifest_records_sources_options_mapping_and_output(timm_layout, synthetic_ckpt):
    result = timm_layout["safetensors"]
    manifest = json.loads(result.manifest.read_text())
    assert result.manifest == result.written.path.with_suffix(".json")
    assert manifest["tool"]["name"] == "tf-porting" and manifest["tool"]["version"]
    source = manifest["source"]
    assert source["format"] == "V2" and source["archive"] is None and source["num_classes"] == 1001
    for entry, path in zip(source["files"], result.source.files):
        assert entry["name"] == path.name
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    output = manifest["output"]
    assert output["format"] == "safetensors" and output["file"] == result.written.path.name
    assert output["sha256"] == hashlib.sha256(result.written.path.read_bytes()).hexdigest()
    assert manifest["options"] == {"architecture": "inception_v3", "num_classes": 1000,
                                   "aux": False, "fold_bn": False, "ema": False,
                                   "reader": "native"}
    variables = manifest["variables"]
    assert variables["mapped_count"] == 378 and variables["in_source"] == 389
    assert variables["mapped"]["InceptionV3/Logits/Conv2d_1c_1x1/weights"] == "fc (weight)"
    assert variables["skipped"]["global_step"] == "training counter"
    assert sum(n.startswith("InceptionV3/AuxLogits/") for n in variables["skipped"]) == 10
    assert manifest["parity"] is None  # not verified by the port itself


def test_manifest_keys_are_the_recorded_ones(timm_layout):
    """A real port's manifest has the keys, in the order, that tests/test_manifest.py records
    (the archive and the parity are null here, so their keys are not in the file)."""
    from test_manifest import PORT_KEYS, key_paths

    expected = [key for key in PORT_KEYS if not key.startswith(("source.archive.", "parity."))]
    for result in timm_layout.values():
        assert key_paths(result.manifest.read_bytes()) == expected


def test_model_card_reads_like_a_model_zoo_entry(timm_layout):
    card = timm_layout["pth"].card.read_text()
    for fact in ("adv_inception_v3_2017_08_18.tar.gz", "http://download.tensorflow.org/models/",
                 "background row 0 was dropped", "central crop 0.875", "| Interpolation | bilinear",
                 "[-1, 1]", "23,834,568", "Adversarial Attacks and Defences Competition",
                 "arXiv:1804.00097", "not verified"):
        assert fact in card, fact


def test_cli_writes_format_manifest_and_card(synthetic_ckpt, tmp_path):
    result = CliRunner().invoke(main, ["--src", str(synthetic_ckpt), "--dst", str(tmp_path / "m.pth"),
                                       "--format", "safetensors", "--model-card", "--no-aux"])
    assert result.exit_code == 0, result.output
    names = sorted(p.suffix for p in tmp_path.iterdir())
    assert names == [".json", ".md", ".safetensors"]
    assert "manifest " in result.stdout and "card " in result.stdout
