"""TF-Slim Inception v4: a checkpoint written by TensorFlow from research/slim's graph (rebuilt
with tf_slim layers in ``models/inception_v4/oracle.py``: V1 format like the 2016-09-09 release,
calibrated, ``global_step`` included) ports through the CLI and matches that graph on the photos
at batch 1 and 10 for the 1001, 1000, ``--no-aux`` and ``--fold-bn`` outputs.

The oracle is code we wrote, so it is cross-checked with code we did not: timm's
``inception_v4``, which loads the ``--no-aux`` file strictly, computes TF's logits within the
bound, follows TF's end points block by block with float32 rounding that grows smoothly, and
equals the TF graph in float64 (1e-10), as ``verify --float64`` shows ours does. timm also
loads the folder ``port-weights release`` writes (``local-dir:``) and computes TF's logits.

The whole module is one xdist group (conftest): its TF side is built once.
"""
from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import BATCH_1_IMAGES
from taps_tools import TAP_IMAGES, check_taps, graph_tensors
from models.third_party import torchvision_models
from models.inception_v4.spec import FEATURE_END_POINTS, SPEC
from models.spec import ClassLayout
from porting.cli import main
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from porting.weights import load_ported
from onnx_tools import assert_onnx_report_passes
from release_tools import assert_release_is_reproducible

# The variants, as CLI options.
VARIANTS = {"1001": ["--num-classes", "1001"], "1000": [], "no-aux": ["--no-aux"],
            "fold-bn": ["--num-classes", "1001", "--fold-bn"]}
MODEL_VARIABLES = 608  # 151 conv + batch norm layers x 4, 2 classifiers x 2


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _port(source: Path, folder: Path, *options) -> tuple[Path, str]:
    """(the written .pth, what the CLI printed) of a port into an empty ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    result = _run("--src", source, "--dst", folder / "inception_v4.pth", *options)
    assert result.exit_code == 0, result.output
    (written,) = folder.glob("inception_v4-*.pth")
    return written, result.stdout


@dataclasses.dataclass
class Side:
    checkpoint: Path       # the synthetic V1 checkpoint
    images: np.ndarray     # the 10 photos, NHWC in [-1, 1]
    tf: dict               # {batch: {end point: TF's output}}; batch 10 has every end point
    files: dict            # {variant: ported .pth}
    port_output: str       # what the CLI printed for the 1001-class port
    taps: dict             # {graph tensor name: TF's tensor} on TAP_IMAGES photos


    def expected(self, end_point: str, batch: int = 10, classes: int = 1001) -> np.ndarray:
        """TF's ``end_point`` at ``batch``, as a port with ``classes`` outputs gives it (the
        background class dropped from class scores where the port drops it)."""
        tf = self.tf[batch][end_point]
        if end_point in SPEC.logits_end_points:
            return tf[:, ClassLayout.of(SPEC.eval, classes).dropped:]
        return tf


@pytest.fixture(scope="module")
def v4(tmp_path_factory, photos) -> Side:
    """TF's side, once: the checkpoint, TF's outputs (every end point at batch 10; Logits and
    AuxLogits image by image at batch 1), and the CLI's port of each variant."""
    from models.inception_v4.oracle import Reference, build_synthetic_checkpoint

    images = photos[1]
    folder = tmp_path_factory.mktemp("inception_v4")
    checkpoint = build_synthetic_checkpoint(folder / "inception_v4.ckpt", images, v1_format=True)
    reference = Reference.for_checkpoint(checkpoint)
    try:
        tf = {len(images): reference(images, SPEC.end_points)}
        singles = [reference(images[i:i + 1]) for i in range(BATCH_1_IMAGES)]
        tf[1] = {name: np.concatenate([s[name] for s in singles]) for name in singles[0]}
        taps = graph_tensors(reference, images[:TAP_IMAGES], SPEC.taps.tensors())
    finally:
        reference.close()
    ports = {name: _port(checkpoint, folder / name, *options)
             for name, options in VARIANTS.items()}
    return Side(checkpoint, images, tf, {name: path for name, (path, _) in ports.items()},
                ports["1001"][1], taps)


def test_taps_are_the_oracle_graphs_tensors_by_name(v4):
    """Every tensor name of the table (research/slim's scopes: InceptionV4/InceptionV4/<block>/
    concat, the heads under InceptionV4/), fetched by name from the oracle's graph."""
    assert check_taps(load_ported(v4.files["1001"]), SPEC, v4.images[:TAP_IMAGES], v4.taps) >= 10


def test_the_checkpoint_has_the_release_layout(v4):
    from porting.read.open import open_reader

    variables = open_reader(v4.checkpoint).variables()
    assert open_reader(v4.checkpoint).source.format == "V1"
    expected = {name for layer in SPEC.layers for name in layer.variables().values()}
    assert len(expected) == MODEL_VARIABLES and set(variables) == expected | {"global_step"}
    shapes = {name: tuple(variables[name].shape) for name in variables}
    assert shapes["InceptionV4/AuxLogits/Conv2d_2a/weights"] == (5, 5, 128, 768)
    assert shapes["InceptionV4/AuxLogits/Aux_logits/weights"] == (768, 1001)
    assert shapes["InceptionV4/Logits/Logits/weights"] == (1536, 1001)
    assert shapes["InceptionV4/Mixed_7d/Branch_2/Conv2d_0e_3x1/weights"] == (3, 1, 512, 256)
    assert "InceptionV4/Mixed_5b/Branch_0/Conv2d_0a_1x1/BatchNorm/gamma" not in variables
    # the calibration makes the photos' classes differ: a parity check on them can fail
    tf = v4.tf[10]
    assert len(set(tf["Logits"].argmax(1))) >= 8 and len(set(tf["AuxLogits"].argmax(1))) >= 8
    assert f"(V1, {MODEL_VARIABLES + 1} variables)" in v4.port_output


@pytest.mark.parametrize("batch", [1, 10])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_port_matches_tf(variant, batch, v4):
    model = load_ported(v4.files[variant])
    manifest = json.loads(v4.files[variant].with_suffix(".json").read_text())
    skipped = manifest["variables"]["skipped"]
    assert skipped.pop("global_step") == "training counter"
    assert len(skipped) == (10 if variant == "no-aux" else 0)
    assert all(name.startswith("InceptionV4/AuxLogits/") for name in skipped)
    images = v4.images[:BATCH_1_IMAGES] if batch == 1 else v4.images
    ours = torch_outputs(model, images, batch)
    expected = {name: v4.expected(name, batch, model.num_classes)
                for name in ("Logits", "AuxLogits") if name != "AuxLogits" or variant != "no-aux"}
    assert set(ours) == set(expected)
    for end_point, ref in expected.items():
        parity = compare(ours[end_point], ref)
        print(f"inception_v4 {variant} batch {batch} {end_point}: {parity}")
        assert parity.passed, f"{end_point}: {parity}"
        assert parity.top1_agree == parity.top5_agree == len(images)


def _pools(model):
    return [block.branch3[0] for block in model.features if hasattr(block, "branch3")]


@pytest.mark.parametrize("sabotage", ["Mixed_5b's pool counts padding",
                                      "aux 5x5 kernel transposed"])
def test_negative_controls_fail_by_far(sabotage, v4):
    """Each TF detail the port keeps is visible at the bound: one average pool (of 14) that
    counts the zero padding, and the aux head's 5x5 kernel with height and width swapped (the
    HWIO -> OIHW transposition done wrong)."""
    model = load_ported(v4.files["1001"])
    if sabotage.startswith("Mixed_5b"):
        _pools(model)[0].count_include_pad = True
        end_point = "Logits"
    else:
        weight = model.AuxLogits.conv2d_2a.conv.weight
        with torch.no_grad():
            weight.copy_(weight.transpose(2, 3).clone())
        end_point = "AuxLogits"
    images = v4.images[:BATCH_1_IMAGES]
    parity = compare(torch_outputs(model, images, len(images))[end_point],
                     v4.tf[10][end_point][:BATCH_1_IMAGES])
    print(f"{sabotage}: {end_point} {parity}")
    assert not parity.passed and parity.max_abs_diff > 10 * parity.tolerance
    assert len(_pools(model)) == 14


# --- the oracle against an implementation nobody here wrote: timm's inception_v4 -------------



def _timm():
    """timm, imported once torchvision can be (timm imports it: ``models.third_party``)."""
    torchvision_models()
    import timm

    return timm


@pytest.fixture(scope="module")
def timm_model(v4):
    """timm's ``inception_v4`` with the ``--no-aux`` 1000-class file loaded strictly."""
    model = _timm().create_model("inception_v4", num_classes=1000, pretrained=False)
    state_dict = torch.load(v4.files["no-aux"], weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in state_dict.items()] == \
        [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _timm_end_points(model, images: np.ndarray) -> dict:
    """timm's feature blocks (under TF's end point names, NHWC) and logits."""
    out = {}
    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(next(model.parameters()).dtype)
        for name, block in zip(FEATURE_END_POINTS, model.features, strict=True):
            x = block(x)
            out[name] = x.permute(0, 2, 3, 1).numpy()
        out["Logits"] = model.forward_head(x).numpy()
    return out


def test_timm_loads_the_no_aux_file_and_computes_tfs_logits(v4, timm_model):
    """The float32 floor between the TF graph and timm: rounding that grows smoothly from block
    to block (no jump, which a wrong layer would make), and logits within the bound."""
    tf = v4.tf[10]
    ours = _timm_end_points(timm_model, v4.images)
    errors = [compare(ours[name], tf[name], classes=False).relative_error
              for name in FEATURE_END_POINTS]
    growth = [b / a for a, b in zip(errors, errors[1:])]
    print("timm vs TF, relative error per end point: " + ", ".join(
        f"{name} {error:.2g}" for name, error in zip(FEATURE_END_POINTS, errors)))
    print(f"growth per block from Conv2d_2b_3x3: max {max(growth[2:]):.2f}, geometric mean "
          f"{np.exp(np.mean(np.log(growth[2:]))):.2f}")
    assert max(errors) <= 1e-4 and max(growth[2:]) < 3  # the stem accumulates from one ulp
    parity = compare(ours["Logits"], v4.expected("Logits", classes=1000))
    print(f"timm's logits: {parity}")
    assert parity.passed and parity.top1_agree == parity.top5_agree == len(v4.images)


def test_timm_loads_the_release_folder_strictly_and_computes_tfs_logits(v4, tmp_path):
    """``port-weights release``'s folder: ``timm.create_model("local-dir:DIR",
    pretrained=True)`` reads its config.json and model.safetensors, loads strictly, and
    computes TF's logits; compared without the label offset (TF's background row first) the
    same logits fail (negative control)."""
    folder = tmp_path / "inception_v4"
    result = _run("release", "--src", v4.checkpoint, "--dst", folder)
    assert result.exit_code == 0, result.output
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "inception_v4" and config["num_features"] == 1536
    cfg = config["pretrained_cfg"]
    assert (cfg["first_conv"], cfg["classifier"], cfg["pool_size"]) == \
        ("features.0.conv", "last_linear", [8, 8])
    model = _timm().create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.inference_mode():
        logits = model(torch.from_numpy(v4.images).permute(0, 3, 1, 2)).numpy()
    parity = compare(logits, v4.expected("Logits", classes=1000))
    print(f"timm local-dir vs TF: {parity}")
    assert parity.passed and parity.top1_agree == parity.top5_agree == len(v4.images)
    wrong = compare(logits, v4.tf[10]["Logits"][:, :1000])
    assert not wrong.passed


@pytest.fixture(scope="module")
def float64(v4, tmp_path_factory):
    """(CLI result, JSON report, float64 goldens): ``verify --float64`` of the ``--no-aux``
    file, which also records TF's float64 end points (the TF graph is built once)."""
    folder = tmp_path_factory.mktemp("inception_v4_float64")
    report, goldens = folder / "report.json", folder / "goldens64.h5"
    result = _run("verify", "--src", v4.checkpoint, "--weights", v4.files["no-aux"], "--float64",
                  "--count", 2, "--json", report, "--record-goldens", goldens)
    return result, json.loads(report.read_text()) if report.exists() else None, goldens


def test_verify_float64_is_exact_end_point_by_end_point(float64):
    result, data, _ = float64
    assert result.exit_code == 0, result.output
    assert data["passed"] and data["architecture"] == "inception_v4"
    compared = [name for name in SPEC.end_points if name != "AuxLogits"]  # no aux head in it
    assert list(data["end_points"]) == compared
    worst = max(p["relative_error"] for p in data["end_points"].values())
    print(f"verify --float64: worst relative error {worst:.3g} over {len(compared)} end points")
    assert worst <= 1e-10
    for name in compared:
        assert name in result.stdout


def test_timm_in_float64_equals_the_tf_graph(float64, timm_model):
    """The decisive check of the oracle: in float64, an implementation we did not write gives
    the TF graph's every block and its logits to 1e-10."""
    from porting.verify.goldens import Goldens

    goldens = Goldens(float64[2])
    try:
        tf = goldens.reference(0, len(goldens.inputs))
        ours = _timm_end_points(timm_model.double(), goldens.inputs)
    finally:
        goldens.close()
        timm_model.float()
    dropped = ClassLayout.of(SPEC.eval, 1000).dropped  # timm's 1000 classes
    errors = {name: compare(ours[name], tf[name][:, dropped:] if name == "Logits" else tf[name],
                            classes=False).relative_error for name in ours}
    print(f"timm vs TF in float64: worst relative error {max(errors.values()):.3g}")
    assert max(errors.values()) <= 1e-10, errors


def test_goldens_verify_the_aux_head_and_name_a_sabotaged_block(float64, v4, tmp_path):
    goldens = float64[2]
    result = _run("verify", "--goldens", goldens, "--weights", v4.files["1001"], "--float64")
    assert result.exit_code == 0, result.output
    assert "AuxLogits" in result.stdout and "PASS" in result.stdout
    state_dict = torch.load(v4.files["1000"], weights_only=True)
    state_dict["features.13.branch2.3.bn.running_var"] *= 1.5  # Mixed_6d, Branch_2, 0d_7x1
    sabotaged = tmp_path / "sabotaged.pth"
    torch.save(state_dict, sabotaged)
    result = _run("verify", "--goldens", goldens, "--weights", sabotaged, "--float64")
    print(result.stderr)
    assert result.exit_code == 1
    assert result.stderr.startswith("FAIL: first divergence at Mixed_6d")
    assert "ok" in result.stdout.split("Mixed_6c ")[1].split("\n")[0]


# --- the release archive, deploy_model ----------------------------------------------------

def test_the_release_archive_ports_to_the_same_bytes(v4, tmp_path):
    from porting.releases.registry import load_registry

    entry = load_registry()["inception_v4"]
    assert (entry.architecture, entry.format, entry.members) == ("inception_v4", "V1",
                                                                 ("inception_v4.ckpt",))
    archive = tmp_path / entry.archive
    with tarfile.open(archive, "w:gz", compresslevel=0) as tar:  # stored: the time is gzip's
        tar.add(v4.checkpoint, arcname=entry.checkpoint)
    written, output = _port(archive, tmp_path / "out")
    assert f"{archive}: inception_v4.ckpt (V1, {MODEL_VARIABLES + 1} variables)" in output
    assert written.read_bytes() == v4.files["1000"].read_bytes()
    manifest = json.loads(written.with_suffix(".json").read_text())
    assert manifest["source"]["release"] == "inception_v4"


def test_deploy_model_keeps_the_logits(v4):
    from models import deploy_model

    model = deploy_model(torch.load(v4.files["1000"], weights_only=True))
    parity = compare(torch_outputs(model, v4.images, 10)["Logits"],
                     v4.expected("Logits", classes=1000))
    print(f"deploy_model: {parity}")
    assert parity.passed, parity


def test_onnx_export_passes_verify_in_both_engines(v4, photos, tmp_path):
    """The exported graph (BN folded, aux head dropped, 1001 classes) in ONNX Runtime and
    OpenVINO at batch 1 and 10 against TF's logits (as goldens: no TF graph is rebuilt), and
    the static check that finds all 14 average pools excluding padding, and names one that
    counts it."""
    import onnx

    from porting.onnx.export import export_weights
    from porting.onnx.graph import check_average_pools
    from porting.verify.goldens import GoldenRecorder, SourceInfo

    source = SourceInfo(str(v4.checkpoint), {}, 1001, True, False, "float32", "inception_v4")
    recorder = GoldenRecorder(tmp_path / "goldens.h5", v4.images, photos[0], source)
    recorder.recording(lambda start, stop: {name: v4.tf[10][name][start:stop]
                                            for name in ("Logits", "AuxLogits")})(0, 10)
    goldens = recorder.finish()
    exported = export_weights(v4.files["1001"], tmp_path / "inception_v4.onnx").written.path
    report = tmp_path / "report.json"
    result = _run("verify", "--goldens", goldens, "--weights", exported, "--json", report)
    assert result.exit_code == 0, result.output
    assert assert_onnx_report_passes(report)["average_pools"]["count"] == 14

    model = onnx.load(exported)
    node = next(n for n in model.graph.node if n.op_type == "AveragePool")
    next(a for a in node.attribute if a.name == "count_include_pad").i = 1
    count, findings = check_average_pools(model)
    assert count == 14 and [f.node for f in findings] == [node.name]
    assert "/features.6/branch3/" in node.name  # Mixed_5b's pool


def test_the_release_folder_is_byte_reproducible(v4, tmp_path):
    """``port-weights release`` twice: the same folder, byte for byte."""
    assert_release_is_reproducible(v4.checkpoint, tmp_path)

