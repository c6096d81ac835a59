"""``port-weights compare`` on synthetic foreign files built here from the fixed synthetic
Inception v3 checkpoint (tests/conftest.py), one per layout: exact copies are at distance 0, a
perturbed tensor is named first, timm's own network differs from TF with TF's weights, and a
hostile pickle is refused unrun. The TF reference is conftest's (``tf_outputs``)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.spec import get_architecture
from models.spec.foreign import ForeignLayout, foreign_layouts, register
from porting.compare.foreign import choose_layout, map_to_ours, read_foreign
from porting.compare.report import Comparison
from porting.compare.run import CompareRequest, compare, run_end_points
from porting.errors import PortError

SPEC = get_architecture("inception_v3")
PERTURBED = "Mixed_6c.branch7x7_2.conv.weight"


@pytest.fixture(scope="module")
def ported(synthetic_ckpt):
    """Our exact port of the synthetic checkpoint, {classes: numpy state dict}."""
    from porting.convert import PortOptions, convert
    from porting.read.open import open_reader

    return {n: convert(open_reader(synthetic_ckpt), PortOptions(num_classes=n)).state_dict
            for n in (1000, 1001)}


def _zoo(tensors: dict) -> dict:
    """The zoo's dict as MMdnn's emitter writes it, built from TF's variables by its naming
    rule (ylhz/tf_to_pytorch_model torch_nets/tf_inception_v3.py): the body's nodes under
    InceptionV3/InceptionV3/, the heads' under InceptionV3/; conv kernels OIHW; batch norms
    {bias, mean, var} (no gamma: no scale)."""
    out = {}
    roles = {"BatchNorm/beta": "bias", "BatchNorm/moving_mean": "mean",
             "BatchNorm/moving_variance": "var"}
    for name, value in tensors.items():
        if not name.startswith("InceptionV3/") or "/" not in name[12:]:
            continue
        scope, leaf = name.rsplit("/", 1)
        head = scope.split("/")[1] in ("Logits", "AuxLogits")
        node_scope = scope if head else "InceptionV3/" + scope
        if leaf in ("weights", "biases"):
            node = out.setdefault(f"{node_scope}/Conv2D", {})
            node["weights" if leaf == "weights" else "bias"] = (
                value.transpose(3, 2, 0, 1) if leaf == "weights" else value)
        else:
            bn_scope, _, part = name.rpartition("/BatchNorm/")
            bn_scope = bn_scope if head else "InceptionV3/" + bn_scope
            out.setdefault(f"{bn_scope}/BatchNorm/FusedBatchNorm", {})[
                roles["BatchNorm/" + part]] = value
    return out


@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory, ported, tensors):
    """{layout: path} of exact copies: timm (.pth), torchvision (.safetensors), Cadene's (.pth,
    fc -> last_linear), the zoo (.npy from TF's variables)."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("foreign")
    ours = {k: torch.from_numpy(v) for k, v in ported[1000].items()}
    torch.save(ours, root / "timm.pth")
    save_file(ours, str(root / "torchvision.safetensors"))
    torch.save({"state_dict": {("last_linear." + k[3:] if k.startswith("fc.") else k): v
                               for k, v in ours.items()}}, root / "cadene.pth")
    np.save(root / "zoo.npy", _zoo(tensors), allow_pickle=True)
    return {"timm": root / "timm.pth", "torchvision": root / "torchvision.safetensors",
            "cadene": root / "cadene.pth", "zoo": root / "zoo.npy"}


def _tensors_only(path, src, layout=None) -> Comparison:
    return compare(CompareRequest(foreign=path, src=src, layout=layout, end_points=False))


@pytest.mark.parametrize("layout", ["timm", "torchvision", "cadene", "zoo"])
def test_an_exact_copy_is_at_distance_zero(layout, foreign_files, synthetic_ckpt):
    found = _tensors_only(foreign_files[layout], synthetic_ckpt, layout)
    guessed = choose_layout(foreign_files[layout], read_foreign(foreign_files[layout]), SPEC)
    # told from the keys (torchvision's Inception v3 keys are timm's: the same map)
    assert guessed.keys == foreign_layouts("inception_v3")[layout].keys
    assert found.weight_distance == 0.0 and found.worst() == []
    assert not found.missing and not found.misshapen and not found.extra
    assert len(found.tensors) == len(foreign_layouts("inception_v3")[layout].keys)
    # the runs not made say why, in the table and the JSON (was "not run: None")
    assert found.weights_run_skipped and found.architecture_note
    assert not any(line.endswith("None") for line in found.table())


@pytest.mark.parametrize("layout", ["timm", "zoo"])
def test_one_perturbed_tensor_is_named_first(layout, foreign_files, synthetic_ckpt, tmp_path):
    tensors = read_foreign(foreign_files[layout])
    theirs = foreign_layouts("inception_v3")[layout].keys[PERTURBED]
    tensors[theirs] = tensors[theirs].copy()
    tensors[theirs][0, 0, 0, 0] += 0.25
    if layout == "zoo":
        tree = {}
        for key, value in tensors.items():
            node, leaf = key.rsplit("/", 1)
            tree.setdefault(node, {})[leaf] = value
        path = tmp_path / "perturbed.npy"
        np.save(path, tree, allow_pickle=True)
    else:
        path = tmp_path / "perturbed.pth"
        torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path)
    found = _tensors_only(path, synthetic_ckpt)
    assert [t.key for t in found.worst()] == [PERTURBED]
    assert found.weight_distance == pytest.approx(0.25, rel=1e-6)
    assert found.to_json()["worst"] == [PERTURBED]


def test_timm_network_differs_from_tf_with_tf_weights(foreign_files, synthetic_ckpt, tf_outputs,
                                                      photos):
    """Weight distance 0; in our network the Logits are TF's (the negative control: the same
    tensors pass), in timm's own (padded average pools) they are not."""
    from models.third_party import torchvision_models

    torchvision_models()  # timm imports torchvision: its CPU-build shim (models/third_party.py)
    path = foreign_files["timm"]
    found = _tensors_only(path, synthetic_ckpt)
    assert found.weight_distance == 0.0
    tensors = read_foreign(path)
    layout = choose_layout(path, tensors, SPEC)
    mapped = map_to_ours(tensors, layout, SPEC.target_layout(1000, True))
    expected = tf_outputs[1]  # TF-Slim's Logits and AuxLogits, first photos
    images = photos[1][:len(expected["Logits"])]
    run_end_points(found, SPEC, mapped, tensors, images,
                   lambda start, stop: {k: v[start:stop] for k, v in expected.items()},
                   dropped=1, names=photos[0][:len(images)], described="TF-Slim")
    ours, theirs = found.weights_run.end_points["Logits"], found.architecture_run.end_points["Logits"]
    assert ours.passed and found.weights_run.end_points["AuxLogits"].passed
    assert not theirs.passed and theirs.max_abs_diff > 100 * theirs.tolerance
    assert "count_include_pad" in found.architecture_note
    report = found.to_json()
    assert report["architecture_run"]["end_points"]["Logits"]["passed"] is False
    assert "Logits max |diff|" in found.verdict()


class Marker:
    """Unpickling this would create the file at ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path, synthetic_ckpt):
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.npy"
    np.save(hostile, np.array({"x": Marker(marker)}, dtype=object), allow_pickle=True)
    with pytest.raises(PortError, match=r"hostile\.npy: refused: its pickle would call "
                                        r"pathlib.*nothing was run"):
        read_foreign(hostile)
    assert not marker.exists()
    from click.testing import CliRunner

    from porting.cli import main

    result = CliRunner().invoke(main, ["compare", "--src", str(synthetic_ckpt),
                                       "--foreign", str(hostile)])
    assert result.exit_code == 1 and not marker.exists()
    assert len(result.output.strip().splitlines()) == 1 and "refused" in result.output
    # the negative control: numpy's own loader does run it
    np.load(hostile, allow_pickle=True)
    assert marker.exists()


def test_a_second_layout_of_the_same_name_is_refused():
    timm = foreign_layouts("inception_v3")["timm"]
    register(timm)  # the same object again: harmless
    twin = ForeignLayout("timm", "inception_v3", "other", 1000, True, {})
    with pytest.raises(ValueError, match="registered twice: timm:inception_v3 and timm:other"):
        register(twin)


@pytest.mark.parametrize("name,model", [
    ("timm/inception_v3", "timm"), ("torchvision/inception_v3", "torchvision"),
    ("timm/inception_resnet_v2", "timm"), ("timm/inception_v4", "timm"),
    ("timm/vgg_16", "timm"), ("torchvision/vgg_19", "torchvision")])
def test_layout_keys_are_the_projects_own(name, model):
    """The keys each timm / torchvision layout maps to are exactly those of the project's own
    model (built on the meta device: no memory), shapes included up to ``reshaped``."""
    from models.third_party import torchvision_models

    tv = torchvision_models()
    layout = foreign_layouts()[name]
    with torch.device("meta"):
        if model == "timm":
            import timm

            kwargs = {"aux_logits": True} if layout.aux else {}
            net = timm.create_model(layout.model, pretrained=False,
                                    num_classes=layout.num_classes, **kwargs)
        else:
            net = getattr(tv, layout.model)(num_classes=layout.num_classes,
                                            **({"aux_logits": True, "init_weights": False}
                                               if layout.aux else {}))
    theirs = {k: tuple(v.shape) for k, v in net.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert set(layout.keys.values()) == set(theirs)
    spec = get_architecture(layout.architecture)
    ours = spec.target_layout(layout.num_classes, layout.aux)
    for mine, key in layout.keys.items():
        assert ours[mine] == theirs[key] or key in layout.reshaped, key


def test_zoo_names_are_the_generated_models():
    """Node names as ylhz/tf_to_pytorch_model's generated models spell them."""
    layouts = foreign_layouts()
    names = {key.rsplit("/", 1)[0] for layout in layouts.values() for key in layout.keys.values()}
    for node in ("InceptionV3/InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/Conv2D",
                 "InceptionV3/InceptionV3/Mixed_6a/Branch_1/Conv2d_1a_1x1/BatchNorm/FusedBatchNorm",
                 "InceptionV3/Logits/Conv2d_1c_1x1/Conv2D",
                 "InceptionResnetV2/InceptionResnetV2/Repeat/block35_1/Conv2d_1x1/Conv2D",
                 "InceptionV4/InceptionV4/Mixed_4a/Branch_1/Conv2d_0b_1x7/BatchNorm/FusedBatchNorm",
                 "resnet_v2_50/block1/unit_1/bottleneck_v2/preact/FusedBatchNorm",
                 "resnet_v2_50/block1/unit_1/bottleneck_v2/shortcut/Conv2D"):
        assert node in names, node


@pytest.mark.parametrize("arch", ["inception_v4", "inception_resnet_v2"])
@pytest.mark.parametrize("classes,expected", [(1000, "timm"), (1001, "cadene")])
def test_the_layout_is_told_by_shapes_where_keys_are_alike(arch, classes, expected):
    """timm's Inception v4 / IRv2 keys are Cadene's (timm took them from pretrainedmodels): only
    the classifier's classes tell a timm file (1000) from a Cadene one (1001). Each file is
    compared with the port of its own class count, so a wrong guess would report the
    classifier misshapen and never compare it."""
    spec = get_architecture(arch)
    layout = foreign_layouts(arch)[expected]
    shapes = spec.target_layout(classes, layout.aux)
    tensors = {theirs: np.zeros(shapes[ours], np.float32) for ours, theirs in layout.keys.items()}
    chosen = choose_layout(Path("weights.pth"), tensors, spec)
    assert (chosen.layout, chosen.num_classes) == (expected, classes)
    assert not map_to_ours(tensors, chosen, shapes).misshapen
