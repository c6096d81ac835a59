"""The PyTorch definition alone: layout, size, and its two forward paths."""
import torch

from models import END_POINTS, InceptionV3
from porting.name_map import LAYERS


def test_parameter_count_matches_the_release():
    # 27,182,194 floats = the release's 388 model variables (1001 classes, aux head).
    model = InceptionV3(num_classes=1001, aux_logits=True)
    learned = {k: v for k, v in model.state_dict().items()
               if not k.endswith(("bn.weight", "num_batches_tracked"))}
    assert sum(v.numel() for v in learned.values()) == 27_182_194


def test_every_table_row_names_a_module():
    model = InceptionV3(num_classes=1001, aux_logits=True)
    modules = dict(model.named_modules())
    assert all(layer.torch_name in modules for layer in LAYERS)
    assert len({layer.torch_name for layer in LAYERS}) == len(LAYERS) == 98


def test_end_points_path_computes_the_same_logits():
    torch.manual_seed(0)
    model = InceptionV3(num_classes=1000, aux_logits=True).eval()
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        end_points = model.forward_end_points(x)
        logits = model(x)
    assert set(end_points) == set(END_POINTS)
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
