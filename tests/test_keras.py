"""Keras HDF5 weights of keras.applications.InceptionV3 -> the same PyTorch model, proven
against Keras's own predictions on photos, for Keras 3 ``.weights.h5`` and Keras 2 ``.h5``."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from models import model_for_state_dict
from models.spec import KerasAdapter, KerasMismatch, get_architecture
from porting.cli import main
from models.inception_v3.spec import LAYERS
from porting.verify.parity import compare
from porting.verify.torch_runner import torch_outputs
from models.calibration import whitened_classifier


# --- the assignment rule (models.spec.KerasAdapter): no Keras, no TensorFlow -------------------

def test_keras_counter_reads_the_names_keras_gives_by_class():
    assert KerasAdapter.counter("conv2d", "Conv2D") == 0
    assert KerasAdapter.counter("conv2d_12", "Conv2D") == KerasAdapter.counter("conv2d_12", "conv2d") == 12
    assert KerasAdapter.counter("batch_normalization_3", "BatchNormalization") == 3
    assert KerasAdapter.counter("max_pooling2d_1", "MaxPooling2D") == 1
    assert KerasAdapter.counter("activation_7", "Activation") == 7
    for name, cls in [("block35_1_conv", "Conv2D"), ("conv2d_bn", "Conv2D"), ("conv2d_", "Conv2D"),
                      ("batch_normalization_3", "Conv2D"), ("conv2d_3", "BatchNormalization")]:
        assert KerasAdapter.counter(name, cls) is None, name
    assert KerasAdapter.counted(["conv2d_10", "conv_7b", "conv2d_9", "conv2d"], "Conv2D") == \
        ["conv2d", "conv2d_9", "conv2d_10"]  # by counter, not by name


@pytest.mark.parametrize("arch", ["inception_v3", "inception_resnet_v2"])
def test_keras_assignment_is_creation_order_onto_the_counted_rows(arch):
    """Counted layers in any order (a file's is by graph depth) land by counter, from any start;
    the named ones land on their scopes; every conv row of the table is filled once."""
    spec = get_architecture(arch)
    adapter, rows = spec.keras, spec.keras.counted_rows(spec)
    start = 7  # a second model in the process counts on from the first
    convs = [f"conv2d_{start + i}" for i in range(len(rows))] + list(adapter.named)
    norms = [f"batch_normalization_{start + i}" for i in range(len(rows))] + \
        [f"{name}_bn" for name in adapter.named]
    random.Random(0).shuffle(convs)
    assigned = adapter.assign(spec, convs, norms)
    assert [(row, conv, norm) for row, conv, norm in assigned[:len(rows)]] == \
        [(row, f"conv2d_{start + i}", f"batch_normalization_{start + i}")
         for i, row in enumerate(rows)]
    named = {conv: (row, norm) for row, conv, norm in assigned[len(rows):]}
    assert set(named) == set(adapter.named)
    for name, scope in adapter.named.items():
        row, norm = named[name]
        assert row.scope == f"{spec.tf_root}/{scope}"
        assert norm == (f"{name}_bn" if row.kind.name == "conv_bn" else None)  # up convs: none
    conv_rows = [layer.scope for layer in spec.layers if not layer.is_aux
                 and layer.kind.name in ("conv_bn", "conv_bias")]
    assert sorted(row.scope for row, _, _ in assigned) == sorted(conv_rows)


def test_keras_assignment_refuses_counts_that_do_not_fit():
    spec = get_architecture("inception_v3")
    rows = len(spec.keras.counted_rows(spec))
    convs = [f"conv2d_{i}" for i in range(rows)]
    norms = [f"batch_normalization_{i}" for i in range(rows - 1)]
    with pytest.raises(KerasMismatch, match=f"^{rows} counted conv and {rows - 1} batch-norm layers; "
                                            f"keras.applications.InceptionV3 has {rows} and {rows}$"):
        spec.keras.assign(spec, convs, norms)


def test_keras_rule_is_written_once():
    """The reader and the oracle apply the adapter's rule; neither spells Keras's names itself."""
    import inspect

    from models.inception_resnet_v2 import oracle
    from porting.read import keras_h5

    for module in (keras_h5, oracle):
        source = inspect.getsource(module)
        assert "_COUNTED_NAME" not in source and "(?:_(\\d+))?" not in source, module.__name__
        assert ".assign(" in source, module.__name__


def _calibrated_keras3(images: np.ndarray, seed: int = 0):
    """InceptionV3 with random weights made input-sensitive: random BN betas, moving statistics
    set to the photos' batch statistics (a training pass with momentum 0), whitened classifier."""
    import keras

    rng = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
    model = keras.applications.InceptionV3(weights=None, classifier_activation=None)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
            layer.beta.assign(rng.normal(0.0, 0.2, layer.beta.shape).astype(np.float32))
    model(images, training=True)
    features = keras.Model(model.inputs, model.get_layer("avg_pool").output)(images)
    model.get_layer("predictions").set_weights(
        list(whitened_classifier(np.asarray(features), 1000, rng)))
    return model


@pytest.fixture(scope="module")
def keras_files(photos, tmp_path_factory):
    """{format: (weights file, Keras's logits on the photos)}; the Keras 2 file is written by
    tf_keras from a copy of the Keras 3 model's weights."""
    from models.tf_runtime import import_tensorflow

    import_tensorflow()  # quiet start-up logs
    import tf_keras

    images = photos[1]
    folder = tmp_path_factory.mktemp("keras")
    keras3 = _calibrated_keras3(images)
    keras2 = tf_keras.applications.InceptionV3(weights=None, classifier_activation=None)
    keras2.set_weights(keras3.get_weights())
    keras3.save_weights(folder / "inception_v3.weights.h5")
    keras2.save_weights(str(folder / "inception_v3.h5"))
    return {
        "keras3": (folder / "inception_v3.weights.h5", np.asarray(keras3(images, training=False))),
        "keras2": (folder / "inception_v3.h5", keras2(images, training=False).numpy()),
        "model": keras3,
    }


def test_keras_creation_order_matches_tf_slim_scopes(keras_files, synthetic_ckpt):
    """Why the reader sorts by name counter: model.layers interleaves branches, creation does not."""
    from porting.read.open import open_reader

    model = keras_files["model"]
    convs = [layer.name for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    created = KerasAdapter.counted(convs, "Conv2D")
    assert sorted(created) == sorted(convs) and convs != created
    tf_shapes = open_reader(synthetic_ckpt).variables()
    expected = [tf_shapes[layer.variables()["weight"]].shape for layer in LAYERS
                if layer.kind.name == "conv_bn" and not layer.is_aux]
    assert [tuple(model.get_layer(name).kernel.shape) for name in created] == expected


@pytest.mark.parametrize("fmt", ["keras3", "keras2"])
def test_keras_weights_port_with_parity(fmt, keras_files, photos, tmp_path):
    path, reference = keras_files[fmt]
    result = CliRunner().invoke(main, ["--src", str(path), "--dst", str(tmp_path / "keras.pth"),
                                       "--no-aux"])
    assert result.exit_code == 0, result.output
    assert "378 variables" in result.stdout and "skipped  nothing" in result.stdout
    (output,) = tmp_path.glob("keras-*.pth")
    model = model_for_state_dict(torch.load(output, weights_only=True))
    ours = torch_outputs(model, photos[1], batch_size=len(photos[1]))["Logits"]
    parity = compare(ours, reference)
    print(f"{fmt}: {parity}")
    assert parity.passed
    assert len(set(reference.argmax(1))) > 3  # the reference tells the photos apart


def test_keras_source_needs_no_aux_and_names_its_weights(keras_files, tmp_path):
    import json

    path, _ = keras_files["keras3"]
    result = CliRunner().invoke(main, ["--src", str(path), "--dst", str(tmp_path / "k.pth")])
    assert result.exit_code == 1 and "--no-aux" in result.stderr
    assert not list(tmp_path.iterdir())
    result = CliRunner().invoke(main, ["--src", str(path), "--dst", str(tmp_path / "k.pth"),
                                       "--no-aux", "--num-classes", "1001"])
    assert result.exit_code == 1 and "1000 classes" in result.stderr
    CliRunner().invoke(main, ["--src", str(path), "--dst", str(tmp_path / "k.pth"), "--no-aux"])
    manifest = json.loads(next(tmp_path.glob("k-*.json")).read_text())
    assert manifest["source"]["format"] == "Keras 3 HDF5"
    # the 6th conv Keras created (its counter goes on across the models of a process)
    convs = sorted((int(n.split("/")[0].removeprefix("conv2d").lstrip("_") or 0), n)
                   for n in manifest["variables"]["mapped"] if n.startswith("conv2d"))
    assert manifest["variables"]["mapped"][convs[5][1]] == "Mixed_5b.branch1x1 (weight)"


def test_keras3_file_without_layer_names_is_refused(keras_files, tmp_path):
    import h5py

    path = tmp_path / "old.weights.h5"
    shutil.copy(keras_files["keras3"][0], path)
    with h5py.File(path, "r+") as f:
        for group in f["layers"].values():
            if "vars" in group:
                group["vars"].attrs.pop("name", None)
    result = CliRunner().invoke(main, ["--src", str(path), "--dst", str(tmp_path / "k.pth"),
                                       "--no-aux"])
    assert result.exit_code == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"error: {path}: layers/") and "no layer name" in result.stderr


def test_keras_reader_imports_neither_tensorflow_nor_torch(keras_files, tmp_path):
    import subprocess
    import sys

    path, _ = keras_files["keras2"]
    code = ("import sys; from porting.convert import PortOptions, convert; "
            "from porting.read.open import open_reader; "
            f"convert(open_reader({str(path)!r}), PortOptions(aux=False)); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
