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


# --- models.deploy.gradient_model: the fast path for input gradients (bench/gradient_speed.py)

@pytest.mark.parametrize("variant, dropped", [("1000", 1), ("fold-bn", 0)])
def test_gradient_model_gradients_agree_with_tf(variant, dropped, ported_files, tf_model, photos):
    import torch

    from models.deploy import gradient_model

    plain = load_ported(ported_files[variant])
    model = gradient_model(plain)
    assert not any(p.requires_grad for p in model.parameters())  # autograd: the input only
    assert any(p.requires_grad for p in plain.parameters())  # the input model is untouched
    assert model.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    parity = gradient_parity(model, tf_model, photos[1][:2], dropped=dropped,
                             relative_tolerance=FLOAT32_RELATIVE_TOLERANCE)
    print(parity)
    assert parity.passed, parity
    assert parity.sign_agreement > 0.98
    assert parity.fooled >= 1


def test_gradient_model_parity_catches_a_wrong_port(ported_files, tf_model, photos):
    """Negative control: the same check on the fast path fails for timm's pooling (padding
    counted in the average pools)."""
    import torch

    from models.deploy import gradient_model

    wrong = load_ported(ported_files["1001"])
    for module in wrong.modules():
        if isinstance(module, torch.nn.AvgPool2d):
            module.count_include_pad = True
    parity = gradient_parity(gradient_model(wrong), tf_model, photos[1][:1], dropped=0,
                             relative_tolerance=FLOAT32_RELATIVE_TOLERANCE)
    print(parity)
    assert parity.relative_error > FLOAT32_RELATIVE_TOLERANCE


RETAIN_STEPS = 16
RETAIN_PROBE = f"""
STEPS = {RETAIN_STEPS}
import platform, resource, sys
import torch
from models.deploy import retain_freed_memory

retained = retain_freed_memory() if sys.argv[1] == "retain" else None

def step():  # an activation of 96 MiB and its successor: allocated, written, freed
    x = torch.ones(24 << 20)
    y = x * 2

for _ in range(3):  # the heap settles
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(STEPS):
    step()
print(platform.libc_ver()[0], retained, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_retain_freed_memory_stops_page_faults_on_reuse():
    """glibc's default maps each large block afresh (one page fault per 4 KiB page touched);
    after ``retain_freed_memory`` freed blocks' pages serve the next ones. Counted in page
    faults (work), in a child process: the setting is for the rest of a process's life."""
    import os
    import resource
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH")]))}

    def probe(mode: str) -> tuple[str, str, int]:
        done = subprocess.run([sys.executable, "-c", RETAIN_PROBE, mode], cwd=root, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        libc, retained, faults = done.stdout.split()
        return libc, retained, int(faults)

    pages = RETAIN_STEPS * 2 * (96 << 20) // resource.getpagesize()  # allocated, all steps
    libc, retained, faults = probe("retain")
    if libc != "glibc":
        assert retained == "False"
        return
    assert retained == "True"
    default = probe("default")[2]
    print(f"page faults in {RETAIN_STEPS} steps: {faults} retained, {default} by default "
          f"({pages} pages allocated)")
    assert default > pages * 0.9  # glibc's default: fresh memory for every block
    # retained: freed pages serve the next steps (a heap, not a pool: now and then a block
    # finds no free one that fits: measured at most 3 blocks in 32)
    assert faults < pages * 0.25
