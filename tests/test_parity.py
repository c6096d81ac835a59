"""PyTorch logits from the written file vs TF-Slim's graph on real photos, for every variant."""
import pytest
import torch

from models import model_for_state_dict
from conftest import VARIANTS
from porting.convert import PortOptions
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs

@pytest.fixture(scope="session")
def ported_models(ported_files):
    """Each variant loaded back from its written file (weights_only)."""
    return {name: model_for_state_dict(torch.load(path, weights_only=True))
            for name, path in ported_files.items()}


def _reference(tf_out: dict, options: PortOptions) -> dict:
    """TF's outputs as the variant should reproduce them (background row dropped for 1000)."""
    drop = 1 if options.num_classes == 1000 else 0
    ref = {"Logits": tf_out["Logits"][:, drop:]}
    if options.aux:
        ref["AuxLogits"] = tf_out["AuxLogits"][:, drop:]
    return ref


def test_photos_are_told_apart(tf_outputs):
    """A parity test on a network that ignores its input would prove little."""
    top1 = tf_outputs[10]["Logits"].argmax(1)
    assert len(set(top1.tolist())) >= 8, top1


@pytest.mark.parametrize("batch_size", [1, 10])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_tensorflow(variant, batch_size, ported_models, tf_outputs, batches):
    options = VARIANTS[variant]
    ours = torch_outputs(ported_models[variant], batches[batch_size], batch_size)
    reference = _reference(tf_outputs[batch_size], options)
    assert set(ours) == set(reference)
    for end_point, ref in reference.items():
        parity = compare(ours[end_point], ref)
        print(f"{variant} batch {batch_size} {end_point}: {parity}")
        assert parity.passed, f"{end_point}: {parity}"


@pytest.mark.parametrize("variant", ["1001", "fold-bn"])
def test_negative_control_padding_counting_pools_fail(variant, ported_models, tf_outputs, photos):
    """timm/torchvision's pooling (padding counted) with the same weights must be rejected."""
    model = ported_models[variant]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)]
    try:
        for pool in pools:
            pool.count_include_pad = True
        ours = torch_outputs(model, photos[1], 10)
    finally:
        for pool in pools:
            pool.count_include_pad = False
    parity = compare(ours["Logits"], _reference(tf_outputs[10], VARIANTS[variant])["Logits"])
    assert not parity.passed
    assert parity.max_abs_diff > 10 * parity.tolerance


def test_negative_control_misaligned_classes_fail(ported_models, tf_outputs, photos):
    """1000-class logits compared with TF's rows 0..999 (off by one class) must be rejected."""
    ours = torch_outputs(ported_models["1000"], photos[1], 10)["Logits"]
    assert not compare(ours, tf_outputs[10]["Logits"][:, :1000]).passed
