"""TF-Slim's VGG-16 and VGG-19: checkpoints that TF-Slim's own ``vgg_16``/``vgg_19`` writes
(random weights, classifier whitened on the photos, V1 format as the releases, global_step
included) port through the pipeline and match TF-Slim's logits on the real photos, and the
ported files load strictly into torchvision's ``vgg16``/``vgg19`` and compute the same logits.

VGG-16 carries the full set (batch 1 and 10, the fc6 negative control, ``verify --float64``
per end point, a sabotaged file, ``--fold-bn``, ``deploy_model``, goldens recorded on one photo
and verified, the ONNX export verified in ONNX Runtime and OpenVINO); VGG-19, the same definition
with more convs, is ported, checked at batch 1 and 10 and loaded into torchvision (suite time:
each synthetic checkpoint and port is ~550 MB). Each architecture's tests form one xdist group
(conftest), so its TF-Slim side is built once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from models import deploy_model
from models.spec import architecture_of_state_dict, get_architecture
from models.vgg import model as vgg_model
from models.vgg.spec import ConvAsLinear
from porting.cli import main
from porting.convert import PortOptions
from porting.pipeline import port_checkpoint
from porting.releases.registry import load_registry
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from porting.verify.photos import load_photos
from porting.verify.report import Report
from porting.verify.torch_runner import compare_end_points
from porting.weights import load_ported

from conftest import BATCH_1_IMAGES
from taps_tools import TAP_IMAGES, check_taps, graph_tensors
from models.third_party import torchvision_models
from onnx_tools import assert_onnx_report_passes
from release_tools import assert_release_is_reproducible

ARCHS = ["vgg_16", "vgg_19"]
FULL = "vgg_16"  # the architecture every check runs on
END_POINT_IMAGES = 2  # the sabotaged file's per-end-point comparison


@dataclasses.dataclass
class Case:
    spec: object
    checkpoint: Path
    images: np.ndarray    # the 10 photos, VGG-preprocessed (NHWC)
    reference: dict       # TF-Slim's side (_tf_slim_side)
    weights: Path         # the port

    @functools.cached_property
    def model(self):
        """The port, loaded once (550 MB); a test that changes it puts it back."""
        return load_ported(self.weights)


def _tf_slim_side(spec, folder: Path) -> tuple[Path, np.ndarray, dict]:
    """The photos, a synthetic checkpoint written by TF-Slim's own net (V1, as the releases),
    and the restored graph's logits at batch 10 ("logits/10") and at batch 1 on the first
    BATCH_1_IMAGES photos ("logits/1"); for VGG-16 also every end point of END_POINT_IMAGES
    photos ("end_points/<name>")."""
    oracle = spec.oracle_module()
    images = load_photos(config=spec.eval)[1]
    checkpoint = oracle.build_synthetic_checkpoint(folder / f"{spec.name}.ckpt", images,
                                                   v1_format=True)
    reference = oracle.Reference.for_checkpoint(checkpoint)
    try:
        arrays = {"logits/10": reference(images, ("Logits",))["Logits"],
                  "logits/1": np.concatenate([reference(images[i:i + 1], ("Logits",))["Logits"]
                                              for i in range(BATCH_1_IMAGES)])}
        arrays.update({f"taps/{name}": value for name, value in graph_tensors(
            reference, images[:TAP_IMAGES], spec.taps.tensors()).items()})
        if spec.name == FULL:
            out = reference(images[:END_POINT_IMAGES], spec.end_points)
            arrays.update({f"end_points/{name}": value for name, value in out.items()})
    finally:
        reference.close()
    return checkpoint, images, arrays


def test_taps_are_tf_slims_tensors_by_name(vgg):
    """Every conv's and fc's ReLU, every pool, fc8's squeeze, fetched by name from TF-Slim's
    graph; neighbour controls fail."""
    tf = {key[len("taps/"):]: value for key, value in vgg.reference.items()
          if key.startswith("taps/")}
    assert check_taps(vgg.model, vgg.spec, vgg.images[:TAP_IMAGES], tf) >= 5


@pytest.fixture(scope="module", params=ARCHS)
def vgg(request, tmp_path_factory):
    spec = get_architecture(request.param)
    folder = tmp_path_factory.mktemp(spec.name)
    checkpoint, images, reference = _tf_slim_side(spec, folder)
    result = port_checkpoint(checkpoint, folder / "port" / f"{spec.name}.pth", PortOptions())
    yield Case(spec, checkpoint, images, reference, result.written.path)
    shutil.rmtree(folder)  # ~1.1 GB: the checkpoint and its port


ONLY_FULL = pytest.mark.parametrize("vgg", [FULL], indirect=True)


def _logits(model, images: np.ndarray, batch: int) -> np.ndarray:
    return torch_outputs(model, images, batch)["Logits"]


@contextlib.contextmanager
def changed(parameter: torch.nn.Parameter, value: torch.Tensor):
    """``parameter`` holding ``value`` for the block, its own value again after it."""
    kept = parameter.detach().clone()
    with torch.no_grad():
        parameter.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            parameter.copy_(kept)


def test_port_matches_tf_slim(vgg):
    model = vgg.model
    manifest = json.loads(vgg.weights.with_suffix(".json").read_text())
    assert manifest["variables"]["skipped"] == {"global_step": "training counter"}
    assert manifest["variables"]["mapped_count"] == 2 * len(vgg.spec.layers)  # weights, biases
    tf_logits = vgg.reference["logits/10"]
    checks = [(10, vgg.images, tf_logits)]
    checks.append((1, vgg.images[:BATCH_1_IMAGES], vgg.reference["logits/1"]))  # one by one
    for batch, images, reference in checks:
        parity = compare(_logits(model, images, batch), reference)
        print(f"{vgg.spec.name} batch {batch}: {parity}")
        assert parity.passed, parity
        assert parity.top1_agree == parity.top5_agree == len(images)
    assert len(set(tf_logits.argmax(1))) >= 6  # distinct classes: can fail


def test_strict_load_into_torchvision(vgg):
    """The file is torchvision's ``vgg16``/``vgg19`` state dict: loaded strictly into a model
    nobody here wrote, it computes TF-Slim's logits."""
    net = getattr(torchvision_models(), vgg.spec.torchvision_keys)()
    net.load_state_dict(torch.load(vgg.weights, weights_only=True), strict=True)
    parity = compare(_logits(net.eval(), vgg.images, 10), vgg.reference["logits/10"])
    print(f"torchvision {vgg.spec.torchvision_keys} batch 10: {parity}")
    assert parity.passed, parity
    assert parity.top1_agree == parity.top5_agree == len(vgg.images)


def _tf_order(weight: torch.Tensor) -> torch.Tensor:
    """fc6's Linear weight as TF's kernel would give it flattened in TF's (height, width,
    channel) order: HWIO [7, 7, 512, 4096] reshaped to [25088, 4096] and transposed, the
    common mistake (the right order is torch's: channel, height, width)."""
    kernel = weight.reshape(4096, 512, 7, 7).permute(2, 3, 1, 0)  # back to TF's HWIO
    return kernel.reshape(-1, 4096).T.contiguous()


@ONLY_FULL
def test_fc6_flattened_in_tf_order_fails_by_far(vgg):
    fc6 = vgg.model.classifier[0].weight
    with changed(fc6, _tf_order(fc6)):
        logits = _logits(vgg.model, vgg.images, 10)
    for batch, reference in (10, vgg.reference["logits/10"]), (1, vgg.reference["logits/1"]):
        parity = compare(logits[:len(reference)], reference)  # per image: batch 1's photos too
        print(f"fc6 in TF's flattening order, vs TF at batch {batch}: {parity}")
        assert not parity.passed
        assert parity.max_abs_diff > 100 * parity.tolerance


@ONLY_FULL
def test_verify_float64_and_a_sabotaged_file(vgg, tmp_path):
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", "--src", str(vgg.checkpoint), "--weights",
                                       str(vgg.weights), "--float64", "--count", "1",
                                       "--json", str(report)])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert list(data["end_points"]) == list(vgg.spec.end_points)
    assert "vgg_16/conv3/conv3_3" in data["end_points"] and "vgg_16/pool5" in data["end_points"]
    worst = max(p["relative_error"] for p in data["end_points"].values())
    print(f"verify --float64: worst relative error {worst:.3g} over {len(data['end_points'])} "
          "end points")
    assert data["passed"] and worst <= 1e-10

    # a sabotaged file (conv3_2's weights 5% too large), against TF-Slim's end points
    conv3_2 = vgg.model.features[12].weight
    report = Report(None, "TF-Slim", ["a", "b"], "float32", vgg.spec.name)
    with changed(conv3_2, conv3_2 * 1.05):
        report.end_points = compare_end_points(
            vgg.model, vgg.images[:END_POINT_IMAGES], lambda start, stop: {
                name: vgg.reference[f"end_points/{name}"][start:stop]
                for name in vgg.spec.end_points})
    passed = [name for name, parity in report.end_points.items() if parity.passed]
    assert passed == list(vgg.spec.end_points[:7])  # up to conv3_1: the float32 bounds hold
    assert report.first_divergence == "vgg_16/conv3/conv3_2"
    assert "first divergence at vgg_16/conv3/conv3_2" in report.verdict()
    print(report.verdict())


@ONLY_FULL
def test_fold_bn_writes_the_same_file_and_deploy_model_matches(vgg, tmp_path):
    """VGG has no batch norm: ``--fold-bn`` ports (nothing to fold) to the very same bytes, and
    the manifest says nothing was folded; ``deploy_model`` computes TF-Slim's logits."""
    result = CliRunner().invoke(main, ["--src", str(vgg.checkpoint),
                                       "--dst", str(tmp_path / "folded.pth"), "--fold-bn"])
    assert result.exit_code == 0, result.output
    (folded,) = tmp_path.glob("folded-*.pth")
    assert folded.read_bytes() == vgg.weights.read_bytes()
    manifest = json.loads(folded.with_suffix(".json").read_text())
    assert manifest["options"]["fold_bn"] is False and manifest["options"]["aux"] is False
    folded.unlink()

    images = vgg.images[:BATCH_1_IMAGES]
    with torch.inference_mode():
        deployed = deploy_model(vgg.model)
        fast = deployed(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    parity = compare(fast, vgg.reference["logits/10"][:BATCH_1_IMAGES])
    print(f"deploy_model: {parity}")
    assert parity.passed, parity


# --- cheap checks, no checkpoint ------------------------------------------------------------

# torchvision's vgg16 / vgg19 (its docs' "num_params"), the same layers
PUBLISHED_PARAMETERS = {"vgg_16": 138_357_544, "vgg_19": 143_667_240}


@pytest.mark.parametrize("name", ARCHS)
def test_parameter_counts_and_keys_are_torchvisions(name):
    spec = get_architecture(name)
    assert spec.parameter_count(1000, aux=False) == PUBLISHED_PARAMETERS[name]
    with torch.device("meta"):
        net = getattr(torchvision_models(), spec.torchvision_keys)()
    assert list(spec.target_layout(1000, aux=False).items()) == [
        (key, tuple(value.shape)) for key, value in net.state_dict().items()]
    found, options = architecture_of_state_dict(spec.target_layout(1000, aux=False).items())
    assert found is spec and options == {"num_classes": 1000, "aux_logits": False,
                                         "fold_bn": False}


def test_conv_as_linear_is_the_conv_and_tf_order_is_not():
    """The kind's transform on a small kernel: the Linear over torch's flattening computes the
    VALID conv whose kernel covers the map; TF's flattening order does not."""
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)  # HWIO
    x = torch.from_numpy(rng.normal(size=(2, 4, 3, 3)).astype(np.float32))
    tensors = ConvAsLinear().tensors("fc", {"weight": kernel, "bias": np.zeros(5, "<f4")},
                                     folded=False, drop=0)
    assert tensors["fc.weight"].shape == (5, 36) and tensors["fc.weight"].flags.c_contiguous
    conv = F.conv2d(x, torch.from_numpy(kernel).permute(3, 2, 0, 1))[:, :, 0, 0]
    linear = F.linear(torch.flatten(x, 1), torch.from_numpy(tensors["fc.weight"]))
    assert torch.allclose(conv, linear, atol=1e-5)
    wrong = F.linear(torch.flatten(x, 1), torch.from_numpy(kernel.reshape(36, 5).T.copy()))
    assert not torch.allclose(conv, wrong, atol=1e-1)


def test_vgg_models_refuse_an_aux_head_and_maps_fc6_cannot_take():
    with pytest.raises(ValueError, match="no AuxLogits"):
        vgg_model.VGG16(aux_logits=True)
    model = vgg_model.VGG16(device="meta")
    assert model(torch.empty(1, 3, 255, 255, device="meta")).shape == (1, 1000)
    with pytest.raises(ValueError, match="7x7 pool5 map .* got 6x6"):
        model(torch.empty(1, 3, 192, 192, device="meta"))


@pytest.mark.parametrize("name", ARCHS)
def test_registry_entry_fits_its_architecture(name):
    release, spec = load_registry()[name], get_architecture(name)
    assert release.architecture == name and release.format == "V1"
    assert release.checkpoint == f"{name}.ckpt" and release.members == (release.checkpoint,)
    assert release.num_classes == spec.eval.num_classes == 1000 and not release.aux_logits
    assert release.background_class is None and spec.eval.label_offset == 0
    assert release.url == f"http://download.tensorflow.org/models/{name}_2016_08_28.tar.gz"


# --- goldens and the ONNX export (VGG-16) -------------------------------------------------------

def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _sabotaged(vgg, folder: Path) -> Path:
    """The port with conv3_2's weights 5% too large, as a file (torch.save)."""
    state = torch.load(vgg.weights, weights_only=True)
    state["features.12.weight"] *= 1.05
    torch.save(state, folder / "sabotaged.pth")
    return folder / "sabotaged.pth"


@ONLY_FULL
def test_goldens_record_tf_slims_end_points_and_verify_the_port(vgg, tmp_path):
    """``verify --src --record-goldens`` on one photo (VGG-16's maps: ~36 MB of goldens a
    photo) stores what TF-Slim's graph computes (the fixture's own run of it, a separate
    session, at batch 1); ``verify --goldens`` passes the port at every end point and names
    conv3_2 on a file whose conv3_2 is 5% off."""
    from porting.verify.goldens import Goldens

    goldens = tmp_path / "goldens.h5"
    result = _run("verify", "--src", vgg.checkpoint, "--count", 1, "--record-goldens", goldens)
    assert result.exit_code == 0, result.output
    recorded = Goldens(goldens)
    try:
        assert recorded.end_points == vgg.spec.end_points
        assert np.array_equal(recorded.inputs, vgg.images[:1])
        stored = recorded.reference(0, 1)
    finally:
        recorded.close()
    assert np.allclose(stored["Logits"], vgg.reference["logits/1"][:1], rtol=0, atol=1e-4 * max(
        1, np.abs(stored["Logits"]).max()))
    for name in vgg.spec.end_points[:-1]:  # batch 2 there, batch 1 here: float32 rounding
        reference = vgg.reference[f"end_points/{name}"][:1]
        assert stored[name].shape == reference.shape, name
        bound = 1e-3 * max(1, np.abs(reference).max())
        assert np.abs(stored[name] - reference).max() <= bound, name

    result = _run("verify", "--goldens", goldens, "--weights", vgg.weights)
    assert result.exit_code == 0, result.output
    assert f"PASS: {len(vgg.spec.end_points)} end points" in result.output, result.output
    result = _run("verify", "--goldens", goldens, "--weights", _sabotaged(vgg, tmp_path))
    assert result.exit_code == 1, result.output
    assert "first divergence at vgg_16/conv3/conv3_2" in result.output, result.output


def _fc6_in_tf_order(model) -> None:
    """The exported graph's fc6 weight [4096, 25088] re-flattened in TF's (height, width,
    channel) order (see ``_tf_order``), edited in place."""
    from onnx import numpy_helper

    (fc6,) = [t for t in model.graph.initializer if tuple(t.dims) == (4096, 25088)]
    wrong = _tf_order(torch.from_numpy(numpy_helper.to_array(fc6).copy())).numpy()
    fc6.CopyFrom(numpy_helper.from_array(wrong, fc6.name))


@ONLY_FULL
def test_onnx_export_passes_verify_in_both_engines_and_fc6_in_tf_order_fails(vgg, tmp_path):
    """The exported graph in ONNX Runtime and OpenVINO at batch 1 and 10 against TF-Slim's
    logits on the 10 photos (the fixture's, as goldens: no TF graph is rebuilt); the same graph
    with fc6 flattened in TF's order fails in ONNX Runtime on the first photo (negative
    control)."""
    import onnx

    from porting.onnx.export import export_weights
    from porting.verify.goldens import GoldenRecorder, SourceInfo
    from porting.verify.photos import load_photos

    names = load_photos(config=vgg.spec.eval)[0]
    source = SourceInfo(str(vgg.checkpoint), {}, 1000, False, False, "float32", vgg.spec.name)
    recorder = GoldenRecorder(tmp_path / "goldens.h5", vgg.images, names, source)
    recorder.recording(lambda start, stop: {"Logits": vgg.reference["logits/10"][start:stop]})(
        0, len(vgg.images))
    goldens = recorder.finish()
    exported = export_weights(vgg.weights, tmp_path / "vgg_16.onnx").written.path
    report = tmp_path / "report.json"
    result = _run("verify", "--goldens", goldens, "--weights", exported, "--json", report)
    assert result.exit_code == 0, result.output
    assert_onnx_report_passes(report)

    model = onnx.load(exported)
    _fc6_in_tf_order(model)
    wrong = tmp_path / "fc6_tf_order.onnx"
    onnx.save(model, wrong)
    del model
    result = _run("verify", "--goldens", goldens, "--weights", wrong, "--engine", "onnxruntime",
                  "--count", 1)
    assert result.exit_code == 1, result.output
    verdict = result.stderr.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: ONNX Runtime") and "first divergence at Logits" in verdict, \
        verdict


def test_the_release_folder_is_byte_reproducible(vgg, tmp_path):
    """``port-weights release`` twice: the same folder, byte for byte."""
    assert_release_is_reproducible(vgg.checkpoint, tmp_path)

