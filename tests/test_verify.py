"""``port-weights verify``: every end point of every output variant against TF-Slim, and the
first diverging end point named on sabotaged files."""
import json

import pytest
import torch
from click.testing import CliRunner

from blocked_imports import CLI, TENSORFLOW, TORCH, run_blocked
from models.inception_v3.spec import SPEC
from porting.cli import main
from porting.verify.torch_runner import compare_end_points
from porting.weights import load_ported

END_POINTS = SPEC.end_points

IMAGES = 2  # enough for every end point; the 10-image logits are test_parity's job


@pytest.fixture(scope="session")
def tf_end_points(tf_model, photos):
    """TF-Slim's end points on the first photos, computed once: a ``Reference``."""
    computed = tf_model(photos[1][:IMAGES], END_POINTS)
    return lambda start, stop: {name: value[start:stop] for name, value in computed.items()}


def _verify(model, photos, tf_end_points):
    dropped = 1 if model.num_classes == 1000 else 0
    return compare_end_points(model, photos[1][:IMAGES], tf_end_points, dropped=dropped)


def _first_divergence(results) -> str | None:
    return next((name for name, parity in results.items() if not parity.passed), None)


@pytest.mark.parametrize("variant", ["1001", "1000", "no-aux", "fold-bn"])
def test_every_variant_passes(variant, ported_files, photos, tf_end_points):
    results = _verify(load_ported(ported_files[variant]), photos, tf_end_points)
    expected = [n for n in END_POINTS if variant != "no-aux" or n != "AuxLogits"]
    assert list(results) == expected
    for name, parity in results.items():
        print(f"{variant} {name}: {parity} (relative {parity.relative_error:.2g})")
        assert parity.passed, f"{name}: {parity}"
        # Margin: the honest port stays well inside every bound.
        assert parity.max_abs_diff < parity.tolerance / 2, name


def _sabotaged(path, tmp_path, edit):
    state_dict = torch.load(path, weights_only=True)
    edit(state_dict)
    out = tmp_path / "sabotaged.pth"
    torch.save(state_dict, out)
    return out


def test_scaled_moving_variance_is_found_at_mixed_6c(ported_files, photos, tf_end_points, tmp_path):
    def edit(sd):
        sd["Mixed_6c.branch1x1.bn.running_var"] *= 4

    model = load_ported(_sabotaged(ported_files["1001"], tmp_path, edit))
    assert _first_divergence(_verify(model, photos, tf_end_points)) == "Mixed_6c"


def test_swapped_branches_are_found_at_mixed_5c(ported_files, photos, tf_end_points, tmp_path):
    def edit(sd):  # two same-shaped 1x1 convs (256 -> 64) of Mixed_5c, with their batch norms
        for key in [k for k in sd if k.startswith("Mixed_5c.branch1x1.")]:
            other = key.replace("branch1x1", "branch3x3dbl_1")
            sd[key], sd[other] = sd[other], sd[key]

    model = load_ported(_sabotaged(ported_files["1000"], tmp_path, edit))
    assert _first_divergence(_verify(model, photos, tf_end_points)) == "Mixed_5c"


def test_padding_counting_pools_are_found_at_mixed_5b(ported_files, photos, tf_end_points):
    model = load_ported(ported_files["fold-bn"])
    for module in model.modules():
        if isinstance(module, torch.nn.AvgPool2d):
            module.count_include_pad = True  # timm's / torchvision's pooling
    results = _verify(model, photos, tf_end_points)
    assert _first_divergence(results) == "Mixed_5b"
    assert results["Mixed_5b"].relative_error > 100 * results["Mixed_5b"].relative_tolerance


def test_class_count_must_fit_the_checkpoint():
    from porting.errors import PortError
    from porting.verify.goldens import SourceInfo
    from porting.verify.reference import class_layout

    def source(num_classes, architecture="inception_v3"):
        return SourceInfo("ckpt", {}, num_classes, True, False, "float32", architecture)

    assert class_layout("f.pth", SPEC, 1000, source(1001)).dropped == 1
    assert class_layout("f.pth", SPEC, 1001, source(1001)).dropped == 0
    with pytest.raises(PortError, match="^f.pth: has 1000 classes; it cannot be a port of ckpt "
                                        r"\(10 classes\)$"):
        class_layout("f.pth", SPEC, 1000, source(10))
    with pytest.raises(PortError, match="^f.pth: is Inception v3; it cannot be a port of ckpt "
                                        r"\(Inception-ResNet-v2\)$"):
        class_layout("f.pth", SPEC, 1001, source(1001, "inception_resnet_v2"))


@pytest.fixture(scope="session")
def goldens(synthetic_ckpt, ported_files, tmp_path_factory):
    """The CLI run end to end on one variant, recording goldens: (result, goldens, report)."""
    out = tmp_path_factory.mktemp("goldens")
    args = ["verify", "--src", str(synthetic_ckpt), "--weights", str(ported_files["1000"]),
            "--count", "1", "--record-goldens", str(out / "goldens.h5"),
            "--json", str(out / "report.json")]
    result = CliRunner().invoke(main, args)
    return result, out / "goldens.h5", json.loads((out / "report.json").read_text())


def test_cli_verify_prints_every_end_point_and_passes(goldens):
    result, _, report = goldens
    assert result.exit_code == 0, result.output
    for name in END_POINTS:
        assert f"\n{name} " in result.output
    assert result.output.strip().splitlines()[-1].startswith("PASS: 21 end points")
    assert report["passed"] and report["first_divergence"] is None
    assert set(report["end_points"]) == set(END_POINTS)
    assert report["end_points"]["Logits"]["top1_agree"] == 1


def test_goldens_hold_inputs_end_points_and_checkpoint_hashes(goldens, synthetic_ckpt):
    from porting.verify.goldens import Goldens
    from porting.write.hashed import sha256_file

    golden = Goldens(goldens[1])
    try:
        assert golden.inputs.shape == (1, 299, 299, 3)
        assert set(golden.end_points) == set(END_POINTS)
        index = synthetic_ckpt.parent / f"{synthetic_ckpt.name}.index"
        assert golden.source.sha256[index.name] == sha256_file(index)
        assert golden.source.num_classes == 1001
    finally:
        golden.close()


def test_goldens_verify_without_tensorflow(goldens, ported_files, tmp_path):
    probe = run_blocked(TENSORFLOW, CLI, "verify", "--goldens", str(goldens[1]),
                                    "--weights", str(ported_files["no-aux"]))
    assert probe.returncode == 0, probe.stderr
    assert "AuxLogits" in probe.stdout and "skipped" in probe.stdout
    assert probe.stdout.strip().splitlines()[-1].startswith("PASS: 20 end points")


def test_goldens_verify_without_tensorflow_fails_on_a_sabotaged_file(goldens, ported_files,
                                                                      tmp_path):
    def edit(sd):
        sd["Mixed_6c.branch1x1.bn.running_var"] *= 4

    bad = _sabotaged(ported_files["1000"], tmp_path, edit)
    probe = run_blocked(TENSORFLOW, CLI, "verify", "--goldens", str(goldens[1]),
                                    "--weights", str(bad))
    assert probe.returncode == 1
    assert probe.stderr.strip().startswith("FAIL: first divergence at Mixed_6c"), probe.stderr
    assert len(probe.stderr.strip().splitlines()) == 1


def test_tensorflow_is_really_blocked(tmp_path):
    probe = run_blocked(TENSORFLOW, "import tensorflow")
    assert probe.returncode != 0 and "tensorflow is blocked" in probe.stderr


# The verification's torch-free core, and what checks an exported graph on goldens.
TORCH_FREE = ("porting.verify.request", "porting.verify.reference", "porting.verify.goldens",
              "porting.verify.parity", "porting.verify.report", "porting.verify.run",
              "porting.verify.photos", "porting.onnx.verify", "porting.cli")


def test_the_verification_core_imports_without_torch_or_tensorflow():
    probe = run_blocked(TORCH + TENSORFLOW, f"import {', '.join(TORCH_FREE)}; "
                        "print(sorted({m.split('.')[0] for m in sys.modules} & "
                        "{'torch', 'tensorflow'}))")
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "[]"
    # the check can fail: the PyTorch runner is refused in the same mode
    probe = run_blocked(TORCH + TENSORFLOW, "import porting.verify.torch_runner")
    assert probe.returncode != 0 and "torch is blocked" in probe.stderr


def test_bad_weights_give_one_line_naming_the_file(tmp_path, goldens):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip")
    result = CliRunner().invoke(main, ["verify", "--goldens", str(goldens[1]), "--weights", str(junk)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {junk}: not a PyTorch weights file")
    assert len(result.output.strip().splitlines()) == 1


def test_bad_goldens_give_one_line_naming_the_file(tmp_path, ported_files):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    result = CliRunner().invoke(main, ["verify", "--goldens", str(junk),
                                       "--weights", str(ported_files["1000"])])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {junk}: not an HDF5 golden file"


def test_verify_records_parity_in_the_manifest(goldens, ported_files):
    from porting.write.manifest import sidecar

    result = goldens[0]
    manifest_path = sidecar(ported_files["1000"], ".json")
    assert f"manifest {manifest_path} (Logits parity recorded: passed)" in result.output
    assert goldens[2]["manifest"] == str(manifest_path)
    parity = json.loads(manifest_path.read_text())["parity"]
    assert parity["passed"] is True and parity["images"] == 1 and parity["top1_agree"] == 1
    assert parity["reference"].startswith("TF-Slim on ") and parity["reference"].endswith("(float32)")


def _with_manifest(weights, manifest_from, sha256=None):
    """Put ``manifest_from``'s manifest beside ``weights`` (its output sha256 replaced)."""
    from porting.write.manifest import sidecar
    from porting.write.hashed import sha256_file

    manifest = json.loads(sidecar(manifest_from, ".json").read_text())
    manifest["output"]["sha256"] = sha256 or sha256_file(weights)
    path = sidecar(weights, ".json")
    path.write_text(json.dumps(manifest))
    return path


def test_failing_verify_records_the_failure_in_the_manifest_and_card(goldens, ported_files,
                                                                     tmp_path):
    def edit(sd):
        sd["fc.weight"] *= 1.01

    bad = _sabotaged(ported_files["1000"], tmp_path, edit)
    manifest_path = _with_manifest(bad, ported_files["1000"])
    card = bad.with_suffix(".md")
    card.write_text("old card\n")
    result = CliRunner().invoke(main, ["verify", "--goldens", str(goldens[1]),
                                       "--weights", str(bad)])
    assert result.exit_code == 1
    assert result.stderr.startswith("FAIL: first divergence at Logits")
    assert f"manifest {manifest_path} (Logits parity recorded: FAILED)" in result.stdout
    parity = json.loads(manifest_path.read_text())["parity"]
    assert parity["passed"] is False and parity["reference"] == f"goldens {goldens[1]} (float32)"
    assert "| Parity | max abs logit diff" in card.read_text()


def test_manifest_of_another_file_is_left_alone(goldens, ported_files, tmp_path):
    weights = tmp_path / "copy.pth"
    weights.write_bytes(ported_files["1000"].read_bytes())
    manifest_path = _with_manifest(weights, ported_files["1000"], sha256="ab" * 32)
    before = manifest_path.read_text()
    result = CliRunner().invoke(main, ["verify", "--goldens", str(goldens[1]),
                                       "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    assert f"manifest not updated: {manifest_path} describes another file" in result.stdout
    assert manifest_path.read_text() == before


@pytest.mark.parametrize("args, message", [
    ([], "give the reference"),
    (["--src", "x.ckpt", "--goldens", "g.h5", "--weights", "w.pth"], "give the reference"),
    (["--goldens", "g.h5"], "nothing to do"),
    (["--goldens", "g.h5", "--weights", "w.pth", "--gradients"], "need TensorFlow"),
])
def test_contradictory_or_empty_requests_are_usage_errors(args, message):
    result = CliRunner().invoke(main, ["verify", *args])
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.stderr and message in result.stderr


def _fake_report(monkeypatch):
    """Make the CLI's verify return a report with an infinite gradient error, running nothing."""
    import porting.verify.run
    from porting.verify.gradients import GradientParity
    from porting.verify.parity import Parity
    from porting.verify.report import Report

    report = Report(
        "w.pth", "goldens g.h5", ["a.png"], "float32", "inception_v3",
        end_points={"Logits": Parity(0.0, 1.0, 1e-4, 1, 1, 1)},
        gradients=GradientParity(float("inf"), 0.1, float("nan"), 1, 1, 0, 1))
    monkeypatch.setattr(porting.verify.run, "run", lambda request, open_weights, progress=None:
                        report)


def test_json_report_is_strict_json_with_null_for_non_finite_numbers(monkeypatch, tmp_path):
    _fake_report(monkeypatch)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["verify", "--goldens", "g.h5", "--weights", "w.pth",
                                       "--json", str(out)])
    assert result.exit_code == 1 and result.stderr.startswith("FAIL: end points agree")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    report = json.loads(out.read_text(), parse_constant=refuse)
    assert report["gradients"]["relative_error"] is None
    assert report["gradients"]["sign_agreement"] is None
    assert report["end_points"]["Logits"]["relative_error"] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary left


def test_unwritable_json_report_is_one_line(monkeypatch, tmp_path):
    _fake_report(monkeypatch)
    out = tmp_path / "no_such_dir" / "report.json"
    result = CliRunner().invoke(main, ["verify", "--goldens", "g.h5", "--weights", "w.pth",
                                       "--json", str(out)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {out}: cannot write")
    assert len(result.stderr.splitlines()) == 1


def _source_info():
    from porting.verify.goldens import SourceInfo

    return SourceInfo("ckpt", {"ckpt.index": "0" * 64}, 1001, True, False, "float32",
                      "inception_v3")


def test_recorder_failing_to_start_leaves_nothing(monkeypatch, tmp_path):
    import numpy as np

    from porting.verify import goldens as goldens_module
    from porting.errors import PortError

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(goldens_module, "_versions", lambda: {})
    monkeypatch.setattr(goldens_module.GoldenRecorder, "_dataset", disk_full)
    path = tmp_path / "goldens.h5"
    with pytest.raises(PortError, match=f"^{path}: cannot write: No space left on device$"):
        goldens_module.GoldenRecorder(path, np.zeros((1, 2, 2, 3), np.float32), ["a"],
                                      _source_info())
    assert list(tmp_path.iterdir()) == []


def test_recorder_failing_to_finish_leaves_nothing(monkeypatch, tmp_path):
    import numpy as np

    from porting.verify import goldens as goldens_module
    from porting.errors import PortError

    monkeypatch.setattr(goldens_module, "_versions", lambda: {})
    path = tmp_path / "goldens.h5"
    path.mkdir()  # the rename into place fails
    recorder = goldens_module.GoldenRecorder(path, np.zeros((1, 2, 2, 3), np.float32), ["a"],
                                             _source_info())
    with pytest.raises(PortError, match=f"^{path}: cannot write: "):
        recorder.finish()
    assert list(tmp_path.iterdir()) == [path] and list(path.iterdir()) == []


@pytest.mark.parametrize("damage, message", [
    (lambda f: f.attrs.__delitem__("checkpoint"), "incomplete golden file: no attribute 'checkpoint'"),
    (lambda f: f.__delitem__("inputs"), "incomplete golden file: no dataset 'inputs'"),
    (lambda f: f.attrs.__setitem__("checkpoint_sha256", "{not json"),
     "not a readable golden file (JSONDecodeError: "),
])
def test_damaged_goldens_give_one_line_and_are_closed(goldens, ported_files, tmp_path, damage,
                                                       message):
    import h5py

    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(goldens[1].read_bytes())
    with h5py.File(damaged, "a") as f:
        damage(f)
    result = CliRunner().invoke(main, ["verify", "--goldens", str(damaged),
                                       "--weights", str(ported_files["1000"])])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {damaged}: {message}"), result.stderr
    assert len(result.stderr.splitlines()) == 1
    h5py.File(damaged, "w").close()  # not left open (h5py refuses to truncate an open file)
