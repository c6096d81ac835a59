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
import warnings
from pathlib import Path

import numpy as np

from porting.errors import PortError, first_line
from porting.name_map import AUX_SCOPE, CLASSIFIER, EMA_SUFFIX, TF_ROOT

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
        try:
            with _stderr_to_devnull():
                import tensorflow  # noqa: F401
        except ImportError as err:
            raise PortError(f"this needs TensorFlow ({err}); install the reference stack: "
                            "pip install 'tf-porting[tf]'") from err
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def import_tf_slim():
    """(tf, slim, inception_v3 module), with the tf_keras module aliases in place."""
    tf = import_tensorflow()

    # tf-keras's legacy layers warn on every use of the API tf_slim is built on.
    warnings.filterwarnings("ignore", message="`layer.apply` is deprecated")
    try:
        legacy = importlib.import_module("tf_keras.src.legacy_tf_layers")
        sys.modules.setdefault("tf_keras.legacy_tf_layers", legacy)
        for sub in _LEGACY_LAYERS:
            module = importlib.import_module(f"tf_keras.src.legacy_tf_layers.{sub}")
            sys.modules.setdefault(f"tf_keras.legacy_tf_layers.{sub}", module)
        import tf_slim as slim
        from tf_slim.nets import inception_v3
    except ImportError as err:
        raise PortError(f"this needs tf-keras and TF-Slim ({err}); install the reference "
                        "stack: pip install 'tf-porting[tf]'") from err

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


def checkpoint_layout(checkpoint_prefix: str | Path) -> tuple[int, bool]:
    """(number of classes, has AuxLogits) of a TF-Slim Inception v3 checkpoint, from its index."""
    tf = import_tensorflow()
    try:
        shapes = dict(tf.train.list_variables(str(checkpoint_prefix)))
    except tf.errors.OpError as err:
        raise PortError(f"{checkpoint_prefix}: TensorFlow cannot read it: {first_line(err)}") from err
    logits_bias = CLASSIFIER.variables()["bias"]
    if logits_bias not in shapes:
        raise PortError(f"{checkpoint_prefix}: not a TF-Slim Inception v3 checkpoint (no {logits_bias})")
    classes = shapes[logits_bias][0]
    return classes, any(name.startswith(f"{TF_ROOT}/{AUX_SCOPE}/") for name in shapes)


class TFSlimInceptionV3:
    """A TF-Slim Inception v3 inference graph restored from a checkpoint.

    ``ema=True`` restores each variable from its ExponentialMovingAverage shadow where the
    checkpoint has one (what TF-Slim's eval scripts do). ``dtype="float64"`` builds the same
    graph in double precision: TF-Slim creates its variables in the input's dtype (and takes
    its non-fused batch norm, as the fused kernel has no float64), and every value is the
    checkpoint's, cast.
    """

    def __init__(self, checkpoint_prefix: str | Path, num_classes: int = 1001, aux: bool = True,
                 ema: bool = False, threads: int = 2, dtype: str = "float32"):
        tf, _, _ = import_tf_slim()
        self.graph = tf.Graph()
        self._loss_gradients = {}
        with self.graph.as_default():
            self.images = tf.compat.v1.placeholder(dtype, [None, 299, 299, 3], name="images")
            _, self.end_points = build_inception_v3(self.images, num_classes, aux)
            self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(threads))
            try:
                self._restore(tf, str(checkpoint_prefix), ema)
            except tf.errors.OpError as err:
                self.session.close()
                raise PortError(f"{checkpoint_prefix}: TensorFlow cannot restore it: "
                                f"{first_line(err)}") from err

    def _restore(self, tf, prefix: str, ema: bool):
        """Initialise every variable with its checkpoint value cast to the variable's dtype, in
        one run (a Saver refuses to restore float32 values into float64 variables)."""
        reader = tf.train.load_checkpoint(prefix)
        stored = set(reader.get_variable_to_shape_map())
        variables = tf.compat.v1.global_variables()
        feed = {}
        for var in variables:
            name = _ema_source(var.op.name, stored) if ema else var.op.name
            feed[var.initial_value] = reader.get_tensor(name).astype(var.dtype.as_numpy_dtype)
        self.session.run([var.initializer for var in variables], feed)

    @classmethod
    def for_checkpoint(cls, checkpoint_prefix: str | Path, **kwargs) -> "TFSlimInceptionV3":
        """The graph the checkpoint holds: its number of classes, with AuxLogits if it has them."""
        classes, aux = checkpoint_layout(checkpoint_prefix)
        return cls(checkpoint_prefix, num_classes=classes, aux=aux, **kwargs)

    def __call__(self, images_nhwc: np.ndarray, end_points=("Logits", "AuxLogits")) -> dict:
        """End points for a batch of NHWC images in [-1, 1]; 4-D ones as NHWC arrays."""
        fetch = {name: self.end_points[name] for name in end_points if name in self.end_points}
        return self.session.run(fetch, {self.images: images_nhwc})

    def loss_gradient(self, images_nhwc: np.ndarray, labels: np.ndarray,
                      first_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(Logits[:, first_class:], d loss / d images) for the summed softmax cross-entropy of
        ``labels`` (indices into the kept classes); ``first_class=1`` drops the background."""
        if first_class not in self._loss_gradients:
            tf, _, _ = import_tf_slim()
            with self.graph.as_default():
                labels_in = tf.compat.v1.placeholder(tf.int64, [None])
                logits = self.end_points["Logits"][:, first_class:]
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=labels_in, logits=logits))
                gradient = tf.compat.v1.gradients(loss, self.images)[0]
            self._loss_gradients[first_class] = labels_in, logits, gradient
        labels_in, logits, gradient = self._loss_gradients[first_class]
        return self.session.run((logits, gradient), {self.images: images_nhwc, labels_in: labels})

    def close(self):
        self.session.close()
