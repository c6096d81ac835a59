"""TF-Slim's own Inception v3, run in TF1 graph mode: the oracle for parity checks.

tf-slim 1.1.0 builds layers through ``tensorflow.python.layers``, which lazily imports
``tf_keras.legacy_tf_layers.*``; tf-keras 2.x keeps those modules under ``tf_keras.src``. We
register them under the old names before importing tf_slim (seen working with tensorflow-cpu
2.21.0 + tf-keras 2.21.0). Everything runs inside a private ``tf.Graph``, so eager mode stays on
for the rest of the process.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

import numpy as np

from porting.name_map import EMA_SUFFIX

_LEGACY_LAYERS = ("base", "convolutional", "core", "normalization", "pooling", "variable_scope_shim")


@contextlib.contextmanager
def _stderr_to_devnull():
    """Silence file descriptor 2: TF 2.21's C++ logs ignore TF_CPP_MIN_LOG_LEVEL at import."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_tensorflow():
    """TensorFlow, with its C++ start-up chatter (oneDNN, CUDA probing) silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" not in sys.modules:
        with _stderr_to_devnull():
            import tensorflow  # noqa: F401
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def import_tf_slim():
    """(tf, slim, inception_v3 module), with the tf_keras module aliases in place."""
    tf = import_tensorflow()

    legacy = importlib.import_module("tf_keras.src.legacy_tf_layers")
    sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
    for sub in _LEGACY_LAYERS:
        module = importlib.import_module(f"tf_keras.src.legacy_tf_layers.{sub}")
        sys.modules.setdefault(f"tf_keras.legacy_tf_layers.{sub}", module)
    import tf_slim as slim
    from tf_slim.nets import inception_v3

    return tf, slim, inception_v3


def build_inception_v3(images, num_classes: int, aux: bool, is_training: bool = False,
                       batch_norm_decay: float = 0.9997, reuse=None):
    """TF-Slim's inception_v3 under its own arg scope; returns (logits, end_points)."""
    tf, slim, inception_v3 = import_tf_slim()
    with slim.arg_scope(inception_v3.inception_v3_arg_scope(batch_norm_decay=batch_norm_decay)):
        return inception_v3.inception_v3(
            images, num_classes=num_classes, is_training=is_training,
            create_aux_logits=aux, dropout_keep_prob=1.0 if is_training else 0.8, reuse=reuse)


def session_config(threads: int = 2):
    tf, _, _ = import_tf_slim()
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                    inter_op_parallelism_threads=1)


def _ema_source(name: str, stored: set[str]) -> str:
    shadow = name + EMA_SUFFIX
    return shadow if shadow in stored else name


class TFSlimInceptionV3:
    """A TF-Slim Inception v3 inference graph restored from a checkpoint.

    ``ema=True`` restores each variable from its ExponentialMovingAverage shadow where the
    checkpoint has one (what TF-Slim's eval scripts do).
    """

    def __init__(self, checkpoint_prefix: str | Path, num_classes: int = 1001, aux: bool = True,
                 ema: bool = False, threads: int = 2):
        tf, _, _ = import_tf_slim()
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3], name="images")
            _, self.end_points = build_inception_v3(self.images, num_classes, aux)
            variables = tf.compat.v1.global_variables()
            if ema:
                stored = {name for name, _ in tf.train.list_variables(str(checkpoint_prefix))}
                var_list = {_ema_source(v.op.name, stored): v for v in variables}
            else:
                var_list = variables
            saver = tf.compat.v1.train.Saver(var_list=var_list)
            self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(threads))
            saver.restore(self.session, str(checkpoint_prefix))

    def __call__(self, images_nhwc: np.ndarray, end_points=("Logits", "AuxLogits")) -> dict:
        """End points for a batch of NHWC float32 images in [-1, 1]; 4-D ones as NHWC arrays."""
        fetch = {name: self.end_points[name] for name in end_points if name in self.end_points}
        return self.session.run(fetch, {self.images: images_nhwc})

    def close(self):
        self.session.close()
