"""models.layout (the converter's torch-free view of the model) against the model itself."""
import itertools
import json

import pytest
import torch

from models import InceptionV3
from models.layout import LAYOUT_FILE, describe_model, parameter_count, target_layout

VARIANTS = list(itertools.product((1000, 1001), (True, False), (True, False)))


def test_layout_file_is_the_models():
    assert json.loads(LAYOUT_FILE.read_text()) == describe_model(), \
        "models/inception_v3_layout.json is stale: regenerate it with `python -m models.layout`"


@pytest.mark.parametrize("num_classes, aux, fold_bn", VARIANTS)
def test_target_layout_is_the_models_state_dict(num_classes, aux, fold_bn):
    model = InceptionV3(num_classes, aux_logits=aux, fold_bn=fold_bn, device="meta")
    expected = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    assert list(target_layout(num_classes, aux, fold_bn).items()) == expected  # order too
    assert parameter_count(num_classes, aux, fold_bn) == sum(p.numel() for p in model.parameters())


def test_a_different_model_gives_a_different_layout():  # the comparison above can fail
    model = InceptionV3(1000, aux_logits=True, device="meta")
    model.Mixed_7c.branch1x1.conv = torch.nn.Conv2d(2048, 321, 1, bias=False, device="meta")
    expected = [(key, tuple(value.shape)) for key, value in model.state_dict().items()]
    assert list(target_layout(1000).items()) != expected
