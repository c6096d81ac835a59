"""Feature taps (``models.taps``, ``models.spec.taps``): the TF-Slim graph tensor names and end
points each model hands out. Each architecture's values are compared with TF's tensor fetched
BY NAME from its graph (``tests/taps_tools.py``): Inception v3 and Inception-ResNet-v2 here,
ResNet, VGG and Inception v4 in their own modules (their references are built there)."""
from __future__ import annotations

import pytest
import torch

from models.loading import create_model
from models.spec import UnknownTap, architectures, get_architecture
from models.taps import Recorder
from porting.weights import load_ported

from taps_tools import TAP_IMAGES, check_taps, graph_tensors

# What transfer-attack code bases fetch (FIA, NAA, RPA, PTNAA READMEs and flags), by architecture
ATTACK_LAYERS = {
    "inception_v3": "InceptionV3/InceptionV3/Mixed_5b/concat",
    "inception_v4": "InceptionV4/InceptionV4/Mixed_5e/concat",
    "inception_resnet_v2": "InceptionResnetV2/InceptionResnetV2/Conv2d_4a_3x3/Relu",
    "resnet_v2_152": "resnet_v2_152/block2/unit_8/bottleneck_v2/add",
    "resnet_v1_152": "resnet_v1_152/block2/unit_8/bottleneck_v1/add",
    "vgg_16": "vgg_16/conv3/conv3_3/Relu",
    "vgg_19": "vgg_19/conv3/conv3_3/Relu",
}


def _size(spec) -> int:
    return spec.eval.input_size


@pytest.mark.parametrize("name", sorted(architectures()))
def test_each_model_walks_its_whole_table_once_in_order(name):
    """The model's walk (meta device: shapes only) records every tap of the table, each once,
    in the table's order; so a name of the table is always found, and early stopping is sound."""
    spec = get_architecture(name)
    model = create_model(spec, spec.eval.num_classes, aux_logits=spec.has_aux, device="meta").eval()
    seen = []

    class Every(Recorder):
        def __call__(self, tap_name, value):
            seen.append(self.table.point(tap_name))
            return value

    model._walk(torch.zeros(1, 3, _size(spec), _size(spec), device="meta"),
                Every(spec.taps, [tap.point for tap in spec.taps]))
    assert seen == [tap.point for tap in spec.taps]
    # every end point verify compares is a tap (the table may add TF-Slim's own aliases of one,
    # e.g. VGG's <root>/fc8 for Logits)
    assert set(spec.end_points) <= {e for tap in spec.taps for e in tap.end_points}


@pytest.mark.parametrize("name", sorted(ATTACK_LAYERS))
def test_the_layers_attack_code_uses_are_taps(name):
    spec = get_architecture(name)
    assert ATTACK_LAYERS[name] in spec.taps.tensors()
    assert spec.taps.resolve(ATTACK_LAYERS[name] + ":0") is spec.taps.resolve(ATTACK_LAYERS[name])


def test_taps_stop_after_the_last_value_asked_for_and_skip_the_aux_head():
    spec = get_architecture("inception_v3")
    model = create_model(spec, 1001, device="meta").eval()
    ran = []
    for module in ("Mixed_6a", "AuxLogits", "fc"):
        getattr(model, module).register_forward_hook(lambda *_, m=module: ran.append(m))
    x = torch.zeros(2, 3, 299, 299, device="meta")
    out = model.taps(x, ["InceptionV3/InceptionV3/Mixed_5b/concat:0", "Conv2d_1a_3x3"])
    assert list(out) == ["InceptionV3/InceptionV3/Mixed_5b/concat:0", "Conv2d_1a_3x3"]
    assert tuple(out["Conv2d_1a_3x3"].shape) == (2, 32, 149, 149)
    assert ran == []  # nothing after Mixed_5b ran
    model.taps(x, "Mixed_7c")
    assert ran == ["Mixed_6a"]  # the aux head was not asked for
    ran.clear()
    assert tuple(model.taps(x, "AuxLogits")["AuxLogits"].shape) == (2, 1001)
    assert ran == ["Mixed_6a", "AuxLogits"]  # and it stops there: fc never ran


def test_unknown_names_and_a_missing_aux_head_are_one_line_errors():
    spec = get_architecture("inception_v3")
    model = create_model(spec, 1000, aux_logits=False, device="meta")
    x = torch.zeros(1, 3, 299, 299, device="meta")
    for name, words in (("InceptionV3/Mixed_5b/concat", "no feature tap of inception_v3"),
                        ("AuxLogits", "built without its AuxLogits head")):
        with pytest.raises(UnknownTap) as err:
            model.taps(x, name)
        assert words in str(err.value) and "\n" not in str(err.value)


def test_inception_v3_taps_are_tf_slims_tensors_by_name(tf_model, ported_files, photos):
    """Every tensor name of the table fetched by name from TF-Slim's own ``inception_v3``
    graph, against the 1001-class port's ``taps``; the neighbour controls fail."""
    spec = get_architecture("inception_v3")
    images = photos[1][:TAP_IMAGES]
    tf = graph_tensors(tf_model, images, spec.taps.tensors())
    assert check_taps(load_ported(ported_files["1001"]), spec, images, tf) >= 7


def test_inception_resnet_v2_taps_are_the_keras_oracles_tensors(irv2, irv2_ported_files, photos):
    """The trunk's TF-Slim graph names, through the oracle's map onto Keras's layers (the
    stem's and blocks' end points, each block's sum and ReLU), against the port's ``taps``."""
    from models.inception_resnet_v2.oracle import Reference

    spec = get_architecture("inception_resnet_v2")
    images = photos[1][:TAP_IMAGES]
    reference = Reference.for_checkpoint(irv2[0])
    try:
        tf = reference.graph_tensors(images, spec.taps.tensors())
    finally:
        reference.close()
    assert check_taps(load_ported(irv2_ported_files["1001"]), spec, images, tf) >= 40


@pytest.mark.parametrize("module,name,size", [("vgg", "vgg_16", 224), ("resnet_v2", "resnet_v2_50", 224)])
def test_tf_slims_own_end_point_names_are_taps(module, name, size):
    """TF-Slim's own end-point dict (``tf_slim.nets``' graph, built here, no session): every end
    point whose tensor the table lists is accepted by its TF-Slim name, as that tensor (VGG's
    ``vgg_16/fc8`` is ``vgg_16/fc8/squeezed``: attack code reads ``end_points['vgg_16/fc8']``)."""
    from models.tf_slim_graph import tf1_tensor_identity, tf_slim_net

    tf, slim, net = tf_slim_net(module)
    table = get_architecture(name).taps
    graph = tf.Graph()
    with graph.as_default(), tf1_tensor_identity(tf):
        images = tf.compat.v1.placeholder(tf.float32, [1, size, size, 3])
        with slim.arg_scope(getattr(net, f"{module.split('_')[0]}_arg_scope")()):
            _, end_points = getattr(net, name)(images, num_classes=1000, is_training=False)
    listed = {end_point: tensor.op.name for end_point, tensor in end_points.items()
              if tensor.op.name in table.tensors()}
    assert len(listed) > 10
    for end_point, tensor in listed.items():
        assert end_point in table, end_point
        assert table.resolve(end_point) is table.resolve(tensor), end_point
