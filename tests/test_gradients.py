"""Exactness beyond float32 rounding: float64 end points and gradients, float32 gradients and
FGSM images that transfer between the frameworks with the same top-1."""
import numpy as np
import pytest

from models.inception_v3.spec import SPEC

from porting.errors import PortError
from porting.verify.gradients import gradient_parity
from porting.verify.parity import GRADIENT_RELATIVE_TOLERANCE as FLOAT32_RELATIVE_TOLERANCE
from porting.verify.parity import FLOAT64_RELATIVE_TOLERANCE
from porting.verify.request import VerifyRequest
from porting.verify.run import run
from porting.verify.torch_runner import TorchSubject, compare_end_points
from porting.weights import load_ported

END_POINTS = SPEC.end_points


@pytest.fixture(scope="module")
def tf_model64(synthetic_ckpt):
    from models.inception_v3.oracle import TFSlimInceptionV3

    model = TFSlimInceptionV3(synthetic_ckpt, dtype="float64")
    yield model
    model.close()


@pytest.fixture(scope="module")
def image64(photos):
    return photos[1][:1].astype(np.float64)


@pytest.mark.parametrize("variant, dropped", [("1001", 0), ("1000", 1)])
def test_float64_every_end_point_agrees_to_1e_10(variant, dropped, ported_files, tf_model64,
                                                 image64):
    expected = tf_model64(image64, END_POINTS)
    model = load_ported(ported_files[variant]).double()
    results = compare_end_points(model, image64, lambda a, b: expected, dropped=dropped,
                                 float64=True)
    assert list(results) == list(END_POINTS)
    for name, parity in results.items():
        print(f"float64 {variant} {name}: relative {parity.relative_error:.2g}")
        assert parity.relative_tolerance == FLOAT64_RELATIVE_TOLERANCE
        assert parity.passed, f"{name}: {parity}"


def test_float64_refuses_a_folded_file(ported_files, synthetic_ckpt):
    with pytest.raises(PortError, match="folded weights were rounded to float32"):
        run(VerifyRequest(weights=ported_files["fold-bn"], src=synthetic_ckpt, float64=True),
            TorchSubject.open)


def test_float32_gradients_and_fgsm_agree(ported_files, tf_model, photos):
    parity = gradient_parity(load_ported(ported_files["1000"]), tf_model, photos[1][:2],
                             dropped=1, relative_tolerance=FLOAT32_RELATIVE_TOLERANCE)
    print(parity)
    assert parity.passed, parity
    assert parity.sign_agreement > 0.98
    assert parity.fooled >= 1  # the attack does something, so agreeing on it means something


def test_float32_gradients_with_a_given_label(ported_files, tf_model, photos):
    parity = gradient_parity(load_ported(ported_files["1000"]), tf_model, photos[1][:1],
                             dropped=1, labels=np.array([7]),
                             relative_tolerance=FLOAT32_RELATIVE_TOLERANCE)
    assert parity.passed, parity


def test_float64_gradients_agree_to_1e_10(ported_files, tf_model64, image64):
    parity = gradient_parity(load_ported(ported_files["1001"]).double(), tf_model64, image64,
                             dropped=0, relative_tolerance=FLOAT64_RELATIVE_TOLERANCE)
    print(parity)
    assert parity.passed, parity


def test_gradients_catch_a_wrong_port(ported_files, tf_model, photos):
    import torch

    model = load_ported(ported_files["1001"])
    for module in model.modules():
        if isinstance(module, torch.nn.AvgPool2d):
            module.count_include_pad = True
    parity = gradient_parity(model, tf_model, photos[1][:1], dropped=0,
                             relative_tolerance=FLOAT32_RELATIVE_TOLERANCE)
    print(parity)
    assert parity.relative_error > FLOAT32_RELATIVE_TOLERANCE


def test_torch_gradient_is_the_input_gradient_only(ported_files, photos):
    import torch
    import torch.nn.functional as F

    from porting.verify.gradients import torch_loss_gradient

    model = load_ported(ported_files["1000"])
    images, labels = photos[1][:1], np.array([3])
    logits, gradient = torch_loss_gradient(model, images, labels)
    assert all(p.grad is None for p in model.parameters())  # nothing computed or accumulated

    x = torch.from_numpy(images).permute(0, 3, 1, 2).requires_grad_(True)  # the full backward
    F.cross_entropy(model(x), torch.from_numpy(labels), reduction="sum").backward()
    np.testing.assert_array_equal(gradient, x.grad.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(logits, model(x).detach().numpy())
