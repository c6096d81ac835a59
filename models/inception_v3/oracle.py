"""Inception v3's TF reference: TF-Slim's own ``inception_v3``, run in TF1 graph mode.

``TFSlimInceptionV3`` is the oracle ``verify`` and the parity tests compare ports with;
``build_synthetic_checkpoint`` writes a SYNTHETIC checkpoint with the release's variable names,
saved by TensorFlow itself. Everything runs inside a private ``tf.Graph``, so eager mode stays
on for the rest of the process. TensorFlow is imported on first use, not with this module.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from models.calibration import whitened_classifier
from models.inception_v3.spec import SPEC
from models.spec import AUX_SCOPE, EMA_SUFFIX
from porting.errors import PortError, first_line
from porting.tf_runtime import import_tensorflow, import_tf_slim, session_config


def _tf_slim_inception_v3():
    """(tf, slim, tf_slim.nets.inception_v3)."""
    tf, slim = import_tf_slim()
    try:
        from tf_slim.nets import inception_v3
    except ImportError as err:
        raise PortError(f"this needs TF-Slim ({err}); install the reference stack: "
                        "pip install 'tf-porting[tf]'") from err
    return tf, slim, inception_v3


def build_inception_v3(images, num_classes: int, aux: bool, is_training: bool = False,
                       batch_norm_decay: float = 0.9997, reuse=None):
    """TF-Slim's inception_v3 under its own arg scope; returns (logits, end_points)."""
    tf, slim, inception_v3 = _tf_slim_inception_v3()
    with slim.arg_scope(inception_v3.inception_v3_arg_scope(batch_norm_decay=batch_norm_decay)):
        return inception_v3.inception_v3(
            images, num_classes=num_classes, is_training=is_training,
            create_aux_logits=aux, dropout_keep_prob=1.0 if is_training else 0.8, reuse=reuse)


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
    logits_bias = SPEC.classifier.variables()["bias"]
    if logits_bias not in shapes:
        raise PortError(f"{checkpoint_prefix}: not a TF-Slim Inception v3 checkpoint (no {logits_bias})")
    classes = shapes[logits_bias][0]
    return classes, any(name.startswith(f"{SPEC.tf_root}/{AUX_SCOPE}/") for name in shapes)


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
        tf, _, _ = _tf_slim_inception_v3()
        self.num_classes, self.aux = num_classes, aux
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
            tf, _, _ = _tf_slim_inception_v3()
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


Reference = TFSlimInceptionV3


def _classifier_input(end_points, scope: str):
    """The tensor that feeds ``scope``'s 1x1 classifier conv in the inference graph."""
    conv = end_points[scope].op.inputs[0].op  # Squeeze <- BiasAdd
    return conv.inputs[0].op.inputs[0]        # BiasAdd <- Conv2D <- input


def build_synthetic_checkpoint(prefix: str | Path, calibration_images: np.ndarray, *,
                               num_classes: int = 1001, aux: bool = True, seed: int = 0,
                               v1_format: bool = False) -> Path:
    """Write a calibrated random TF-Slim Inception v3 checkpoint at ``prefix``; return it.

    ``v1_format`` writes the older single-file V1 table (as the 2016 inception_v3 release).
    """
    tf, _, _ = _tf_slim_inception_v3()
    rng = np.random.default_rng(seed)
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        images = tf.compat.v1.placeholder(tf.float32, [None, 299, 299, 3])
        build_inception_v3(images, num_classes, aux, is_training=True, batch_norm_decay=0.0)
        _, end_points = build_inception_v3(images, num_classes, aux, reuse=True)
        global_step = tf.compat.v1.train.get_or_create_global_step()
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        by_name = {v.op.name: v for v in tf.compat.v1.global_variables() if v is not global_step}
        with tf.compat.v1.Session(graph=graph, config=session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for name, var in by_name.items():
                if name.endswith("BatchNorm/beta"):
                    var.load(rng.normal(0.0, 0.2, var.shape).astype(np.float32), sess)
            sess.run(update_ops, {images: calibration_images})

            heads = [("Logits", "InceptionV3/Logits/Conv2d_1c_1x1")]
            if aux:
                heads.append(("AuxLogits", "InceptionV3/AuxLogits/Conv2d_2b_1x1"))
            inputs = sess.run([_classifier_input(end_points, ep) for ep, _ in heads],
                              {images: calibration_images})
            for (_, scope), features in zip(heads, inputs):
                weights, biases = whitened_classifier(features, num_classes, rng)
                by_name[f"{scope}/weights"].load(weights[None, None], sess)
                by_name[f"{scope}/biases"].load(biases, sess)
            global_step.load(123456, sess)

            version = tf.compat.v1.train.SaverDef.V1 if v1_format else tf.compat.v1.train.SaverDef.V2
            saver = tf.compat.v1.train.Saver(write_version=version)
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)
    return prefix
