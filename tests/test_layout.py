"""Each architecture's table (``models/<name>/spec.py``, the converter's torch-free view of the
model) against its PyTorch model: every key, shape and their order, for every variant."""
import itertools

import pytest
import torch

from models import create_model
from models.spec import architectures

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
