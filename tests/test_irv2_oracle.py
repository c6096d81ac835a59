"""The Inception-ResNet-v2 oracle: Keras's InceptionResNetV2 with TF-Slim-named weights, TF-Slim's
aux head as a TF graph, and the SYNTHETIC checkpoint written from a calibrated Keras model.

Every Keras model here is built once per module: the calibrated one, the float32 and float64
references on the synthetic checkpoint, and two on its EMA copy.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from models.inception_resnet_v2 import oracle as irv2
from models.inception_resnet_v2.spec import SPEC
from models.spec import EMA_SUFFIX, KerasAdapter
from models.tf_slim_graph import checkpoint_layout
from porting.errors import PortError

BLOCK35_1 = f"{SPEC.tf_root}/Repeat/block35_1"
# two same-shaped layers (1x1 320->32 conv + BN) for the negative control
SWAPPED = (f"{BLOCK35_1}/Branch_0/Conv2d_1x1", f"{BLOCK35_1}/Branch_1/Conv2d_0a_1x1")
SUBSET = 2  # photos for the checks that need only a few


def relative(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(np.asarray(ours, np.float64) - reference).max() / np.abs(reference).max())


def read_all(prefix) -> dict[str, np.ndarray]:
    tf = irv2.import_tensorflow()
    reader = tf.train.load_checkpoint(str(prefix))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def spec_shapes(classes: int, aux: bool) -> dict[str, tuple]:
    return {name: tuple(layer.kind.tf_shapes(layer.shape, classes)[role])
            for layer in SPEC.layers if aux or not layer.is_aux
            for role, name in layer.variables().items()}


@pytest.fixture(scope="module")
def images():
    from porting.verify.photos import load_photos

    _, batch = load_photos(config=SPEC.eval)
    assert batch.shape == (10, 299, 299, 3)
    return batch


@pytest.fixture(scope="module")
def synthetic(irv2_checkpoint):
    """The session's SYNTHETIC V2 checkpoint (1001 classes, aux) from a calibrated Keras model
    (conftest's ``irv2_checkpoint``): (prefix, every variable as TF reads it, the Keras model,
    the calibration report, whose ``logits`` are the Keras model's on the photos)."""
    prefix, model, report = irv2_checkpoint
    print("calibration:", {k: v for k, v in report.items() if not isinstance(v, np.ndarray)})
    return prefix, read_all(prefix), model, report


@pytest.fixture(scope="module")
def calibrated(synthetic):
    """(calibrated Keras model, its logits on the photos, the calibration report)."""
    return synthetic[2], synthetic[3]["logits"], synthetic[3]


@pytest.fixture(scope="module")
def reference(synthetic, images):
    model = irv2.KerasInceptionResNetV2.for_checkpoint(synthetic[0])
    yield model, model(images, ("Logits", "AuxLogits", "PreAuxLogits"))
    model.close()


@pytest.fixture(scope="module")
def reference64(synthetic):
    model = irv2.KerasInceptionResNetV2.for_checkpoint(synthetic[0], dtype="float64")
    yield model
    model.close()


# --- a. calibration ------------------------------------------------------------------------

def test_calibrated_keras_model_tells_photos_apart(calibrated):
    _, logits, report = calibrated
    assert logits.shape == (10, 1000) and np.isfinite(logits).all()
    assert len(set(logits.argmax(1))) >= 8
    assert 2.0 < logits.std() < 8.0
    assert report["distinct_top1"] == len(set(logits.argmax(1)))
    # one training pass with momentum 0: moving statistics are the batch statistics, so
    # inference on the same photos is the calibration pass's function
    assert report["train_vs_inference"] < 1e-5
    assert max(report["moving_stat_error"].values()) < 1e-4


def test_importing_the_oracle_imports_no_tensorflow():
    code = ("import sys, models.inception_resnet_v2.oracle; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "False"]


def test_keras_to_tf_slim_names_every_weight(calibrated):
    model = calibrated[0]
    variables = irv2.keras_to_tf_slim(model)
    assert len(variables) == len(model.weights) == 898
    assert {n: v.shape for n, v in variables.items()} == spec_shapes(1000, aux=False)


# --- b. the synthetic checkpoint -------------------------------------------------------------

def test_synthetic_checkpoint_has_the_release_names_and_shapes(synthetic):
    variables = synthetic[1]
    assert len(variables) == 909
    expected = {v for layer in SPEC.layers for v in layer.variables().values()} | {"global_step"}
    assert set(variables) == expected
    assert {n: v.shape for n, v in variables.items() if n != "global_step"} == \
        spec_shapes(1001, aux=True)
    assert variables["global_step"].dtype == np.int64 and variables["global_step"].shape == ()
    assert all(v.dtype == np.float32 for n, v in variables.items() if n != "global_step")


def test_synthetic_v1_checkpoint_without_aux(tmp_path, images, calibrated):
    """The 2016 release's layout: one V1 file; here without aux and with Keras's 1000 classes."""
    path = irv2.build_synthetic_checkpoint(tmp_path / "inception_resnet_v2.ckpt", images,
                                           num_classes=1000, aux=False, v1_format=True,
                                           keras_model=calibrated[0])
    assert path.is_file() and not path.with_name(path.name + ".index").exists()
    variables = read_all(path)
    # the aux head is 10 variables (2 conv+BN x 4, weights and biases): 898 model variables
    assert len(variables) == 899
    assert set(variables) == {v for layer in SPEC.layers if not layer.is_aux
                              for v in layer.variables().values()} | {"global_step"}
    assert {n: v.shape for n, v in variables.items() if n != "global_step"} == \
        spec_shapes(1000, aux=False)
    assert checkpoint_layout(path, irv2.SPEC) == (1000, False)
    keras_names = irv2.keras_to_tf_slim(calibrated[0])
    assert all(np.array_equal(variables[n], v) for n, v in keras_names.items())


# --- c. the reference reproduces the calibrated Keras model ------------------------------------

def test_reference_reproduces_keras_logits(reference, calibrated):
    model, outputs = reference
    assert (model.num_classes, model.aux) == (1001, True)
    assert set(model.end_points) == set(SPEC.end_points)
    logits = outputs["Logits"]
    assert logits.shape == (10, 1001)
    error = relative(logits[:, 1:], calibrated[1])
    print(f"reference vs calibrated Keras: {error:.2e} relative")
    assert error < 1e-5
    # the Keras model under the reference was built after the calibrated one: its layers'
    # counters do not start at 0, and the weights still land by creation order
    counters = [KerasAdapter.counter(l.name, "Conv2D") for l in model.model.layers
                if type(l).__name__ == "Conv2D"]
    assert min(c for c in counters if c is not None) > 0


END_POINT_SHAPES = {
    "Conv2d_1a_3x3": (149, 149, 32), "Conv2d_2a_3x3": (147, 147, 32),
    "Conv2d_2b_3x3": (147, 147, 64), "MaxPool_3a_3x3": (73, 73, 64),
    "Conv2d_3b_1x1": (73, 73, 80), "Conv2d_4a_3x3": (71, 71, 192),
    "MaxPool_5a_3x3": (35, 35, 192), "Mixed_5b": (35, 35, 320), "Mixed_6a": (17, 17, 1088),
    "PreAuxLogits": (17, 17, 1088), "Mixed_7a": (8, 8, 2080), "Conv2d_7b_1x1": (8, 8, 1536),
    "AuxLogits": (1001,), "PreLogitsFlatten": (1536,), "Logits": (1001,),
}


def test_reference_end_points(reference, images):
    model, outputs = reference
    found = model(images[:1], SPEC.end_points)
    assert list(found) == list(SPEC.end_points)
    assert {name: value.shape[1:] for name, value in found.items()} == END_POINT_SHAPES
    assert all(np.isfinite(value).all() for value in found.values())
    assert relative(found["Logits"], outputs["Logits"][:1]) < 1e-5


def test_reference_in_float64(reference64, calibrated, images):
    import keras

    # the float64 model is built, and Keras's defaults are float32 again
    assert (keras.config.dtype_policy().name, keras.config.floatx()) == ("float32", "float32")
    outputs = reference64(images[:SUBSET], ("Logits", "Mixed_5b"))
    assert outputs["Logits"].dtype == np.float64 and outputs["Mixed_5b"].dtype == np.float64
    error = relative(outputs["Logits"][:, 1:], calibrated[1][:SUBSET])
    print(f"float64 reference vs calibrated float32 Keras: {error:.2e} relative")
    assert error < 1e-5


def test_swapped_layers_fail_the_bound(reference, synthetic, calibrated, images):
    """Negative control: two same-shaped conv+BN layers of block35_1 exchanged."""
    model, _ = reference
    variables = dict(synthetic[1])
    first, second = SWAPPED
    for leaf in ("weights", "BatchNorm/beta", "BatchNorm/moving_mean",
                 "BatchNorm/moving_variance"):
        a, b = f"{first}/{leaf}", f"{second}/{leaf}"
        variables[a], variables[b] = variables[b], variables[a]
    try:
        irv2.tf_slim_to_keras(variables, model.model)
        logits = model(images[:SUBSET], ("Logits",))["Logits"]
    finally:
        irv2.tf_slim_to_keras(synthetic[1], model.model)
    error = relative(logits[:, 1:], calibrated[1][:SUBSET])
    print(f"swapped layers: {error:.2e} relative")
    assert np.isfinite(logits).all() and error > 1e-3


def test_loss_gradient(reference, reference64, images):
    model, outputs = reference
    labels = np.array([700])
    logits, gradient = model.loss_gradient(images[:1], labels, dropped=1)
    assert logits.shape == (1, 1000) and gradient.shape == (1, 299, 299, 3)
    assert relative(logits, outputs["Logits"][:1, 1:]) < 1e-5
    assert np.isfinite(gradient).all() and np.abs(gradient).max() > 0

    # One-sided differences along a random direction, in float64. The photo is dithered first:
    # its flat regions give exact ties in the max pools, where the loss has a kink (one-sided
    # derivatives 0.184 and 0.158 on the astronaut) and no gradient matches both sides. Kinks
    # (ReLUs, max pools) stay dense in a 55M-weight network, so one of the two sides may still
    # cross one: the gradient must match the forward or the backward difference.
    rng = np.random.default_rng(0)
    image = images[:1].astype(np.float64) + rng.uniform(-0.01, 0.01, images[:1].shape)
    direction = rng.normal(size=image.shape)
    direction /= np.linalg.norm(direction)
    step = 1e-7
    batch = np.concatenate([image, image + step * direction, image - step * direction])
    logits64, grad64 = reference64.loss_gradient(batch, np.repeat(labels, 3), dropped=1)
    loss = [np.log(np.exp(z - z.max()).sum()) + z.max() - z[labels[0]] for z in logits64]
    analytic = float((grad64[0] * direction[0]).sum())
    forward, backward = (loss[1] - loss[0]) / step, (loss[0] - loss[2]) / step
    print(f"directional derivative: analytic {analytic:.10g}, forward {forward:.10g}, "
          f"backward {backward:.10g}")
    assert min(abs(forward - analytic), abs(backward - analytic)) <= 1e-5 * abs(analytic)


# --- d. the aux head -------------------------------------------------------------------------

def _numpy_aux(pre_aux: np.ndarray, v: dict) -> np.ndarray:
    """TF-Slim's AuxLogits by hand: avg pool 5x5/3 VALID, 1x1 conv, 5x5 VALID conv, fc."""
    aux = {layer.scope.rsplit("/", 1)[1]: layer.variables() for layer in SPEC.layers
           if layer.is_aux}
    size = (pre_aux.shape[1] - 5) // 3 + 1
    x = np.stack([np.stack([pre_aux[:, 3 * i:3 * i + 5, 3 * j:3 * j + 5].mean((1, 2))
                            for j in range(size)], 1) for i in range(size)], 1)

    def bn_relu(y, names):
        y = (y - v[names["mean"]]) / np.sqrt(v[names["var"]] + 1e-3) + v[names["beta"]]
        return np.maximum(y, 0.0)

    names = aux["Conv2d_1b_1x1"]
    x = bn_relu(np.einsum("nhwc,co->nhwo", x, v[names["weight"]][0, 0]), names)
    names = aux["Conv2d_2a_5x5"]
    kh, kw = v[names["weight"]].shape[:2]
    out = x.shape[1] - kh + 1
    x = np.stack([np.stack([np.einsum("nhwc,hwco->no", x[:, i:i + kh, j:j + kw],
                                      v[names["weight"]]) for j in range(out)], 1)
                  for i in range(out)], 1)
    x = bn_relu(x, names).reshape(len(x), -1)
    names = aux["Logits"]
    return x @ v[names["weight"]] + v[names["bias"]]


@pytest.mark.parametrize("dtype, bound", [("float32", 1e-5), ("float64", 1e-12)])
def test_aux_logits_matches_numpy(dtype, bound):
    rng = np.random.default_rng(1)
    channels, mid, out, classes = 6, 4, 7, 3
    shapes = {"Conv2d_1b_1x1": (1, 1, channels, mid), "Conv2d_2a_5x5": (5, 5, mid, out)}
    variables = {}
    for layer in SPEC.layers:
        if not layer.is_aux:
            continue
        scope = layer.scope.rsplit("/", 1)[1]
        names = layer.variables()
        if scope == "Logits":
            variables[names["weight"]] = rng.normal(size=(out, classes))
            variables[names["bias"]] = rng.normal(size=classes)
            continue
        width = shapes[scope][-1]
        variables[names["weight"]] = rng.normal(size=shapes[scope]) / np.sqrt(
            np.prod(shapes[scope][:3]))
        variables[names["beta"]] = rng.normal(0, 0.2, width)
        variables[names["mean"]] = rng.normal(0, 0.5, width)
        variables[names["var"]] = rng.uniform(0.5, 2.0, width)
    pre_aux = np.abs(rng.normal(size=(2, 17, 17, channels)))
    expected = _numpy_aux(pre_aux, variables)
    ours = irv2.aux_logits(pre_aux.astype(dtype), variables, dtype)
    assert ours.shape == (2, classes) and ours.dtype == dtype
    assert relative(ours, expected) < bound


def test_aux_logits_tell_photos_apart(reference, synthetic):
    model, outputs = reference
    aux = outputs["AuxLogits"]
    assert aux.shape == (10, 1001) and np.isfinite(aux).all()
    print(f"AuxLogits: std {aux.std():.2f}, {len(set(aux.argmax(1)))} distinct top-1")
    assert len(set(aux.argmax(1))) >= 8
    assert min(np.abs(aux[i] - aux[j]).max() for i in range(10) for j in range(i)) > 0.1
    again = irv2.aux_logits(outputs["PreAuxLogits"], synthetic[1])
    assert relative(again, aux) < 1e-6


# --- e. moving averages ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory, synthetic):
    """The synthetic checkpoint plus an ExponentialMovingAverage shadow (other values) for each
    model variable, as TF-Slim's training scripts save them."""
    rng = np.random.default_rng(2)
    variables = dict(synthetic[1])
    for name, value in synthetic[1].items():
        if name != "global_step":
            noise = rng.normal(0.0, 0.1, value.shape)
            shadow = value * np.exp(noise) if name.endswith("moving_variance") else \
                value * (1 + noise) + 0.01 * noise
            variables[name + EMA_SUFFIX] = shadow.astype(np.float32)
    assert len(variables) == 909 + 908
    return irv2.write_tf_checkpoint(tmp_path_factory.mktemp("ema") / "model.ckpt", variables)


@pytest.mark.parametrize("ema", [False, True])
def test_ema_shadows(ema, ema_checkpoint, reference, images):
    model = irv2.KerasInceptionResNetV2.for_checkpoint(ema_checkpoint, ema=ema)
    try:
        logits = model(images[:SUBSET], ("Logits",))["Logits"]
    finally:
        model.close()
    error = relative(logits, reference[1]["Logits"][:SUBSET])
    print(f"ema={ema}: {error:.2e} relative to the checkpoint without shadows")
    assert error > 1e-2 if ema else error < 1e-6


# --- errors --------------------------------------------------------------------------------

def test_not_an_irv2_checkpoint(tmp_path):
    prefix = irv2.write_tf_checkpoint(tmp_path / "other.ckpt",
                                      {"InceptionV3/Logits/Conv2d_1c_1x1/biases":
                                       np.zeros(1001, np.float32)})
    with pytest.raises(PortError, match="not a TF-Slim Inception-ResNet-v2 checkpoint"):
        irv2.KerasInceptionResNetV2.for_checkpoint(prefix)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(PortError, match="TensorFlow cannot read it"):
        irv2.KerasInceptionResNetV2.for_checkpoint(junk)


# --- bonus: the PyTorch model, loaded by hand through the spec's kinds --------------------------

def test_pytorch_model_matches_the_reference(synthetic, reference, images):
    try:
        import torch

        from models.inception_resnet_v2.model import InceptionResNetV2
    except Exception as err:  # noqa: BLE001 (being written elsewhere)
        pytest.skip(f"no PyTorch Inception-ResNet-v2 model yet ({err})")
    variables = synthetic[1]
    state = {}
    for layer in SPEC.layers:
        values = {role: variables[name] for role, name in layer.variables().items()}
        state.update(layer.kind.tensors(layer.module, values, folded=False, drop=0))
    model = InceptionResNetV2(num_classes=1001, aux_logits=True).eval()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    with torch.no_grad():
        ours = model.forward_end_points(torch.from_numpy(images[:SUBSET]).permute(0, 3, 1, 2))
    for name in ("Logits", "AuxLogits"):
        ref = reference[1][name][:SUBSET]
        error = float(np.abs(ours[name].numpy() - ref).max() / max(1.0, np.abs(ref).max()))
        print(f"PyTorch {name} vs reference: {error:.2e}")
        assert error < 1e-4
