"""Each architecture's table (``models/<name>/spec.py``, the converter's torch-free view of the
model) against its PyTorch model: every key, shape and their order, for every variant."""
import dataclasses
import itertools

import numpy as np
import pytest
import torch

from models import create_model, model_for_state_dict
from models.spec import KINDS, ConvBN, LayerKind, architectures, layer_kind, make_kind, table

VARIANTS = [(arch, classes, aux, fold) for arch, classes, aux, fold in itertools.product(
    architectures(), (1000, 1001), (True, False), (True, False))
    if architectures()[arch].has_aux or not aux]  # a net without an aux head has one variant


def _state_dict_layout(model) -> list:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


@pytest.mark.parametrize("arch, num_classes, aux, fold_bn", VARIANTS)
def test_target_layout_is_the_models_state_dict(arch, num_classes, aux, fold_bn):
    spec = architectures()[arch]
    model = create_model(spec, num_classes, aux_logits=aux, fold_bn=fold_bn, device="meta")
    assert list(spec.target_layout(num_classes, aux, fold_bn).items()) == _state_dict_layout(model)
    assert spec.parameter_count(num_classes, aux, fold_bn) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", list(architectures()))
def test_a_different_model_gives_a_different_layout(arch):  # the comparison above can fail
    spec = architectures()[arch]
    model = create_model(spec, 1000, aux_logits=spec.has_aux, device="meta")
    last_conv = next(layer for layer in reversed(spec.layers) if len(layer.shape) == 4)
    key, shape = last_conv.kind.layout(last_conv.module, last_conv.shape, 1000, False)[0]
    parent, name = key.rsplit(".", 1)  # its weight, one output channel more
    setattr(model.get_submodule(parent), name,
            torch.nn.Parameter(torch.empty(shape[0] + 1, *shape[1:], device="meta")))
    assert list(spec.target_layout(1000, spec.has_aux).items()) != _state_dict_layout(model)


def test_every_architecture_is_found_and_named_by_its_folder():
    assert set(architectures()) >= {"inception_v3", "inception_resnet_v2"}
    for name, spec in architectures().items():
        folder = spec.package.split(".")[-1]  # a folder may serve several (resnet: 6)
        assert spec.name == name and spec.model.startswith(f"{spec.package}.model:")
        assert name == folder or name.startswith(f"{folder}_")
        assert spec.classifier.module == spec.eval.classifier


def _batch_norm_eps_mismatches(spec, model) -> list[str]:
    """Every ``nn.BatchNorm2d`` of ``model`` whose epsilon is not its layer's in the table (the
    converter folds with the table's): '<module>: eps <model's> != <table's>'; every batch norm
    must belong to a table layer."""
    found, covered = [], set()
    for layer in spec.layers:
        for name, module in model.get_submodule(layer.module).named_modules(prefix=layer.module):
            if isinstance(module, torch.nn.BatchNorm2d):
                covered.add(name)
                if module.eps != layer.kind.bn_eps:
                    found.append(f"{name}: eps {module.eps} != {layer.kind.bn_eps}")
    norms = {name for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    return found + [f"{name}: in no layer of the table" for name in sorted(norms - covered)]


@pytest.mark.parametrize("arch", list(architectures()))
def test_batch_norm_epsilon_is_the_tables(arch):
    spec = architectures()[arch]
    model = create_model(spec, 1000, aux_logits=spec.has_aux, device="meta")
    assert _batch_norm_eps_mismatches(spec, model) == []
    # the check can fail: a batch norm the table does not know of ...
    model.add_module("stray", torch.nn.BatchNorm2d(8, device="meta"))
    assert _batch_norm_eps_mismatches(spec, model) == ["stray: in no layer of the table"]
    del model.stray
    # ... and one with the other architectures' epsilon (where the net has batch norms)
    layer = next((layer for layer in spec.layers if layer.kind.name.startswith("conv_bn")), None)
    if layer is None:
        return
    bn = model.get_submodule(layer.module).bn
    bn.eps = 1e-3 if bn.eps != 1e-3 else 1e-5
    assert _batch_norm_eps_mismatches(spec, model) == [f"{layer.module}.bn: eps {bn.eps} != "
                                                       f"{layer.kind.bn_eps}"]



# --- the layer-kind registry: loud on a duplicate name, open to a folder's own kinds -----------

def test_a_second_kind_of_the_same_name_is_refused_naming_both():
    try:
        with pytest.raises(ValueError) as err:
            @layer_kind("conv_bn")
            class AnotherConvBN(ConvBN):
                pass
    finally:
        KINDS["conv_bn"] = ConvBN  # had it been taken, the other tests still get the real one
    here = f"{__name__}.test_a_second_kind_of_the_same_name_is_refused_naming_both.<locals>"
    assert str(err.value) == ("layer kind 'conv_bn' is defined twice: models.spec.kinds.ConvBN "
                              f"and {here}.AnotherConvBN")


class _ConvReLU(LayerKind):
    """A kind no generic one covers, as a folder would bring it (VGG's conv with bias + ReLU,
    torchvision's ``features.N`` keys)."""

    variables = {"weight": "weights", "bias": "biases"}

    def layout(self, module, shape, classes, folded):
        return [(f"{module}.weight", shape), (f"{module}.bias", shape[:1])]

    def tf_shapes(self, shape, classes):
        out_chs, in_chs, kh, kw = shape
        return {"weight": (kh, kw, in_chs, out_chs), "bias": (out_chs,)}

    def tensors(self, module, v, folded, drop):
        return {f"{module}.weight": v["weight"].transpose(3, 2, 0, 1),
                f"{module}.bias": v["bias"]}


def test_a_folder_can_add_a_layer_kind():
    conv_relu = layer_kind("test_conv_relu")(_ConvReLU)  # as a folder's spec.py would
    try:
        _check_a_table_with(conv_relu)
    finally:
        del KINDS["test_conv_relu"]  # unregistered: no other test sees it
    with pytest.raises(ValueError, match="unknown layer kind 'test_conv_relu'"):
        make_kind("test_conv_relu", 1e-3)


def _check_a_table_with(conv_relu):
    layers = table("Toy", """
        conv1/conv1_1  features.0  test_conv_relu  3x3 3 64
        conv2          features.2  conv_bn         1x1 64 32   # a generic kind beside it
        fc8            classifier  fc_classifier   32
    """, bn_eps=1e-5)
    assert isinstance(layers[0].kind, conv_relu) and layers[0].kind.name == "test_conv_relu"
    assert layers[0].variables() == {"weight": "Toy/conv1/conv1_1/weights",
                                     "bias": "Toy/conv1/conv1_1/biases"}
    toy = dataclasses.replace(architectures()["resnet_v1_50"], name="toy", tf_root="Toy",
                              layers=tuple(layers))
    assert list(toy.target_layout(1000, fold_bn=True).items()) == [
        ("features.0.weight", (64, 3, 3, 3)), ("features.0.bias", (64,)),
        ("features.2.conv.weight", (32, 64, 1, 1)), ("features.2.conv.bias", (32,)),
        ("classifier.weight", (1000, 32)), ("classifier.bias", (1000,))]
    assert layers[0].kind.tf_shapes(layers[0].shape, 1000) == {"weight": (3, 3, 3, 64),
                                                               "bias": (64,)}
    weight = np.arange(3 * 3 * 3 * 64, dtype="<f4").reshape(3, 3, 3, 64)
    out = layers[0].kind.tensors("features.0", {"weight": weight, "bias": np.zeros(64, "<f4")},
                                 folded=False, drop=0)
    assert out["features.0.weight"][5, 2, 1, 0] == weight[1, 0, 2, 5]



@pytest.mark.parametrize("arch, num_classes, aux, fold_bn", VARIANTS)
def test_model_for_state_dict_holds_every_tensor_of_the_file(arch, num_classes, aux, fold_bn):
    """Built on the meta device and given the file's tensors: nothing of the model is left on
    the meta device (a tensor no state dict fills, e.g. a non-persistent buffer, would be)."""
    spec = architectures()[arch]
    state_dict = {key: torch.full(shape, 0.5) for key, shape
                  in spec.target_layout(num_classes, aux, fold_bn).items()}
    model = model_for_state_dict(state_dict)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert [key for key, t in tensors.items() if t.device.type != "cpu"] == []
    assert set(tensors) == set(state_dict)  # all of them from the file (ours: the file's own)
    assert all(tensors[key].data_ptr() == state_dict[key].data_ptr() for key in state_dict)
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_a_model_tensor_no_state_dict_fills_is_left_on_meta():  # the check above can fail
    spec = architectures()["inception_v3"]
    state_dict = {key: torch.full(shape, 0.5) for key, shape in spec.target_layout(1000, True).items()}
    model = model_for_state_dict(state_dict)
    model.Conv2d_1a_3x3.register_buffer("scale", torch.empty(1, device="meta"), persistent=False)
    assert [key for key, t in model.named_buffers() if t.device.type == "meta"] == [
        "Conv2d_1a_3x3.scale"]
