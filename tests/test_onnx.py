"""``port-weights export`` and ``verify --weights NAME.onnx``: the exported graphs of both
architectures in ONNX Runtime and OpenVINO against TF's outputs on the photos (at batch 1 and
10), the static average-pool check, reproducible bytes, and negative controls for each claim.

The references are the session's TF outputs (TF-Slim's graph for Inception v3, Keras + TF's aux
head for Inception-ResNet-v2) stored as golden files: no TF graph is rebuilt here (``--src``
shares ``porting.verify.reference.open_reference`` with the .pth tests).
"""
from __future__ import annotations

import json
import shutil

import h5py

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from blocked_imports import CLI, TENSORFLOW, TORCH, run_blocked
from porting.cli import main
from porting.verify.goldens import GoldenRecorder, SourceInfo
from porting.onnx.export import export_weights
from porting.onnx.graph import check_average_pools, read_exported


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _goldens(path, photos, end_points: dict, checkpoint, architecture: str):
    """A golden file holding TF outputs the session already computed."""
    names, images = photos
    source = SourceInfo(str(checkpoint), {}, 1001, "AuxLogits" in end_points, False, "float32",
                        architecture)
    recorder = GoldenRecorder(path, images[:len(names)], names, source)
    recorder.recording(lambda start, stop: {k: v[start:stop] for k, v in end_points.items()})(
        0, len(images))
    return recorder.finish()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, photos, ported_files, tf_outputs, synthetic_ckpt,
             irv2_ported_files, irv2_reference, irv2):
    """{architecture: (export result, goldens)}: Inception v3 exported from its 1000-class file
    (background dropped), Inception-ResNet-v2 from its 1001-class file (background kept)."""
    out = tmp_path_factory.mktemp("onnx")
    cases = {"inception_v3": (ported_files["1000"], tf_outputs[10], synthetic_ckpt),
             "inception_resnet_v2": (irv2_ported_files["1001"], irv2_reference[10], irv2[0])}
    made = {}
    for arch, (weights, reference, checkpoint) in cases.items():
        result = export_weights(weights, out / arch / f"{arch}.onnx")
        goldens = _goldens(out / f"{arch}_goldens.h5", photos,
                           {k: reference[k] for k in ("Logits", "AuxLogits")}, checkpoint, arch)
        made[arch] = result, goldens
    return made


@pytest.fixture(scope="module")
def verified(exported, tmp_path_factory):
    """{architecture: (CLI result, JSON report)} of verify in every engine."""
    out = tmp_path_factory.mktemp("onnx_reports")
    done = {}
    for arch, (result, goldens) in exported.items():
        report = out / f"{arch}.json"
        cli = _run("verify", "--goldens", goldens, "--weights", result.written.path,
                   "--json", report)
        done[arch] = cli, json.loads(report.read_text())
    return done


@pytest.mark.parametrize("arch", ["inception_v3", "inception_resnet_v2"])
def test_exported_graph_passes_verify_in_every_engine_at_batch_1_and_10(arch, verified):
    cli, report = verified[arch]
    assert cli.exit_code == 0, cli.output
    assert report["passed"] and report["format"] == "onnx"
    assert report["average_pools"]["count"] >= 1 and not report["average_pools"]["counting_padding"]
    labels = list(report["runs"])
    assert len(labels) == 4, labels
    for engine in ("ONNX Runtime", "OpenVINO"):
        for batch in (1, 10):
            assert sum(label.startswith(engine) and label.endswith(f"batch {batch}")
                       for label in labels) == 1, (engine, batch, labels)
    for label, run in report["runs"].items():
        logits = run["end_points"]["Logits"]
        assert logits["passed"] and logits["top1_agree"] == logits["top5_agree"] == 10
        assert logits["max_abs_diff"] <= 1e-4 * logits["scale"]
        assert "AuxLogits" in run["skipped"]
        print(f"{arch} {label}: Logits max |diff| {logits['max_abs_diff']:.3g} "
              f"(bound {logits['bound']:.3g})")
    assert cli.output.strip().splitlines()[-1].startswith("PASS: 4 runs")


def test_verify_records_the_parity_in_the_exports_manifest(exported, verified):
    result, _ = exported["inception_v3"]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["parity"]["passed"] and manifest["parity"]["images"] == 10
    assert "ONNX Runtime" in manifest["parity"]["reference"]


def test_export_is_folded_self_describing_and_reproducible(exported, ported_files, tmp_path):
    result, _ = exported["inception_v3"]
    path = result.written.path
    assert path.name == f"inception_v3-{result.written.sha256[:8]}.onnx"
    again = export_weights(ported_files["1000"], tmp_path / "inception_v3.onnx")
    assert again.written.sha256 == result.written.sha256
    assert again.written.path.read_bytes() == path.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([  # nothing else left behind
        again.written.path.name, again.manifest.name])

    graph = read_exported(path)
    assert graph.metadata["num_classes"] == "1000" and graph.metadata["label_offset"] == "0"
    assert graph.metadata["background_class"].startswith("dropped")
    assert graph.metadata["preprocessing"].startswith("TF-Slim inception_preprocessing")
    assert graph.outputs == ("Logits",)
    assert graph.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert not any(n.op_type == "BatchNormalization" for n in graph.model.graph.node)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["output"]["sha256"] == result.written.sha256
    assert manifest["options"]["fold_bn"] and not manifest["options"]["aux"]
    assert manifest["source"]["ported_from"]["checkpoint"] == "adv_inception_v3.ckpt"
    kept = read_exported(exported["inception_resnet_v2"][0].written.path)
    assert kept.metadata["label_offset"] == "1" and kept.metadata["background_class"].startswith("kept")


def _edited(path, tmp_path, edit):
    model = onnx.load(path)
    edit(model)
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    return edited


def _count_padding(model):
    node = next(n for n in model.graph.node if n.op_type == "AveragePool")
    next(a for a in node.attribute if a.name == "count_include_pad").i = 1


def test_a_pool_that_counts_padding_is_caught_statically_and_by_parity(exported, tmp_path):
    """Negative control: one AveragePool switched to count_include_pad=1 (timm's, TensorRT's
    and onnx2torch's Inception bug) is named by the static check and fails the Logits bound."""
    result, goldens = exported["inception_v3"]
    good = read_exported(result.written.path).model
    assert check_average_pools(good) == (9, [])
    wrong = _edited(result.written.path, tmp_path, _count_padding)
    count, findings = check_average_pools(onnx.load(wrong))
    assert count == 9 and [f.node for f in findings] == ["/Mixed_5b/pool/AveragePool"]
    cli = _run("verify", "--goldens", goldens, "--weights", wrong, "--engine", "onnxruntime")
    assert cli.exit_code == 1
    verdict = cli.stderr.strip()
    assert len(verdict.splitlines()) == 1 and verdict.startswith("FAIL: 1 of 9 average pools")
    assert "/Mixed_5b/pool/AveragePool: count_include_pad=1" in verdict
    assert "batch 1: first divergence at Logits" in verdict


def test_verify_on_goldens_needs_neither_torch_nor_tensorflow(exported, tmp_path):
    """What a serving box has: an engine, numpy and h5py. The graph (a copy, with its manifest,
    so the shared one's parity stays 10 images') passes on two images in every engine with
    torch and TensorFlow unimportable, its parity recorded; goldens whose Logits are 1% off
    (a graph/goldens mismatch) fail in the same mode."""
    result, goldens = exported["inception_v3"]
    graph = shutil.copy(result.written.path, tmp_path)
    shutil.copy(result.manifest, tmp_path)
    blocked = TORCH + TENSORFLOW
    passed = run_blocked(blocked, CLI, "verify", "--goldens", goldens, "--weights", graph,
                         "--count", 2)
    assert passed.returncode == 0, passed.stderr
    assert "Logits parity recorded: passed" in passed.stdout
    assert passed.stdout.strip().splitlines()[-1].startswith("PASS: 4 runs"), passed.stdout

    mismatched = shutil.copy(goldens, tmp_path / "mismatched.h5")
    with h5py.File(mismatched, "a") as f:
        f["end_points/Logits"][...] *= 1.01
    failed = run_blocked(blocked, CLI, "verify", "--goldens", mismatched, "--weights", graph,
                         "--count", 2, "--engine", "onnxruntime")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback" not in failed.stderr
    verdict = failed.stderr.strip().splitlines()[-1]
    assert verdict.startswith("FAIL: ONNX Runtime") and "batch 1: first divergence at Logits" \
        in verdict, verdict


def test_a_pool_fed_by_an_explicit_pad_is_caught():
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    graph = helper.make_graph([helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
                               helper.make_node("AveragePool", ["p"], ["y"], name="pool",
                                                kernel_shape=[3, 3])], "g", [x], [y], [pads])
    count, findings = check_average_pools(helper.make_model(graph))
    assert count == 1 and "fed by Pad pad" in str(findings[0])


def test_per_end_point_export_names_the_first_diverging_layer(ported_files, tf_model, photos,
                                                               synthetic_ckpt, tmp_path):
    """``export --end-points`` + a sabotaged Mixed_6c weight, against TF-Slim's end points on
    one photo (ONNX Runtime): the 12 end points before Mixed_6c pass and Mixed_6c is named as
    the first divergence."""
    from models.spec import get_architecture

    spec = get_architecture("inception_v3")
    names, images = photos
    goldens = _goldens(tmp_path / "goldens.h5", (names[:1], images[:1]),
                       tf_model(images[:1], spec.end_points), synthetic_ckpt, spec.name)
    result = export_weights(ported_files["fold-bn"], tmp_path / "out" / "ends.onnx",
                            end_points=True)
    assert result.outputs[0] == "Conv2d_1a_3x3" and result.outputs[-1] == "Logits"
    assert "AuxLogits" not in result.outputs

    def sabotage(model):
        weight = next(t for t in model.graph.initializer
                      if t.name.endswith("Mixed_6c.branch1x1.conv.weight"))
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.05, weight.name))

    cli = _run("verify", "--goldens", goldens, "--engine", "onnxruntime",
               "--weights", _edited(result.written.path, tmp_path, sabotage))
    assert cli.exit_code == 1, cli.output
    assert "batch 1: first divergence at Mixed_6c" in cli.stderr
    table = cli.stdout.split("Mixed_6c ")[0]
    assert table.count(" ok") == 12 and "FAIL" not in table, cli.stdout


@pytest.mark.parametrize("args, message", [
    (["export", "--weights", "{pth}", "--dst", "{tmp}/out.pth"], "output name must end in .onnx"),
    (["export", "--weights", "{tmp}/missing.pth", "--dst", "{tmp}/out.onnx"], "no such weights"),
    (["export", "--weights", "{onnx}", "--dst", "{tmp}/out.onnx"], "is an ONNX graph already"),
    (["verify", "--goldens", "{goldens}", "--weights", "{tmp}/junk.onnx"], "not an ONNX model"),
    (["verify", "--goldens", "{goldens}", "--weights", "{foreign}"], "no tf_porting.architecture"),
])
def test_bad_input_is_one_line_naming_the_file(args, message, exported, ported_files, tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07garbage")
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])), foreign)
    result, goldens = exported["inception_v3"]
    values = {"pth": ported_files["1000"], "tmp": tmp_path, "onnx": result.written.path,
              "goldens": goldens, "foreign": foreign}
    before = sorted(tmp_path.iterdir())
    cli = _run(*(a.format(**values) for a in args))
    assert cli.exit_code == 1, cli.output
    assert len(cli.stderr.splitlines()) == 1 and message in cli.stderr, cli.stderr
    assert "Traceback" not in cli.output
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("args", [
    ["--weights", "w.onnx", "--float64"],
    ["--weights", "w.pth", "--engine", "onnxruntime"],
])
def test_onnx_only_and_pth_only_options_are_usage_errors(args):
    cli = _run("verify", "--goldens", "g.h5", *args)
    assert cli.exit_code == 2, cli.output
