"""Porting with the native reader gives the same bytes as with TensorFlow's, and needs neither
TensorFlow nor torch."""
from __future__ import annotations

import pytest

from blocked_imports import CLI, TENSORFLOW, run_blocked
from porting.convert import PortOptions
from porting.pipeline import port_checkpoint
from porting.read.sources import V1, resolve_source

NO_TF_NO_TORCH = (*TENSORFLOW, "torch")


@pytest.fixture(scope="session")
def tf_ported(synthetic_ckpt, tmp_path_factory):
    """The synthetic checkpoint ported with TensorFlow's reader: the reference bytes."""
    dst = tmp_path_factory.mktemp("tf_ported") / "x.pth"
    return port_checkpoint(synthetic_ckpt, dst, PortOptions(), reader="tf").written.path


@pytest.fixture(scope="session")
def v1_copy(synthetic_ckpt, tmp_path_factory):
    """The synthetic checkpoint's variables re-saved by TensorFlow as one V1 file."""
    from models.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    values = tf.train.load_checkpoint(str(synthetic_ckpt))
    prefix = tmp_path_factory.mktemp("v1_copy") / "inception_v3.ckpt"
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(values.get_tensor(name), name=name)
                     for name in sorted(values.get_variable_to_shape_map())]
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V1).save(
                sess, str(prefix), write_meta_graph=False, write_state=False)
    return prefix


def _port_without_tf_and_torch(*args):
    return run_blocked(NO_TF_NO_TORCH, CLI, "port", *args)


def test_native_port_is_byte_identical_and_needs_neither_tf_nor_torch(synthetic_ckpt, tf_ported,
                                                                       tmp_path):
    run = _port_without_tf_and_torch("--src", str(synthetic_ckpt), "--dst", str(tmp_path / "x.pth"))
    assert run.returncode == 0, run.stderr
    assert (tmp_path / tf_ported.name).read_bytes() == tf_ported.read_bytes()


def test_folding_needs_no_torch(synthetic_ckpt, tmp_path):
    run = _port_without_tf_and_torch("--src", str(synthetic_ckpt), "--dst",
                                     str(tmp_path / "a" / "x.pth"), "--fold-bn")
    assert run.returncode == 0, run.stderr
    reference = port_checkpoint(synthetic_ckpt, tmp_path / "b" / "x.pth",
                                PortOptions(fold_bn=True)).written.path  # torch is loaded here
    assert (tmp_path / "a" / reference.name).read_bytes() == reference.read_bytes()


def test_safetensors_and_model_card_need_no_torch_either(synthetic_ckpt, tmp_path):
    run = _port_without_tf_and_torch("--src", str(synthetic_ckpt), "--dst",
                                     str(tmp_path / "x.safetensors"), "--model-card")
    assert run.returncode == 0, run.stderr
    assert len(list(tmp_path.glob("x-*.safetensors"))) == len(list(tmp_path.glob("x-*.md"))) == 1


def test_the_blocker_really_blocks_torch():
    run = run_blocked(NO_TF_NO_TORCH, "import torch")
    assert run.returncode != 0 and "torch is blocked in this test" in run.stderr


def test_the_blocker_really_blocks_tensorflow(synthetic_ckpt, tmp_path):
    run = _port_without_tf_and_torch("--reader", "tf", "--src", str(synthetic_ckpt), "--dst",
                                     str(tmp_path / "x.pth"))
    assert run.returncode == 1 and "blocked in this test" in run.stderr
    [line] = run.stderr.strip().splitlines()  # one clear line: what is missing, how to get it
    assert line.startswith("error: this needs TensorFlow") and "tf-porting[tf]" in line


def test_v1_copy_ports_to_the_same_bytes(v1_copy, tf_ported, tmp_path):
    assert resolve_source(v1_copy).format == V1
    written = port_checkpoint(v1_copy, tmp_path / "x.pth", PortOptions(), reader="native").written
    assert written.path.name == tf_ported.name
    assert written.path.read_bytes() == tf_ported.read_bytes()


def test_native_and_tf_agree_under_every_option(synthetic_ckpt, tmp_path):
    for options in (PortOptions(num_classes=1001, fold_bn=True), PortOptions(aux=False)):
        native, tf = (port_checkpoint(synthetic_ckpt, tmp_path / reader / "x.pth", options,
                                      reader=reader).written for reader in ("native", "tf"))
        assert native.sha256 == tf.sha256, options
