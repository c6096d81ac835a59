"""The name map and the strict accounting, on TF-written checkpoints and variants of them."""
import numpy as np
import pytest
import torch

from ckpt_tools import read_all
from models import model_for_state_dict
from models.spec import EMA_SUFFIX, ClassLayout
from porting.convert import PortOptions, convert
from porting.errors import PortError
from porting.leftovers import non_model_reason
from models.inception_v3.spec import LAYERS
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from porting.read.open import open_reader

AUX_PREFIX = "InceptionV3/AuxLogits/"


def _port(prefix, **options):
    return convert(open_reader(prefix), PortOptions(**options))


def _tensors(state_dict):
    return {key: torch.from_numpy(value) for key, value in state_dict.items()}


def _model(state_dict):
    return model_for_state_dict(_tensors(state_dict))


def test_table_covers_exactly_tf_slims_variables(tensors):
    table = {name for layer in LAYERS for name in layer.variables().values()}
    assert table == set(tensors) - {"global_step"}
    assert len(table) == 388


def test_every_variable_is_accounted_for(synthetic_ckpt, tensors):
    conversion = _port(synthetic_ckpt, num_classes=1001)
    assert set(conversion.mapped) == set(tensors) - {"global_step"}
    assert conversion.skipped == {"global_step": "training counter"}
    assert conversion.source_classes == 1001
    assert conversion.classes == ClassLayout(source=1001, background=1, outputs=1001)
    assert (conversion.classes.dropped, conversion.classes.offset) == (0, 1)
    dropped = _port(synthetic_ckpt, num_classes=1000).classes
    assert dropped == ClassLayout(source=1001, background=1, outputs=1000)
    assert (dropped.dropped, dropped.offset) == (1, 0)
    for key, array in conversion.state_dict.items():  # what the writers take
        assert array.flags.c_contiguous, key
        assert array.dtype == np.dtype("<i8" if key.endswith("num_batches_tracked") else "<f4")


def test_background_row_is_not_stored(ported_files):
    sd = torch.load(ported_files["1000"], weights_only=True)
    for key in ("fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"):
        tensor = sd[key]
        assert tensor.shape[0] == 1000 and tensor.storage_offset() == 0
        assert tensor.untyped_storage().nbytes() == tensor.numel() * 4, key


def test_values_land_in_the_right_place(synthetic_ckpt, tensors):
    sd = _port(synthetic_ckpt, num_classes=1000).state_dict
    w = tensors["InceptionV3/Mixed_5c/Branch_1/Conv2d_0b_1x1/weights"]  # a quirky name
    assert np.array_equal(sd["Mixed_5c.branch5x5_1.conv.weight"], w.transpose(3, 2, 0, 1))
    kernel = tensors["InceptionV3/Mixed_6b/Branch_1/Conv2d_0b_1x7/weights"]  # [1, 7, in, out]
    assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape[2:] == kernel.shape[:2] == (1, 7)
    mean = tensors["InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1/BatchNorm/moving_mean"]
    assert np.array_equal(sd["Mixed_7c.branch3x3_2b.bn.running_mean"], mean)
    assert np.array_equal(sd["Mixed_7c.branch3x3_2b.bn.weight"], np.ones(384))
    fc = tensors["InceptionV3/Logits/Conv2d_1c_1x1/weights"][0, 0].T
    assert np.array_equal(sd["fc.weight"], fc[1:])  # background row 0 dropped
    aux_b = tensors["InceptionV3/AuxLogits/Conv2d_2b_1x1/biases"]
    assert np.array_equal(sd["AuxLogits.fc.bias"], aux_b[1:])


def test_folded_conv_equals_conv_then_batch_norm(synthetic_ckpt):
    plain = _tensors(_port(synthetic_ckpt, num_classes=1001).state_dict)
    folded = _tensors(_port(synthetic_ckpt, num_classes=1001, fold_bn=True).state_dict)
    assert not any(".bn." in key for key in folded)
    x = torch.randn(2, 192, 9, 9, dtype=torch.float64)
    p = "Mixed_5b.branch3x3dbl_1"
    expected = torch.nn.functional.batch_norm(
        torch.nn.functional.conv2d(x, plain[f"{p}.conv.weight"].double()),
        plain[f"{p}.bn.running_mean"].double(), plain[f"{p}.bn.running_var"].double(),
        plain[f"{p}.bn.weight"].double(), plain[f"{p}.bn.bias"].double(), eps=1e-3)
    got = torch.nn.functional.conv2d(x, folded[f"{p}.conv.weight"].double(),
                                     folded[f"{p}.conv.bias"].double())
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def _with_training_leftovers(tensors):
    """Add perturbed EMA shadows and RMSProp slots for every model variable."""
    rng = np.random.default_rng(1)
    out = dict(tensors)
    for name, value in tensors.items():
        if name != "global_step":
            for suffix in ("/ExponentialMovingAverage", "/RMSProp", "/RMSProp_1"):
                out[name + suffix] = (value * rng.normal(1.0, 0.01, value.shape)).astype(value.dtype)
    return out


def test_training_leftovers_are_skipped(variant, tensors):
    conversion = _port(variant("leftovers", _with_training_leftovers))
    reasons = set(conversion.skipped.values())
    assert len(conversion.skipped) == 1 + 3 * 388
    assert reasons == {"training counter", "moving-average shadow (ExponentialMovingAverage)",
                       "optimizer slot (RMSProp)", "optimizer slot (RMSProp_1)"}
    w = tensors["InceptionV3/Conv2d_1a_3x3/weights"].transpose(3, 2, 0, 1)
    assert np.array_equal(conversion.state_dict["Conv2d_1a_3x3.conv.weight"], w)


def test_the_leftover_rule_names_each_kind():
    assert non_model_reason("global_step") == non_model_reason("beta2_power") == "training counter"
    assert non_model_reason("A/weights/Adam_1") == "optimizer slot (Adam_1)"
    assert non_model_reason("A/weights/Momentum") == "optimizer slot (Momentum)"
    assert non_model_reason("A/weights" + EMA_SUFFIX) == \
        "moving-average shadow (ExponentialMovingAverage)"
    assert non_model_reason("A/weights") is None and non_model_reason("A/Adam/weights") is None


def test_ema_takes_the_shadows_and_matches_tf_restoring_them(variant, photos):
    from models.inception_v3.oracle import TFSlimInceptionV3

    prefix = variant("leftovers", _with_training_leftovers)
    conversion = _port(prefix, num_classes=1001, ema=True)
    shadow = read_all(prefix)["InceptionV3/Conv2d_1a_3x3/weights/ExponentialMovingAverage"]
    assert np.array_equal(conversion.state_dict["Conv2d_1a_3x3.conv.weight"],
                          shadow.transpose(3, 2, 0, 1))
    assert sum(why.endswith("(--ema)") for why in conversion.skipped.values()) == 388

    tf_model = TFSlimInceptionV3(prefix, num_classes=1001, ema=True)
    try:
        reference = tf_model(photos[1])["Logits"]
    finally:
        tf_model.close()
    ours = torch_outputs(_model(conversion.state_dict), photos[1], 10)["Logits"]
    assert compare(ours, reference).passed
    plain = torch_outputs(_model(_port(prefix, num_classes=1001).state_dict), photos[1], 10)["Logits"]
    assert not compare(plain, reference).passed  # negative control: raw weights differ


def test_ema_without_shadows_is_an_error(synthetic_ckpt):
    with pytest.raises(PortError, match="no ExponentialMovingAverage shadow"):
        _port(synthetic_ckpt, ema=True)


def _drop_aux(tensors):
    return {k: v for k, v in tensors.items() if not k.startswith(AUX_PREFIX)}


def test_checkpoint_without_aux_head_needs_no_aux(variant):
    prefix = variant("no_aux", _drop_aux)
    with pytest.raises(PortError, match="--no-aux"):
        _port(prefix)
    assert "AuxLogits.fc.weight" not in _port(prefix, aux=False).state_dict


def test_no_aux_skips_the_aux_variables(synthetic_ckpt):
    conversion = _port(synthetic_ckpt, aux=False)
    assert len(conversion.mapped) == 378
    assert sum("--no-aux" in why for why in conversion.skipped.values()) == 10


def test_another_architecture_is_rejected(variant):
    def alexnet(tensors):  # TF-Slim's alexnet_v2, which nothing here ports
        return {k.replace("InceptionV3/", "alexnet_v2/"): v for k, v in tensors.items()}

    def misnamed(tensors):  # Inception v3's layers under a known root scope of another net
        return {k.replace("InceptionV3/", "resnet_v1_50/"): v for k, v in tensors.items()}

    with pytest.raises(PortError, match="no known architecture: root scopes alexnet_v2"):
        _port(variant("alexnet", alexnet))
    with pytest.raises(PortError, match="not a TF-Slim Inception-ResNet-v2 checkpoint: none of"):
        _port(variant("alexnet", alexnet), arch="inception_resnet_v2")
    with pytest.raises(PortError, match="not a TF-Slim ResNet-50 v1 checkpoint: none of its 267"):
        _port(variant("misnamed", misnamed))


def test_shape_mismatch_names_the_variable(variant):
    name = "InceptionV3/Mixed_6c/Branch_2/Conv2d_0b_7x1/weights"

    def transposed(tensors):
        tensors[name] = np.ascontiguousarray(tensors[name].transpose(1, 0, 2, 3))  # 7x1 -> 1x7
        return tensors

    with pytest.raises(PortError, match=f"{name} has shape \\[1, 7, 160, 160\\], expected \\[7, 1, 160, 160\\]"):
        _port(variant("transposed", transposed))


def test_unknown_and_missing_variables_are_named(variant):
    def renamed(tensors):
        tensors["InceptionV3/Mixed_5c/Branch_1/Conv2d_0a_1x1/weights"] = tensors.pop(
            "InceptionV3/Mixed_5c/Branch_1/Conv2d_0b_1x1/weights")
        return tensors

    with pytest.raises(PortError, match="1 model variables missing: .*Mixed_5c/Branch_1/Conv2d_0b_1x1"):
        _port(variant("renamed", renamed))

    def extra(tensors):
        tensors["InceptionV3/Mixed_8a/weights"] = np.zeros(3, np.float32)
        return tensors

    with pytest.raises(PortError, match="1 variables with no place in Inception v3: InceptionV3/Mixed_8a"):
        _port(variant("extra", extra))


def test_class_counts(variant):
    def thousand(tensors):
        for scope in ("Logits/Conv2d_1c_1x1", "AuxLogits/Conv2d_2b_1x1"):
            w, b = f"InceptionV3/{scope}/weights", f"InceptionV3/{scope}/biases"
            tensors[w], tensors[b] = np.ascontiguousarray(tensors[w][..., 1:]), tensors[b][1:]
        return tensors

    prefix = variant("thousand", thousand)
    conversion = _port(prefix, num_classes=1000)
    assert conversion.state_dict["fc.bias"].shape == (1000,)
    assert conversion.classes == ClassLayout(source=1000, background=0, outputs=1000)
    with pytest.raises(PortError, match="has 1000 classes; --num-classes 1001 cannot be made"):
        _port(prefix, num_classes=1001)
