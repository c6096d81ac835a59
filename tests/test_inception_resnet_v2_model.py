"""Inception-ResNet-v2's PyTorch definition alone (no TensorFlow): layout against the spec table
and timm, shapes of every end point, the no-padding average pool, the final Block8 without ReLU,
and batch-norm folding."""
import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from models.inception_resnet_v2.model import (
    Block8, Block17, Block35, InceptionResNetV2,
)
from models.inception_resnet_v2.spec import SPEC
from models.layers import AuxHead, BasicConv2d

TIMM_KEYS = Path(__file__).parent / "data" / "timm_inception_resnet_v2_keys.json"
VARIANTS = [(classes, aux, fold) for classes in (1000, 1001) for aux in (True, False)
            for fold in (True, False)]


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


@pytest.fixture(scope="module")
def model():
    """Randomly initialised (PyTorch's default init, BN at its initial statistics), eval mode."""
    torch.manual_seed(0)
    return InceptionResNetV2(num_classes=1001, aux_logits=True).eval()


@pytest.fixture(scope="module")
def run(model):
    """One forward_end_points pass on 2 images at 299 px, plus the outputs of the last
    repeat_2 block and of the final block8 (hooks), and forward's logits."""
    torch.manual_seed(1)
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    blocks = {}
    hooks = [module.register_forward_hook(
        lambda mod, args, out, name=name: blocks.__setitem__(name, out.clone()))
        for name, module in (("repeat_2", model.repeat_2[-1]), ("block8", model.block8))]
    try:
        with torch.no_grad():
            end_points = model.forward_end_points(x)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        logits = model(x)
    return end_points, blocks, logits


# --- layout -----------------------------------------------------------------------------------

@pytest.mark.parametrize("classes, aux, fold", VARIANTS)
def test_state_dict_is_the_spec_table(classes, aux, fold):
    model = InceptionResNetV2(classes, aux_logits=aux, fold_bn=fold, device="meta")
    assert layout(model) == list(SPEC.target_layout(classes, aux, fold).items())
    assert (sum(p.numel() for p in model.parameters())
            == SPEC.parameter_count(classes, aux, fold))
    assert model.num_classes == classes and model.fold_bn == fold
    assert (model.AuxLogits is not None) == aux
    assert isinstance(model.AuxLogits, AuxHead) or not aux


def test_tf_variable_count_and_size():
    # 908 TF variables (206 conv+BN x 4, 40 up convs x 2, 2 classifiers x 2); without the aux
    # head and with 1000 classes, 55,873,736 floats: keras.applications.InceptionResNetV2's
    # well-known total (its BN has beta, moving mean and variance; no gamma).
    model = InceptionResNetV2(1000, aux_logits=False, device="meta")
    convs = [m for m in model.modules() if isinstance(m, BasicConv2d)]
    ups = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    assert (len(convs), len(ups)) == (204, 40)
    tf_floats = sum(math.prod(shape) for key, shape in layout(model)
                    if not key.endswith(("bn.weight", "num_batches_tracked")))
    assert tf_floats == 55_873_736
    full = InceptionResNetV2(1001, aux_logits=True, device="meta")
    assert sum(isinstance(m, BasicConv2d) for m in full.modules()) == 206
    assert len(SPEC.layers) == 206 + 40 + 2


def test_layout_check_catches_a_changed_or_moved_layer():
    target = list(SPEC.target_layout(1001, True, False).items())
    model = InceptionResNetV2(1001, device="meta")
    model.repeat_1[7].branch1[1] = BasicConv2d(128, 161, (1, 7), padding=(0, 3), device="meta",
                                                eps=1e-3)
    assert layout(model) != target
    # same keys and shapes, registered in another order
    model = InceptionResNetV2(1001, device="meta")
    classif = model.classif
    del model.classif
    model.classif, aux = classif, model.AuxLogits
    del model.AuxLogits
    model.AuxLogits = aux
    assert layout(model) != target and sorted(layout(model)) == sorted(target)


def test_no_aux_layout_is_timms():
    recorded = json.loads(TIMM_KEYS.read_text())
    assert "066e490605ba1d3666861096163246c885603469" in recorded["source"]
    timm = [(key, tuple(shape)) for key, shape in recorded["keys"]]
    ours = layout(InceptionResNetV2(1000, aux_logits=False, device="meta"))
    assert len(timm) == 1306
    assert ours == timm  # keys, shapes and order


# --- structure ----------------------------------------------------------------------------------

def test_residual_scales_and_the_final_block8_without_relu():
    model = InceptionResNetV2(device="meta")
    assert [type(b) for b in model.repeat] == [Block35] * 10
    assert [type(b) for b in model.repeat_1] == [Block17] * 20
    assert [type(b) for b in model.repeat_2] == [Block8] * 9
    assert {(b.scale, b.relu) for b in model.repeat} == {(0.17, True)}
    assert {(b.scale, b.relu) for b in model.repeat_1} == {(0.10, True)}
    assert {(b.scale, b.relu) for b in model.repeat_2} == {(0.20, True)}
    assert isinstance(model.block8, Block8)
    assert (model.block8.scale, model.block8.relu) == (1.0, False)
    for block in (*model.repeat, *model.repeat_1, *model.repeat_2, model.block8):
        up = block.conv2d  # the up conv: plain conv with bias, no BN, no activation
        assert type(up) is nn.Conv2d and up.bias is not None and up.kernel_size == (1, 1)


def test_average_pool_excludes_padding():
    model = InceptionResNetV2(device="meta")
    pools = [m for m in model.modules() if isinstance(m, nn.AvgPool2d)]
    assert pools == [model.mixed_5b.branch3[0]]
    pool = pools[0]
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 1, 1)
    assert pool.count_include_pad is False
    assert torch.equal(pool(torch.ones(1, 1, 5, 5)), torch.ones(1, 1, 5, 5))


def test_paddings_are_tf_valid_or_same():
    model = InceptionResNetV2(device="meta")
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            if module.stride == (2, 2) or name.split(".")[0] in (
                    "conv2d_1a", "conv2d_2a", "conv2d_3b", "conv2d_4a") \
                    or name == "AuxLogits.conv2d_2a.conv":
                assert module.padding == (0, 0), name  # VALID
            else:
                assert module.stride == (1, 1) and module.padding == (kh // 2, kw // 2), name


def test_meta_build_is_fast_and_holds_no_data():
    model = InceptionResNetV2(1001, fold_bn=True, device="meta")
    assert all(t.is_meta for t in model.state_dict().values())


# --- forward ------------------------------------------------------------------------------------

END_POINT_SHAPES = {
    "Conv2d_1a_3x3": (32, 149), "Conv2d_2a_3x3": (32, 147), "Conv2d_2b_3x3": (64, 147),
    "MaxPool_3a_3x3": (64, 73), "Conv2d_3b_1x1": (80, 73), "Conv2d_4a_3x3": (192, 71),
    "MaxPool_5a_3x3": (192, 35), "Mixed_5b": (320, 35), "Mixed_6a": (1088, 17),
    "PreAuxLogits": (1088, 17), "Mixed_7a": (2080, 8), "Conv2d_7b_1x1": (1536, 8),
}


def test_end_point_shapes_at_299(run):
    end_points, _, logits = run
    assert tuple(end_points) == SPEC.end_points
    for name, (channels, size) in END_POINT_SHAPES.items():
        assert end_points[name].shape == (2, channels, size, size), name
    assert end_points["AuxLogits"].shape == (2, 1001)
    assert end_points["PreLogitsFlatten"].shape == (2, 1536)
    assert end_points["Logits"].shape == logits.shape == (2, 1001)
    assert all(torch.isfinite(t).all() for t in end_points.values())
    assert end_points["Logits"].abs().max() > 0
    assert torch.equal(end_points["Logits"], logits)
    assert torch.equal(end_points["PreLogitsFlatten"],
                       end_points["Conv2d_7b_1x1"].mean((2, 3)))


def test_final_block8_output_keeps_negative_values(run):
    _, blocks, _ = run
    assert blocks["repeat_2"].min() >= 0  # ReLU after the last scaled block8
    assert blocks["block8"].min() < 0     # none after the final one


def test_no_aux_model_has_no_aux_end_point():
    torch.manual_seed(0)
    model = InceptionResNetV2(10, aux_logits=False).eval()
    with torch.no_grad():
        end_points = model.forward_end_points(torch.zeros(1, 3, 75, 75))  # smallest input
    assert "AuxLogits" not in end_points and end_points["Logits"].shape == (1, 10)
    assert end_points["Conv2d_7b_1x1"].shape == (1, 1536, 1, 1)


def test_folding_every_conv_keeps_the_logits():
    torch.manual_seed(2)
    model = InceptionResNetV2(1001, aux_logits=False).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BasicConv2d):
                bn = module.bn
                bn.bias.normal_(0.0, 0.2)
                bn.running_mean.normal_(0.0, 0.2)
                bn.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 3, 139, 139) * 2 - 1  # folding does not depend on the input size
    with torch.no_grad():
        expected = model(x)
        folded = copy.deepcopy(model)
        for module in folded.modules():
            if isinstance(module, BasicConv2d):
                module.fold_bn_()
        got = folded(x)
        fresh = InceptionResNetV2(1001, aux_logits=False, fold_bn=True, device="meta")
        fresh = fresh.to_empty(device="cpu").eval()
        fresh.load_state_dict(folded.state_dict(), strict=True)
        assert layout(fresh) == list(SPEC.target_layout(1001, False, True).items())
        again = fresh(x)
    assert torch.isfinite(expected).all() and expected.abs().max() > 0
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert torch.equal(again, got)
