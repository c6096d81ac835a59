"""Inception-ResNet-v2 end to end: a TF-Slim-named checkpoint (built by TensorFlow from a
calibrated ``keras.applications.InceptionResNetV2``) ported by the architecture-free path, loaded
back from the written file, and compared with Keras's own logits (and TF's aux head) on photos."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import IRV2_VARIANTS
from models import model_for_state_dict
from models.inception_resnet_v2.spec import SPEC
from porting.cli import main
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from release_tools import assert_release_is_reproducible

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def models_by_variant(irv2_ported_files):
    return {name: model_for_state_dict(torch.load(path, weights_only=True))
            for name, path in irv2_ported_files.items()}


def _reference(ref: dict, variant: str) -> dict:
    """What the variant must reproduce: 1000-class files Keras's own logits (TF's classes
    1..1000), 1001-class files the checkpoint's full classifier; aux heads TF's aux graph."""
    options = IRV2_VARIANTS[variant]
    drop = 1 if options.num_classes == 1000 else 0
    expected = {"Logits": ref["keras"] if drop else ref["Logits"]}
    if options.aux:
        expected["AuxLogits"] = ref["AuxLogits"][:, drop:]
    return expected


def test_keras_tells_the_photos_apart_and_the_checkpoint_reproduces_it(irv2_reference):
    ref = irv2_reference[10]
    assert len(set(ref["keras"].argmax(1).tolist())) >= 8
    assert len(set(ref["AuxLogits"].argmax(1).tolist())) >= 5
    # the checkpoint's classes 1..1000 are Keras's 0..999 (the reference reloads them)
    assert compare(ref["Logits"][:, 1:], ref["keras"]).passed


@pytest.mark.parametrize("batch_size", [1, 10])
@pytest.mark.parametrize("variant", list(IRV2_VARIANTS))
def test_logits_match_keras(variant, batch_size, models_by_variant, irv2_reference, batches):
    ours = torch_outputs(models_by_variant[variant], batches[batch_size], batch_size)
    expected = _reference(irv2_reference[batch_size], variant)
    assert set(ours) == set(expected)
    for end_point, ref in expected.items():
        parity = compare(ours[end_point], ref)
        print(f"IRv2 {variant} batch {batch_size} {end_point}: {parity}")
        assert parity.passed, f"{end_point}: {parity}"


@pytest.mark.parametrize("sabotage", ["pool counts padding", "block35 scale +10%",
                                      "final Block8 with ReLU"])
def test_negative_controls_fail(sabotage, models_by_variant, irv2_reference, photos):
    """Each TF-Slim detail the model reproduces is visible in the logits at this bound."""
    model = models_by_variant["no-aux"]
    pool = model.mixed_5b.branch3[0]
    saved = (pool.count_include_pad, model.repeat[0].scale, model.block8.relu)
    try:
        if sabotage == "pool counts padding":
            pool.count_include_pad = True
        elif sabotage == "block35 scale +10%":
            model.repeat[0].scale *= 1.1
        else:
            model.block8.relu = True
        ours = torch_outputs(model, photos[1], 10)["Logits"]
    finally:
        pool.count_include_pad, model.repeat[0].scale, model.block8.relu = saved
    parity = compare(ours, irv2_reference[10]["keras"])
    print(f"{sabotage}: {parity}")
    assert not parity.passed and parity.max_abs_diff > 10 * parity.tolerance


def test_checkpoint_names_are_the_recorded_release_names(irv2):
    """The fixture holds exactly the names a converter of the real release reads (recorded list,
    source cited in the file) plus the AuxLogits head, which that converter never reads."""
    from porting.read.open import open_reader

    recorded = json.loads((DATA / "tf_slim_inception_resnet_v2_variables.json").read_text())
    names = {name: list(shape) for name, shape in recorded["variables"]}
    variables = open_reader(irv2[0]).variables()
    aux = {n for n in variables if n.startswith("InceptionResnetV2/AuxLogits/")}
    assert len(names) == 898 and len(aux) == 10 and "global_step" in variables
    assert set(variables) == set(names) | aux | {"global_step"}
    assert all(list(variables[n].shape) == shape for n, shape in names.items() if shape)
    # AuxLogits shapes as MMdnn's conversion of the release's graph lists them (see the file)
    assert variables["InceptionResnetV2/AuxLogits/Conv2d_2a_5x5/weights"].shape == (5, 5, 128, 768)
    assert variables["InceptionResnetV2/AuxLogits/Logits/weights"].shape == (768, 1001)


def test_no_aux_file_loads_strictly_into_timms_layout(irv2_ported_files):
    recorded = json.loads((DATA / "timm_inception_resnet_v2_keys.json").read_text())["keys"]
    state_dict = torch.load(irv2_ported_files["no-aux"], weights_only=True)
    assert [[key, list(t.shape)] for key, t in state_dict.items()] == recorded


def test_inspect_lists_every_variable_and_its_home(irv2):
    result = CliRunner().invoke(main, ["inspect", str(irv2[0])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    rows = [line for line in lines if line.startswith("InceptionResnetV2/")]
    assert len(rows) == 908
    assert all("skipped" not in row and ("(" in row.split()[-1] or ")" in row) for row in rows)
    assert any("repeat_1.19.conv2d (bias)" in row for row in rows)
    assert any("AuxLogits.classif (weight)" in row for row in rows)
    assert "model    Inception-ResNet-v2 (inception_resnet_v2)" in lines
    assert "mapped   908 variables to 248 PyTorch layers" in lines


def _archive(folder: Path, name: str, files: dict[str, Path]) -> Path:
    """A release-shaped .tar.gz holding ``files`` under the member names given."""
    archive = folder / name
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # the port reads any level
        for member, path in files.items():
            tar.add(path, arcname=member)
    return archive


def test_each_release_archive_layout_ports(irv2, irv2_ported_files, tmp_path):
    """The V2 archive layout (ens_adv 2017-08-18; adv 2017-12-18 is the same layout under other
    names, inspected only) and the V1 single file of the 2016 base release port to the same
    bytes as the checkpoint itself, and are named as releases."""
    from ckpt_tools import read_all, write_v1_checkpoint
    from porting.releases.registry import load_registry

    prefix = irv2[0]
    v1 = write_v1_checkpoint(tmp_path / "v1" / "model.ckpt", read_all(prefix))
    meta = tmp_path / "graph.meta"
    meta.write_bytes(b"not used by the port")
    expected = irv2_ported_files["1000"].read_bytes()
    # adv_inception_resnet_v2 has ens_adv's V2 layout under other names: inspected, not ported
    result = CliRunner().invoke(main, ["inspect", str(_archive(
        tmp_path, "adv_inception_resnet_v2_2017_12_18.tar.gz",
        {f"adv_inception_resnet_v2.ckpt{s}": Path(f"{prefix}{s}") if s != ".meta" else meta
         for s in (".index", ".data-00000-of-00001", ".meta")}))])
    assert result.exit_code == 0 and "mapped   908 variables to 248 PyTorch layers" in result.stdout
    for release in ("ens_adv_inception_resnet_v2", "inception_resnet_v2"):
        entry = load_registry()[release]
        assert entry.architecture == "inception_resnet_v2"
        if entry.format == "V1":
            files = {entry.members[0]: v1}
        else:
            files = {}
            for member in entry.members:
                suffix = member[len(entry.checkpoint):]
                files[member] = meta if suffix == ".meta" else Path(f"{prefix}{suffix}")
        archive = _archive(tmp_path, entry.archive, files)
        result = CliRunner().invoke(main, ["--src", str(archive), "--dst",
                                           str(tmp_path / release / "irv2.pth")])
        assert result.exit_code == 0, result.output
        assert f"({entry.format}, 909 variables)" in result.stdout
        (written,) = (tmp_path / release).glob("irv2-*.pth")
        assert written.read_bytes() == expected, release
        manifest = json.loads(next((tmp_path / release).glob("irv2-*.json")).read_text())
        assert manifest["source"]["release"] == release
        assert manifest["options"]["architecture"] == "inception_resnet_v2"


@pytest.fixture(scope="module")
def keras_files(irv2, tmp_path_factory):
    """The calibrated Keras model's weights as Keras 3 ``.weights.h5`` and, written by
    tf_keras from the same values, Keras 2 ``.h5``."""
    import tf_keras

    _, keras_model = irv2
    folder = tmp_path_factory.mktemp("irv2_keras")
    keras_model.save_weights(folder / "inception_resnet_v2.weights.h5")
    legacy = tf_keras.applications.InceptionResNetV2(weights=None, classifier_activation=None)
    legacy.set_weights(keras_model.get_weights())
    legacy.save_weights(str(folder / "inception_resnet_v2.h5"))
    return folder


@pytest.mark.parametrize("name", ["inception_resnet_v2.weights.h5", "inception_resnet_v2.h5"])
def test_keras_weights_port_with_parity(name, keras_files, irv2_reference, photos, tmp_path):
    result = CliRunner().invoke(main, ["--src", str(keras_files / name),
                                       "--dst", str(tmp_path / "keras.pth"), "--no-aux"])
    assert result.exit_code == 0, result.output
    assert "898 variables" in result.stdout and "skipped  nothing" in result.stdout
    assert "Inception-ResNet-v2 (inception_resnet_v2)" in result.stdout
    (output,) = tmp_path.glob("keras-*.pth")
    model = model_for_state_dict(torch.load(output, weights_only=True))
    parity = compare(torch_outputs(model, photos[1], 10)["Logits"], irv2_reference[10]["keras"])
    print(f"{name}: {parity}")
    assert parity.passed


def test_keras_weights_of_the_wrong_architecture_are_refused(keras_files, tmp_path):
    result = CliRunner().invoke(main, ["--src", str(keras_files / "inception_resnet_v2.h5"),
                                       "--dst", str(tmp_path / "k.pth"), "--no-aux",
                                       "--arch", "inception_v3"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "keras.applications.InceptionV3 has 94" in result.stderr
    assert not list(tmp_path.iterdir())


def test_reader_tf_with_keras_weights_is_an_error(keras_files, tmp_path):
    result = CliRunner().invoke(main, ["--src", str(keras_files / "inception_resnet_v2.h5"),
                                       "--dst", str(tmp_path / "k.pth"), "--reader", "tf"])
    assert result.exit_code == 1 and "--reader tf reads TensorFlow checkpoints" in result.stderr
    assert not list(tmp_path.iterdir())


def test_deploy_model_keeps_the_logits(irv2_ported_files, irv2_reference, photos):
    from models import deploy_model

    model = deploy_model(torch.load(irv2_ported_files["1000"], weights_only=True))
    parity = compare(torch_outputs(model, photos[1], 10)["Logits"], irv2_reference[10]["keras"])
    assert parity.passed, parity


# --- verify: every IRv2 end point against Keras + TF's aux head, goldens without TensorFlow ---

def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def verified_with_goldens(irv2, irv2_ported_files, tmp_path_factory):
    """(CLI result, JSON report, goldens): one ``verify --src`` of the 1000-class file that also
    records goldens (the Keras reference is built once for the tests below)."""
    folder = tmp_path_factory.mktemp("irv2_verify")
    report, goldens = folder / "report.json", folder / "irv2_goldens.h5"
    result = _run("verify", "--src", irv2[0], "--weights", irv2_ported_files["1000"],
                  "--count", 1, "--json", report, "--record-goldens", goldens)
    return result, json.loads(report.read_text()) if report.exists() else None, goldens


def test_verify_reports_every_end_point_and_passes(verified_with_goldens):
    result, data, _ = verified_with_goldens
    assert result.exit_code == 0, result.output
    assert list(data["end_points"]) == list(SPEC.end_points)
    assert data["architecture"] == "inception_resnet_v2" and data["passed"]
    assert "Keras InceptionResNetV2 + TF aux head on" in data["reference"]
    for name in SPEC.end_points:
        assert name in result.stdout


def test_verify_names_the_first_diverging_end_point(irv2_ported_files, verified_with_goldens,
                                                    tmp_path):
    state_dict = torch.load(irv2_ported_files["1001"], weights_only=True)
    state_dict["repeat_1.7.branch1.1.bn.running_var"] *= 4  # inside the block17 repeats
    sabotaged = tmp_path / "sabotaged.pth"
    torch.save(state_dict, sabotaged)
    result = _run("verify", "--goldens", verified_with_goldens[2], "--weights", sabotaged)
    assert result.exit_code == 1
    assert result.stderr.startswith("FAIL: first divergence at PreAuxLogits")
    assert "Mixed_6a " in result.stdout and "ok" in result.stdout.split("Mixed_6a ")[1].split("\n")[0]


def test_verify_float64_is_exact(irv2, irv2_ported_files, tmp_path):
    report = tmp_path / "report.json"
    result = _run("verify", "--src", irv2[0], "--weights", irv2_ported_files["1001"],
                  "--count", 1, "--float64", "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    worst = max(p["relative_error"] for p in data["end_points"].values())
    print(f"IRv2 float64 worst relative error over {len(data['end_points'])} end points: {worst:.3g}")
    assert len(data["end_points"]) == len(SPEC.end_points) and worst <= 1e-10


def test_goldens_verify_without_tensorflow(irv2_ported_files, verified_with_goldens, tmp_path):
    from blocked_imports import CLI, TENSORFLOW, run_blocked

    goldens = verified_with_goldens[2]
    passed = run_blocked(TENSORFLOW, CLI, "verify", "--goldens", goldens,
                         "--weights", irv2_ported_files["no-aux"])
    assert passed.returncode == 0, passed.stderr
    assert "PASS" in passed.stdout and "AuxLogits" in passed.stdout
    state_dict = torch.load(irv2_ported_files["no-aux"], weights_only=True)
    state_dict["conv2d_7b.bn.bias"] += 0.5
    sabotaged = tmp_path / "sabotaged.pth"
    torch.save(state_dict, sabotaged)
    failed = run_blocked(TENSORFLOW, CLI, "verify", "--goldens", goldens, "--weights", sabotaged)
    assert failed.returncode == 1 and "first divergence at Conv2d_7b_1x1" in failed.stderr


def test_verify_refuses_a_file_of_another_architecture(irv2, ported_files, tmp_path):
    result = _run("verify", "--src", irv2[0], "--weights", ported_files["1000"], "--count", 1)
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert "is Inception v3; it cannot be a port of" in result.stderr


def test_the_release_folder_is_byte_reproducible(irv2, tmp_path):
    """``port-weights release`` twice: the same folder, byte for byte."""
    assert_release_is_reproducible(irv2[0], tmp_path)

