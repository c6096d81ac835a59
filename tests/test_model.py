"""The PyTorch definition alone: layout, size, its two forward paths, batch-norm folding."""
import copy

import pytest
import torch
from torch import nn

from models import InceptionV3
from models.inception_v3.spec import SPEC
from models.layers import BasicConv2d
from models.inception_v3.spec import LAYERS


def test_parameter_count_matches_the_release():
    # 27,182,194 floats = the release's 388 model variables (1001 classes, aux head).
    model = InceptionV3(num_classes=1001, aux_logits=True)
    learned = {k: v for k, v in model.state_dict().items()
               if not k.endswith(("bn.weight", "num_batches_tracked"))}
    assert sum(v.numel() for v in learned.values()) == 27_182_194


def test_every_table_row_names_a_module():
    model = InceptionV3(num_classes=1001, aux_logits=True)
    modules = dict(model.named_modules())
    assert all(layer.module in modules for layer in LAYERS)
    assert len({layer.module for layer in LAYERS}) == len(LAYERS) == 98


def test_end_points_path_computes_the_same_logits():
    torch.manual_seed(0)
    model = InceptionV3(num_classes=1000, aux_logits=True).eval()
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        end_points = model.forward_end_points(x)
        logits = model(x)
    assert set(end_points) == set(SPEC.end_points)
    assert torch.equal(end_points["Logits"], logits)
    assert end_points["AuxLogits"].shape == (2, 1000)
    assert end_points["Mixed_7c"].shape == (2, 2048, 8, 8)


def test_block_average_pools_exclude_padding():
    model = InceptionV3()
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)]
    assert len(pools) == 9 and not any(p.count_include_pad for p in pools)


def test_larger_inputs_use_a_global_mean():
    model = InceptionV3(num_classes=10, aux_logits=False).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 342, 342)).shape == (1, 10)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5),
                                              (torch.bfloat16, 2e-2)])
def test_folding_computes_conv_then_batch_norm_in_any_dtype(dtype, tolerance):
    torch.manual_seed(0)
    layer = BasicConv2d(8, 16, 3, padding=1, eps=1e-3).eval()
    with torch.no_grad():
        for stat in (layer.bn.weight, layer.bn.bias, layer.bn.running_mean):  # gamma != 1 too
            stat.normal_()
        layer.bn.running_var.uniform_(0.5, 2.0)
    layer = layer.to(dtype)
    x = torch.randn(2, 8, 9, 9).to(dtype)
    with torch.no_grad():
        expected = copy.deepcopy(layer).double()(x.double())
        layer.fold_bn_()
        got = layer(x)
    assert isinstance(layer.bn, nn.Identity) and layer.conv.bias is not None
    assert layer.conv.weight.dtype == layer.conv.bias.dtype == dtype
    assert (got.double() - expected).abs().max() <= tolerance * expected.abs().max()
