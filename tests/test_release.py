"""``port-weights release``: hub-ready folders (porting/publish.py, porting/write/hub.py).

- Inception-ResNet-v2 (the fixed synthetic checkpoint of conftest): timm loads the folder with
  ``timm.create_model("local-dir:DIR", pretrained=True)`` strictly and computes TF's logits
  (Keras + TF's aux head, the suite's oracle) within the published bound; the same timm model
  with its average pools counting padding fails it (negative control). Inception v4's
  counterpart is in tests/test_inception_v4.py, beside its TF side.
- Inception v3 (conftest's synthetic checkpoint): config.json names no architecture, and the
  card states timm's distance as measured at release time, which a measurement made here
  against TF-Slim's own logits confirms; ``--no-timm-distance`` says "not measured".
- Bytes identical twice; the folder rules (new, empty, identical, same weights refreshed with
  the parity carried over, other weights only with --force, foreign folders never); bad input
  one line, nothing left behind, also when interrupted.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from models.third_party import torchvision_models
from models.spec import get_architecture
from porting.cli import main
from porting.verify.parity import compare
from porting.write.manifest import Manifest, ParityRecord, read_manifest

FILES = {"model.safetensors", "config.json", "README.md", "model.json"}


def _run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _release(src, dst, *options, env=None):
    result = _run("release", "--src", src, "--dst", dst, *options, env=env)
    assert result.exit_code == 0, result.output
    return result


def _timm():
    torchvision_models()  # timm imports torchvision (models.third_party)
    import timm

    return timm


def _error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


def _photos_nchw(photos) -> torch.Tensor:
    return torch.from_numpy(photos[1]).permute(0, 3, 1, 2).contiguous()


# --- Inception-ResNet-v2: timm loads the folder and computes TF's logits ----------------------

@pytest.fixture(scope="module")
def irv2_folder(irv2, tmp_path_factory):
    folder = tmp_path_factory.mktemp("irv2_release") / "ens_adv_inception_resnet_v2"
    result = _release(irv2[0], folder)
    assert "timm     architecture inception_resnet_v2" in result.stdout
    return folder


def test_timm_loads_the_irv2_folder_strictly_and_computes_tfs_logits(irv2_folder, irv2_reference,
                                                                    photos):
    config = _config(irv2_folder)
    assert config["architecture"] == "inception_resnet_v2" and config["num_classes"] == 1000
    assert config["pretrained_cfg"]["first_conv"] == "conv2d_1a.conv"
    assert config["pretrained_cfg"]["classifier"] == "classif"
    assert set(os.listdir(irv2_folder)) == FILES
    model = _timm().create_model(f"local-dir:{irv2_folder}", pretrained=True).eval()
    with torch.no_grad():
        logits = model(_photos_nchw(photos)).numpy()
    tf = irv2_reference[10]["Logits"]  # 1001 classes, background first
    parity = compare(logits, tf[:, 1:])
    print(f"timm local-dir vs TF: {parity}")
    assert parity.passed and parity.top1_agree == parity.top5_agree == 10

    # negative control: the same model with its average pools counting padding (as timm's
    # inception_v3 does) is far outside the bound
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d) and m.padding]
    assert pools
    for pool in pools:
        pool.count_include_pad = True
    with torch.no_grad():
        wrong = compare(model(_photos_nchw(photos)).numpy(), tf[:, 1:])
    print(f"negative control (pools counting padding): {wrong}")
    assert not wrong.passed and wrong.max_abs_diff > 10 * wrong.tolerance


def test_the_irv2_card_names_timm_and_ours(irv2_folder):
    card = (irv2_folder / "README.md").read_text()
    assert card.startswith('---\nlibrary_name: "timm"\nlicense: "apache-2.0"\n')
    assert f'timm.create_model("local-dir:{irv2_folder.name}", pretrained=True)' in card
    assert "model_for_state_dict(load_file(" in card
    assert "index i here is TF's index i + 1" in card


# --- Inception v3: timm's model differs; the card says by how much ----------------------------

@pytest.fixture(scope="module")
def v3_folders(synthetic_ckpt, tmp_path_factory):
    """The same release twice, in two folders of the same name (timm's distance measured)."""
    torchvision_models()  # so that the release can import timm in this process
    root = tmp_path_factory.mktemp("v3_release")
    folders = [root / side / "adv_inception_v3" for side in ("a", "b")]
    results = [_release(synthetic_ckpt, folder, "--pytorch-bin") for folder in folders]
    return folders, results


def test_release_bytes_are_identical_twice(v3_folders):
    (a, b), _ = v3_folders
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b)) == sorted(FILES | {"pytorch_model.bin"})
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_v3_config_names_no_architecture_and_the_card_states_timms_distance(
        v3_folders, tf_outputs, photos):
    (folder, _), (result, _) = v3_folders
    config = _config(folder)
    assert config["architecture"] is None
    timm_block = config["tf_porting"]["timm"]
    assert timm_block["model"] == "inception_v3" and not timm_block["computes_tf"]
    distance = timm_block["distance"]
    assert distance["images"] == 10 and not distance["passed"]
    # measured here, against TF-Slim's own logits (not the port), with the folder's weights
    from safetensors.torch import load_file

    model = _timm().create_model("inception_v3", num_classes=1000, pretrained=False)
    model.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    with torch.no_grad():
        logits = model.eval()(_photos_nchw(photos)).numpy()
    here = compare(logits, tf_outputs[10]["Logits"][:, 1:])
    print(f"timm inception_v3 vs TF-Slim: {here}; recorded: {distance}")
    assert here.max_abs_diff > 10 * here.tolerance  # timm really differs
    assert distance["max_abs_diff"] == pytest.approx(here.max_abs_diff, rel=0.01)
    assert distance["top1_agree"] == here.top1_agree
    card = (folder / "README.md").read_text()
    assert card.startswith('---\nlibrary_name: "pytorch"\n')
    assert "does not compute TF's logits with these weights" in card
    assert f"max |logit diff| {distance['max_abs_diff']:.3g}" in card
    assert f"top-1 agreement {distance['top1_agree']}/10" in card
    assert "count the zero padding" in card and "model_for_state_dict" in card
    assert "timm     none: inception_v3 differs from TF by up to" in result.stdout


def test_pytorch_model_bin_holds_the_same_tensors(v3_folders):
    from safetensors.torch import load_file

    folder = v3_folders[0][0]
    with open(folder / "pytorch_model.bin", "rb") as f:
        torch_weights = torch.load(f, weights_only=True)
    safe = load_file(folder / "model.safetensors")
    assert list(torch_weights) == list(safe)
    assert all(torch.equal(torch_weights[k], safe[k]) for k in safe)
    assert not any(key.startswith("AuxLogits.") for key in safe)
    assert safe["fc.weight"].shape == (1000, 2048)


def test_without_the_measurement_the_card_says_not_measured(synthetic_ckpt, tmp_path):
    folder = tmp_path / "v3"
    _release(synthetic_ckpt, folder, "--no-timm-distance")
    assert _config(folder)["tf_porting"]["timm"]["distance"] is None
    card = (folder / "README.md").read_text()
    assert "**not measured**" in card and "does not compute TF's logits" in card


# --- the folder rules --------------------------------------------------------------------------

@pytest.fixture
def released(synthetic_ckpt, tmp_path):
    """A fresh release folder (no measurement: these tests are about files)."""
    folder = tmp_path / "out" / "rel"
    _release(synthetic_ckpt, folder, "--no-timm-distance")
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_identical_is_unchanged_and_same_weights_carry_the_parity(released, synthetic_ckpt):
    before = _snapshot(released)
    again = _release(synthetic_ckpt, released, "--no-timm-distance")
    assert f"folder   {released} (unchanged)" in again.stdout and _snapshot(released) == before
    # what `verify` records in the manifest beside the weights is carried into config and card
    manifest = read_manifest(released / "model.json")
    parity = ParityRecord(reference="TF-Slim", images=10, max_abs_diff=1.5e-4, tolerance=2e-3,
                          top1_agree=10, top5_agree=10, passed=True)
    (released / "model.json").write_bytes(manifest.with_parity(parity).to_json())
    refreshed = _release(synthetic_ckpt, released, "--no-timm-distance")
    assert "(refreshed)" in refreshed.stdout
    assert _config(released)["tf_porting"]["parity"] == dataclasses.asdict(parity)
    assert "max abs logit diff 0.00015 (bound 0.002), top-1 10/10" in \
        (released / "README.md").read_text()
    assert read_manifest(released / "model.json").parity == parity
    assert _leftovers(released.parent) == []


def test_other_weights_are_replaced_only_with_force(released, synthetic_ckpt):
    manifest = read_manifest(released / "model.json")
    other = dataclasses.replace(manifest, output=dataclasses.replace(manifest.output,
                                                                     sha256="0" * 64))
    (released / "model.json").write_bytes(other.to_json())
    before = _snapshot(released)
    line = _error_line(_run("release", "--src", synthetic_ckpt, "--dst", released,
                            "--no-timm-distance"))
    assert line == f"error: {released}: exists with different contents; pass --force to " \
                   "replace it"
    assert _snapshot(released) == before and _leftovers(released.parent) == []
    forced = _release(synthetic_ckpt, released, "--no-timm-distance", "--force")
    assert "(replaced)" in forced.stdout
    assert read_manifest(released / "model.json").output.sha256 == manifest.output.sha256
    assert _leftovers(released.parent) == []


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_a_folder_release_did_not_write_is_never_touched(synthetic_ckpt, tmp_path, force):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    line = _error_line(_run("release", "--src", synthetic_ckpt, "--dst", folder,
                            "--no-timm-distance", *force))
    assert line == f"error: {folder}: refused: not a release folder (holds notes.txt); give " \
                   "a new or empty folder"
    assert os.listdir(folder) == ["notes.txt"] and _leftovers(tmp_path) == []


def test_an_empty_folder_is_filled_and_a_dead_runs_staged_folder_removed(synthetic_ckpt,
                                                                          tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    dead = tmp_path / ".empty.999999999.abcd.tmp"  # staged by a process that is gone
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    _release(synthetic_ckpt, folder, "--no-timm-distance")
    assert set(os.listdir(folder)) == FILES and _leftovers(tmp_path) == []


def test_bad_input_is_one_line_and_leaves_nothing(synthetic_ckpt, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert _error_line(_run("release", "--src", synthetic_ckpt, "--dst", a_file)) == \
        f"error: {a_file}: refused: exists and is not a folder"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert "a symbolic link" in _error_line(_run("release", "--src", synthetic_ckpt,
                                                 "--dst", link))
    missing = tmp_path / "nothing.ckpt"
    assert str(missing) in _error_line(_run("release", "--src", missing, "--dst",
                                            tmp_path / "out"))
    inside = synthetic_ckpt.parent  # the output would hold the checkpoint: refused
    assert "an input of this command" in _error_line(
        _run("release", "--src", synthetic_ckpt, "--dst", inside, "--force"))
    downloads = {"PORT_WEIGHTS_CHECKPOINTS": str(tmp_path / "downloads")}
    line = _error_line(_run("release", "adv_inception_v3", "--dst", tmp_path / "out",
                            env=downloads))
    assert line.endswith("release 'adv_inception_v3' is not downloaded; fetch it first: "
                         "port-weights fetch adv_inception_v3")
    assert "no release named 'no_such_release'" in _error_line(
        _run("release", "no_such_release", "--dst", tmp_path / "out"))
    for args in ([], ["adv_inception_v3", "--src", synthetic_ckpt]):
        assert _run("release", *args, "--dst", tmp_path / "out").exit_code == 2
    assert sorted(os.listdir(tmp_path)) == ["file", "link"]


def test_an_interrupted_release_leaves_nothing_and_keeps_the_old_folder(
        released, synthetic_ckpt, monkeypatch):
    import porting.publish

    before = _snapshot(released)

    def interrupted(*args):
        raise KeyboardInterrupt  # what SIGTERM raises too (cli.Terminated), mid-write

    monkeypatch.setattr(porting.publish, "release_card", interrupted)
    fresh = released.parent / "fresh"
    for dst in (fresh, released):
        with pytest.raises(KeyboardInterrupt):
            porting.publish.make_release(synthetic_ckpt, dst, timm_distance=False, force=True)
    assert not fresh.exists() and _snapshot(released) == before
    assert sorted(os.listdir(released.parent)) == ["rel"]


# --- architectures without a timm model ---------------------------------------------------------

@pytest.mark.parametrize("name", ["vgg_16", "resnet_v2_50", "resnet_v1_50"])
def test_an_architecture_timm_does_not_have_names_none(name, v3_folders):
    """No timm model has the keys of these ports (VGG's are torchvision's; ResNet's TF-Slim's):
    the config names none and the card says so."""
    from porting.write.hub import hub_config, release_card

    spec = get_architecture(name)
    assert spec.timm is None
    manifest = read_manifest(v3_folders[0][0] / "model.json")
    source_classes = spec.eval.num_classes
    manifest = dataclasses.replace(
        manifest, options=dataclasses.replace(manifest.options, architecture=name),
        source=dataclasses.replace(manifest.source, num_classes=source_classes, release=None))
    config = hub_config(spec, manifest, None, (), None)
    document = json.loads(config.to_json())
    assert document["architecture"] is None and document["tf_porting"]["timm"] is None
    assert document["pretrained_cfg"]["pool_size"] is None  # kept although null, as timm does
    assert document["pretrained_cfg"]["input_size"] == [3, spec.eval.input_size,
                                                        spec.eval.input_size]
    assert document["num_features"] == spec.num_features
    card = release_card(config, "folder")
    assert "No timm model has these state-dict keys" in card
    assert 'library_name: "pytorch"' in card and "license: \"other\"" in card
