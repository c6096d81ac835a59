"""Session-wide TensorFlow fixtures: each checkpoint is written by TensorFlow once per run."""
from __future__ import annotations

import os

import numpy as np
import pytest

from models.spec import get_architecture  # none of these three imports torch
from porting.convert import PortOptions
from porting.verify.photos import load_photos

# The suite runs in two pytest-xdist workers on two cores (pyproject's addopts): PyTorch's OpenMP
# threads must sleep, not spin, while the other worker holds a core (libgomp reads this when torch
# loads, after this line; the subprocesses the tests start inherit it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Every output variant of the core port; parity and verify tests run on each.
VARIANTS = {
    "1001": PortOptions(num_classes=1001),
    "1000": PortOptions(num_classes=1000),
    "no-aux": PortOptions(num_classes=1000, aux=False),
    "fold-bn": PortOptions(num_classes=1001, fold_bn=True),
}


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist runs in one worker")


def _group(item) -> str:
    """The xdist group of a test: the tests sharing an expensive fixture run in one worker, so it
    is built once (Inception-ResNet-v2's calibrated Keras checkpoint; each ResNet's and VGG's
    TF-Slim side); the rest by module, so each module's fixtures are built once."""
    names = getattr(item, "fixturenames", ())
    if "irv2_checkpoint" in names:
        return "inception_resnet_v2"
    if "case" in names and item.module.__name__ == "test_resnet":
        return item.callspec.params["case"]
    if "vgg" in names and item.module.__name__ == "test_vgg":
        return item.callspec.params["vgg"]
    return item.module.__name__


# Groups that take 30-400 s each (measured), started first so that the two workers end
# together: Inception-ResNet-v2's, each ResNet's (deepest first), Inception v4's, VGG-16's
# (~45 s of CPU), building and installing the wheel, VGG-19's (~30 s). The rest follow in
# collection order (pyproject's addopts: --no-loadscope-reorder).
FIRST = ("inception_resnet_v2", "resnet_v1_152", "resnet_v2_152", "resnet_v2_50", "resnet_v1_50",
         "test_inception_v4", "resnet_v1_101", "resnet_v2_101", "vgg_16", "test_wheel", "vgg_19")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(session, config, items):
    groups = {item: _group(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(groups[item]))
    rank = {group: i for i, group in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(groups[item], len(FIRST)))  # stable: the rest in order


@pytest.hookimpl(optionalhook=True)  # an xdist hook: the controller, once per worker
def pytest_xdist_node_collection_finished(node, ids):
    """xdist marks a grouped test by appending '@<group>' to its id; where that no longer takes
    (pytest 9.2, pytest-xdist#1386) every worker builds every fixture: say so."""
    if node.config.getoption("dist") == "loadgroup" and ids and "@" not in ids[0]:
        node.config.pluginmanager.get_plugin("terminalreporter").write_line(
            f"WARNING: {node.gateway.id}: xdist groups were not applied (pytest-xdist#1386); "
            "the suite will build its fixtures in every worker: install constraints.txt's pytest",
            yellow=True)


BATCH_1_IMAGES = 3  # batch-1 parity runs image by image on the first few photos (time)


@pytest.fixture(scope="session")
def batches(photos):
    """{batch size: the photos parity runs at that batch size}: batch 10 on all ten, batch 1
    on the first BATCH_1_IMAGES, each on its own."""
    return {1: photos[1][:BATCH_1_IMAGES], len(photos[1]): photos[1]}


@pytest.fixture(scope="session")
def photos():
    """(names, NHWC float32 batch in [-1, 1]) of 10 real photos shipped with scikit-image,
    preprocessed for Inception v3 (as for Inception-ResNet-v2: the same eval config)."""
    return load_photos(config=get_architecture("inception_v3").eval)


@pytest.fixture(scope="session")
def synthetic_ckpt(tmp_path_factory, photos):
    """Prefix of a TF-Slim Inception v3 V2 checkpoint (1001 classes, aux, global_step)."""
    from models.inception_v3.oracle import build_synthetic_checkpoint

    prefix = tmp_path_factory.mktemp("synthetic") / "adv_inception_v3.ckpt"
    return build_synthetic_checkpoint(prefix, photos[1])


@pytest.fixture(scope="session")
def synthetic_v1_ckpt(tmp_path_factory, synthetic_ckpt):
    """``synthetic_ckpt``'s variables as one V1 file (the 2016 inception_v3 release's format),
    written by TensorFlow's V1 Save op; same values, so TF-Slim's outputs on it are ``tf_outputs``."""
    from ckpt_tools import read_all, write_v1_checkpoint

    return write_v1_checkpoint(tmp_path_factory.mktemp("synthetic_v1") / "inception_v3.ckpt",
                               read_all(synthetic_ckpt))


@pytest.fixture(scope="session")
def tf_model(synthetic_ckpt):
    from models.inception_v3.oracle import TFSlimInceptionV3

    model = TFSlimInceptionV3(synthetic_ckpt, num_classes=1001, aux=True)
    yield model
    model.close()


@pytest.fixture(scope="session")
def tf_outputs(tf_model, photos):
    """TF-Slim's Logits and AuxLogits: {batch_size: {end_point: array}} on ``batches``."""
    images = photos[1]
    batch1 = [tf_model(images[i:i + 1]) for i in range(BATCH_1_IMAGES)]
    return {
        1: {k: np.concatenate([b[k] for b in batch1]) for k in batch1[0]},
        len(images): tf_model(images),
    }


@pytest.fixture(scope="session")
def ported_files(synthetic_ckpt, tmp_path_factory):
    """The synthetic checkpoint ported to each output variant: {variant: .pth path}."""
    from porting.pipeline import port_checkpoint

    out = tmp_path_factory.mktemp("ported_files")
    return {name: port_checkpoint(synthetic_ckpt, out / name / "adv_inception_v3.pth",
                                  options).written.path
            for name, options in VARIANTS.items()}


@pytest.fixture(scope="session")
def tf():
    from models.tf_runtime import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tf):
    """Every dtype and layout flavour, written by TensorFlow (tests/dtype_checkpoints.py)."""
    from dtype_checkpoints import write_checkpoints

    return write_checkpoints(tf, tmp_path_factory.mktemp("native"))


@pytest.fixture(scope="session")
def tensors(synthetic_ckpt):
    """Every variable of the synthetic checkpoint, as TensorFlow reads it."""
    from ckpt_tools import read_all

    return read_all(synthetic_ckpt)


@pytest.fixture(scope="session")
def variant(tensors, tmp_path_factory):
    """variant(name, edit) -> prefix of a copy of the synthetic checkpoint changed by ``edit``."""
    from ckpt_tools import write_checkpoint

    root = tmp_path_factory.mktemp("variants")
    made = {}

    def make(name, edit):
        if name not in made:
            made[name] = write_checkpoint(root / name / "model.ckpt", edit(dict(tensors)))
        return made[name]

    return make


# --- Inception-ResNet-v2: a TF-Slim-named checkpoint built from a calibrated Keras model -------

@pytest.fixture(scope="session")
def irv2_checkpoint(tmp_path_factory, photos):
    """(prefix, Keras model, calibration report): a SYNTHETIC V2 checkpoint with the release's
    908 variables + global_step, written by TensorFlow from a calibrated
    ``keras.applications.InceptionResNetV2`` (plus a calibrated aux head, which Keras lacks)."""
    from models.inception_resnet_v2.oracle import build_synthetic_checkpoint

    report = {}
    prefix = tmp_path_factory.mktemp("irv2") / "adv_inception_resnet_v2.ckpt"
    prefix, model = build_synthetic_checkpoint(prefix, photos[1], return_keras=True,
                                               report=report)
    return prefix, model, report


@pytest.fixture(scope="session")
def irv2(irv2_checkpoint):
    """(prefix, Keras model): the checkpoint, and the Keras model it was written from, the
    independent oracle for every IRv2 parity test."""
    return irv2_checkpoint[:2]


@pytest.fixture(scope="session")
def irv2_reference(irv2, photos):
    """The references for each batch size: {batch: {"keras": Keras's own 1000 logits,
    "Logits"/"AuxLogits": the 1001-class outputs of Keras + TF's aux head on the checkpoint}}."""
    from models.inception_resnet_v2.oracle import Reference

    prefix, keras_model = irv2
    images = photos[1]
    reference = Reference.for_checkpoint(prefix)
    try:
        out = {}
        for batch in (1, len(images)):
            count = BATCH_1_IMAGES if batch == 1 else len(images)
            chunks = [(np.asarray(keras_model(images[i:i + batch], training=False)),
                       reference(images[i:i + batch]))
                      for i in range(0, count, batch)]
            out[batch] = {"keras": np.concatenate([k for k, _ in chunks]),
                          **{name: np.concatenate([r[name] for _, r in chunks])
                             for name in ("Logits", "AuxLogits")}}
        return out
    finally:
        reference.close()


IRV2_VARIANTS = {
    "1001": PortOptions(num_classes=1001),
    "1000": PortOptions(num_classes=1000),
    "no-aux": PortOptions(num_classes=1000, aux=False),
    "fold-bn": PortOptions(num_classes=1001, fold_bn=True),
}


@pytest.fixture(scope="session")
def irv2_ported_files(irv2, tmp_path_factory):
    """The IRv2 checkpoint ported to each output variant: {variant: .pth path}."""
    from porting.pipeline import port_checkpoint

    out = tmp_path_factory.mktemp("irv2_ported")
    return {name: port_checkpoint(irv2[0], out / name / "adv_inception_resnet_v2.pth",
                                  options).written.path
            for name, options in IRV2_VARIANTS.items()}
