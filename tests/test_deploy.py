"""The deploy path (models.deploy) vs TF-Slim's graph on real photos, within the published bound."""
import pytest
import torch
from torch import nn

from models import deploy_model, model_for_state_dict
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs


@pytest.fixture(scope="module")
def plain_model(ported_files):
    return model_for_state_dict(torch.load(ported_files["1001"], weights_only=True))


@pytest.fixture(scope="module")
def folded_state_dict(ported_files):
    return torch.load(ported_files["fold-bn"], weights_only=True)


def _deploy_parity(deployed, batches, tf_outputs, batch_size):
    logits = torch_outputs(deployed, batches[batch_size], batch_size)["Logits"]
    return compare(logits, tf_outputs[batch_size]["Logits"])


@pytest.mark.parametrize("batch_size", [1, 10])
def test_deployed_plain_model_matches_tf(plain_model, batches, tf_outputs, batch_size):
    deployed = deploy_model(plain_model)
    parity = _deploy_parity(deployed, batches, tf_outputs, batch_size)
    assert parity.passed, parity
    assert isinstance(plain_model.Conv2d_1a_3x3.bn, nn.BatchNorm2d)  # folded a copy


@pytest.mark.parametrize("batch_size", [1, 10])
def test_deployed_folded_file_matches_tf(folded_state_dict, batches, tf_outputs, batch_size):
    parity = _deploy_parity(deploy_model(folded_state_dict), batches, tf_outputs, batch_size)
    assert parity.passed, parity


def test_deploy_parity_catches_padding_counted_in_average_pools(plain_model, batches, tf_outputs):
    """Negative control: timm's/torchvision's pooling (zeros counted) must fail the same check."""
    wrong = model_for_state_dict(plain_model.state_dict())
    for module in wrong.modules():
        if isinstance(module, nn.AvgPool2d):
            module.count_include_pad = True
    parity = _deploy_parity(deploy_model(wrong), batches, tf_outputs, 10)
    assert not parity.passed, parity
    assert parity.max_abs_diff > 10 * parity.tolerance
